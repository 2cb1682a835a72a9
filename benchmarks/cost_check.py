"""The cost plan's predictions beside measured runs, as ratios (goal: every ratio within 0.75-1.33).

    python benchmarks/cost_check.py [--smoke-wall-s S]

Measured here, as CPU time with one torch thread (each of the demo's trials has one core; the machine
is shared, so wall time would count other jobs): one full-SFT
step of the toy world's model on the demo's batches (32 sequences padded to their batch's longest,
the mean over the training data's batches), and one evaluation point (the demo's 19 eval sets, and
the smoke config's 4). Taken from the measured demo (issue 18, README): 14-18 s per trial outside its
training and evaluation (worker start, checkpoint, report, teardown; 16 s used) and 58 s per search
outside its runs (Ray start, preflight, the base model's evaluation, importance). Everything else is
the cost model's (`core/cost.py`, `core/budget.py`).

Checks:
  - the step ratios of benchmarks/node_step_time.py (CPU) and docs/gpu.md (one H100): the paper's node
    from a throughput calibrated on full SFT's step, and full SFT from the default 40% of the H100's peak;
  - the demo's wall time (configs/toy.yaml, 2 slots): from the tree it trained (13 runs, 6 stopped at
    step 150), and the bounds the plan gives before any run;
  - configs/smoke.yaml's wall time, the same way (`--smoke-wall-s`: a measured wall time to compare with).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import torch

from cofitune_ray.config import load_config
from cofitune_ray.core.budget import Run, SearchCost, SearchShape
from cofitune_ray.core.cost import Device, RunTime, Shape, calibrate, gpu, step_work
from cofitune_ray.core.node import FULL_SFT_PART, PAPER_NODE, ModelPart
from cofitune_ray.core.space import load_search_space
from cofitune_ray.plan.cost import CPU_BANDWIDTH, build_plan, read_shape, step_seconds, training_examples
from cofitune_ray.training.data import read_jsonl, tokenize_for_training
from cofitune_ray.training.evaluate import Evaluator
from cofitune_ray.training.model import load_model, load_tokenizer
from cofitune_ray.training.step_time import measure_full_step

REPO = Path(__file__).resolve().parents[1]
TRIAL_OVERHEAD_S = 16.0  # issue 18: a trial's time less its train_time_s (which includes its evaluation), 14-18 s
SEARCH_SETUP_S = 58.0  # issue 18: 562 s wall, 504 s from the first run's start to the last run's end
DEMO_WALLS = {"issue 18 (landed main, fresh clone)": 562.0, "README (fresh clone)": 558.0,
              "README (a working copy)": 648.0}


def ratio_line(what: str, predicted: float, measured: float, unit: str = "s") -> str:
    r = predicted / measured
    verdict = "within 0.75-1.33" if 0.75 <= r <= 1.33 else "MISS"
    return f"{what:<58} {predicted:>9.4g} {measured:>9.4g} {unit:<3} {r:>6.2f}  {verdict}"


def bounds_line(what: str, low: float, high: float, measured: float) -> str:
    inside = "inside" if low <= measured <= high else "OUTSIDE"
    return f"{what} wall, bounds before the run: {low:.0f}..{high:.0f} s; {measured:.0f} s is {inside}"


def step_checks() -> list[str]:
    lines = []
    cpu = Shape(8, 256, 688, 8, 8, 32, 2048)  # node_step_time.py's CPU model, batch 8 x 128
    h100 = Shape(12, 768, 2048, 12, 12, 64, 32000)  # gpu_check.py's 125M model, batch 8 x 512, bf16
    for name, shape, seq, bandwidth, full_ms, node_ms in (
            ("CPU 7.4M (2 threads, docs/benchmarks.md)", cpu, 128, CPU_BANDWIDTH, 491.0, 269.9),
            ("H100 134M bf16 (docs/gpu.md)", h100, 512, 3.35e12, 51.0, 36.6)):
        full = step_work(shape, FULL_SFT_PART, seq)
        device = calibrate("measured", full, 8 * seq, full_ms / 1e3, bandwidth)
        node = device.step_seconds(step_work(shape, PAPER_NODE, seq), 8 * seq) * 1e3
        lines.append(ratio_line(f"{name}: node step, calibrated on full SFT", node, node_ms, "ms"))
    default = gpu("h100", 0.4).step_seconds(step_work(h100, FULL_SFT_PART, 512), 8 * 512) * 1e3
    lines.append(ratio_line("H100 134M: full SFT step at 40% of the bf16 peak (default)", default, 51.0, "ms"))
    return lines


def mean_padded_length(config, tokenizer, batches: int = 200) -> float:
    """The mean padded width of the training batches (each batch is padded to its longest sequence)."""
    rows = tokenize_for_training(read_jsonl(config.data.speciality_train), tokenizer, config.data.prompt_template,
                                 config.data.max_seq_length, config.data.loss_on).dataset
    rng = random.Random(0)
    lengths = [len(r["input_ids"]) for r in rows]
    return statistics.mean(max(rng.sample(lengths, config.train.batch_size)) for _ in range(batches))


def measured_inputs(config_path: Path) -> tuple:
    config = load_config(config_path)
    tokenizer = load_tokenizer(config.model.tokenizer or config.model.path)
    seq = round(mean_padded_length(config, tokenizer))
    step_s, _ = measure_full_step(config.model.path, 1000, config.train.batch_size, seq, "cpu", config.model.dtype,
                                  steps=10)
    model = load_model(config.model.path).eval()
    evaluator = Evaluator.from_config(config, tokenizer)
    start = time.process_time()  # CPU time: the machine is shared, wall time would count other jobs
    evaluator.evaluate(model)
    eval_s = time.process_time() - start
    return config, seq, step_s, eval_s


def plan_for(config_path: Path, seq: int, step_s: float, eval_s: float):
    config = load_config(config_path)
    shape = read_shape(config.model.path)
    full = step_work(shape, FULL_SFT_PART, seq)
    device = calibrate("cpu", full, config.train.batch_size * seq, step_s, CPU_BANDWIDTH)
    overheads = RunTime(TRIAL_OVERHEAD_S, eval_s, 0.0)
    space = load_search_space(config.search.space)
    plan = build_plan(config, space, shape, device, "calibrated", overheads, 2, training_examples(
        config.data.speciality_train), seq, SEARCH_SETUP_S)
    return config, plan, device, overheads


def realised(config, plan, device: Device, overheads: RunTime, levels: list[list[tuple[ModelPart, list[int]]]]):
    """The wall time of a search whose runs are known: per level, each node with the steps of each of its runs."""
    points = plan.schedule.points
    runs = tuple(tuple(Run(part, steps, sum(1 for p in points if p <= steps) if part.trains else 1)
                       for part, run_steps in level for steps in run_steps) for level in levels)

    def seconds(run: Run) -> float:
        step = step_seconds(device, plan.works[run.part.key()], config, plan.seq_len) if run.part.trains else 0.0
        return overheads.seconds(run.steps, run.points, step)

    shape = SearchShape("realised", tuple(tuple(p for p, _ in level) for level in levels))
    return SearchCost(shape, runs, tuple(tuple(seconds(r) for r in level) for level in runs), plan.slots,
                      plan.per_trial)


def node(lo, hi, modules=None, softmask=False) -> ModelPart:
    return ModelPart(layer_range=(lo, hi), softmask=softmask, **({"modules": modules} if modules else {}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke-wall-s", type=float, help="a measured wall time of configs/smoke.yaml")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{'prediction':<58} {'predicted':>9} {'measured':>9} {'':<3} {'ratio':>6}")
    for line in step_checks():
        print(line)

    base = ModelPart(kind="base")
    demo_config, seq, step_s, eval_s = measured_inputs(REPO / "configs/toy.yaml")
    print(f"\ndemo (configs/toy.yaml): batches padded to {seq} tokens on average; measured here: full-SFT step "
          f"{step_s:.3f} s, one evaluation point {eval_s:.1f} s (1 thread)")
    config, plan, device, overheads = plan_for(REPO / "configs/toy.yaml", seq, step_s, eval_s)
    # The tree the demo trained (README): level 1 the three 50% ranges, level 2 the quarters of (0%, 50%];
    # each node's losing rate stopped at step 150, one kept run pruned there (900 of 3,600 steps saved).
    demo = realised(config, plan, device, overheads, [
        [(base, [0]), (FULL_SFT_PART, [300, 300])],
        [(node(0, 0.5), [300, 150]), (node(0.25, 0.75), [300, 150]), (node(0.5, 1), [300, 150])],
        [(node(0, 0.25), [300, 150]), (node(0.25, 0.5), [150, 150])],
    ])
    assert demo.trials == 13 and demo.steps == 2700
    wall = plan.wall_s(demo)
    for where, measured in DEMO_WALLS.items():
        print(ratio_line(f"demo wall, its tree known: {where}", wall, measured))
    (_, low, high) = plan.searches[0]
    print(bounds_line("demo", plan.wall_s(low), plan.wall_s(high), 562.0))

    smoke_config, smoke_seq, smoke_step, smoke_eval = measured_inputs(REPO / "configs/smoke.yaml")
    print(f"\nsmoke (configs/smoke.yaml): batches padded to {smoke_seq} tokens; full-SFT step {smoke_step:.3f} s, "
          f"one evaluation point {smoke_eval:.1f} s")
    config, plan, device, overheads = plan_for(REPO / "configs/smoke.yaml", smoke_seq, smoke_step, smoke_eval)
    (_, low, high) = plan.searches[0]
    snr = ModelPart(kind="snr", top_percent=50)
    ud = ("up_proj", "down_proj")
    # The tree it trained here (runs/smoke/tree.json): 13 runs, 210 steps; a rate stopped at the rung where
    # its sibling had reached the rung first, the others trained on.
    smoke = realised(config, plan, device, overheads, [
        [(base, [0]), (FULL_SFT_PART, [20, 20]), (snr, [20, 10])],
        [(node(0, 0.5, ud), [20, 10]), (node(0.5, 1, ud), [20, 20])],
        [(node(0, 0.5, ud, True), [20, 20]), (node(0.5, 1, ud, True), [20, 10])],
    ])
    assert smoke.trials == 13 and smoke.steps == 210
    print(f"smoke: its tree as run here: {smoke.trials} runs, {smoke.steps} steps")
    if args.smoke_wall_s:
        print(ratio_line("smoke wall, its tree known", plan.wall_s(smoke), args.smoke_wall_s))
        print(bounds_line("smoke", plan.wall_s(low), plan.wall_s(high), args.smoke_wall_s))
    print(bounds_line("smoke (its tree known, as predicted)", plan.wall_s(low), plan.wall_s(high), plan.wall_s(smoke)))


if __name__ == "__main__":
    main()
