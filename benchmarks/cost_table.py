"""What the paper's search costs for LLaMA-2 7B, 13B and 70B on 8, 32 and 64 H100s: tree vs grid vs a full-SFT sweep.

    python benchmarks/cost_table.py [--examples 20000] [--utilisation 0.4]

The paper's setting (its training settings): 3 epochs, global batch 256 sequences of 512 tokens,
bfloat16, an evaluation point at each epoch's end; the paper's tree (`search_spaces/cofitune.yaml`)
and its exhaustive grid (every node it can reach, 27); the product's default learning-rate tuning
(three rates over a decade around 4e-5, the best kept at the first point) and stop rules, the same
three rates for the full-SFT sweep. Each trial's GPUs: the fewest (1, 2, 4, ... 64) on which the
memory plan fits every node of the search under DDP, else FSDP, else FSDP with activation
checkpointing, at a micro-batch of 4 x 512 per GPU (gradient accumulation makes up the 256). Trials
run as many at once as the cluster holds. The other assumptions are printed with the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

from transformers import LlamaConfig

from cofitune_ray.core.budget import RunSchedule, SearchCost, grid_shape, sweep_shape, tree_shapes
from cofitune_ray.core.cost import RunTime, Shape, gpu, step_work
from cofitune_ray.core.settings import LearningRates, SelectionPolicy, StopRules
from cofitune_ray.core.space import load_search_space
from cofitune_ray.plan.memory import MemoryPlan, ModelShape, Workload

REPO = Path(__file__).resolve().parents[1]
MODELS = ("LLaMA-2 7B", "LLaMA-2 13B", "LLaMA-2 70B")
CLUSTERS = (8, 32, 64)
GLOBAL_BATCH, SEQ, MICRO_BATCH, EPOCHS = 256, 512, 4, 3
RATES = LearningRates(LearningRates.around(4e-5), keep=1)
RULES = StopRules()  # the product's defaults: vers_margin 0.1, prune_after 0.5 (spec_floor), min_evals 1
WORKER_START_S = 16.0  # measured: a toy trial's time outside training and evaluation (issue 18)
STORAGE_BYTES_PER_S = 2e9  # assumed: shared storage, per trial, read and write
EVAL_SEQUENCES, EVAL_BATCH, NEW_TOKENS = 2500, 16, 64  # assumed: evaluation sets scored at each point
SETUP_S = 600.0  # assumed: once per search (Ray start, base model evaluation, importance)


def trial_gpus(shape: ModelShape, nodes: list, max_gpus: int = 64) -> tuple[int, str] | None:
    """The fewest GPUs per trial on which every node fits, and how (ddp, fsdp, fsdp+AC)."""
    for gpus in (1, 2, 4, 8, 16, 32, 64):
        if gpus > max_gpus:
            break
        work = Workload(batch_size=MICRO_BATCH, seq_len=SEQ, weight_dtype="bfloat16", bf16=True, num_workers=gpus,
                        gpus_per_worker=1.0, activation_checkpointing=False, softmask_mode="update", on_gpu=True,
                        gpu_memory_gb=80)
        for label, settings in (("", work), ("+AC", dataclasses.replace(work, activation_checkpointing=True))):
            choice = MemoryPlan.build(shape, nodes, settings).choice()
            if choice:
                return gpus, choice + label
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=20000, help="training examples of the speciality")
    parser.add_argument("--utilisation", type=float, default=0.4, help="share of the H100's bf16 peak reached")
    args = parser.parse_args()
    models = json.loads((REPO / "benchmarks" / "llama2_shapes.json").read_text())["models"]
    space = load_search_space(REPO / "search_spaces" / "cofitune.yaml")
    per_epoch = math.ceil(args.examples / GLOBAL_BATCH)
    schedule = RunSchedule.of(per_epoch * EPOCHS, None, per_epoch, True)
    device = gpu("h100", args.utilisation)
    print(f"{args.examples:,} examples x {EPOCHS} epochs, global batch {GLOBAL_BATCH} x {SEQ} tokens: "
          f"{schedule.total_steps} steps per run, evaluation at steps {', '.join(map(str, schedule.points))}; "
          f"lrs {', '.join(f'{r:g}' for r in RATES.candidates)}, best 1 kept at the first point; "
          f"H100 at {args.utilisation:g} of its bf16 peak ({device.flops_per_s / 1e12:.0f} TFLOP/s)")
    print(f"{'model':<12} {'GPUs':>4} {'search':<18} {'per trial':>13} {'trials':>7} {'steps':>14} "
          f"{'wall (low..high)':>20} {'GPU-hours (low..high)':>24}")
    for name in MODELS:
        config = models[name]["config"]
        meta = ModelShape.from_model_config(LlamaConfig(**config))
        shape = Shape.from_config(config)
        model_bytes = shape.parameters * 2
        for cluster in CLUSTERS:
            for search, (low_shape, high_shape) in _searches(space, shape).items():
                nodes = sorted({p for level in high_shape.levels for p in level if p.trains}, key=lambda p: p.key())
                fit = trial_gpus(meta, nodes, cluster)
                if fit is None:
                    print(f"{name:<12} {cluster:>4} {search:<18} {'does not fit':>13}")
                    continue
                gpus, how = fit
                ac = how.endswith("+AC")

                def seconds(run, gpus=gpus, ac=ac) -> float:
                    if not run.part.trains:
                        step = 0.0
                        trained = 0
                    else:
                        work = step_work(shape, run.part, SEQ, activation_checkpointing=ac)
                        # one optimizer step: 256 sequences over `gpus` GPUs; AdamW's share per GPU under FSDP
                        shards = gpus if how.startswith("fsdp") else 1
                        step = device.step_seconds(work, GLOBAL_BATCH // gpus * SEQ, shards=shards)
                        trained = work.trained
                    decode = math.ceil(EVAL_SEQUENCES / (EVAL_BATCH * gpus)) * NEW_TOKENS * model_bytes / 3.35e12
                    # each point saves the trained weights and AdamW's two moments (bfloat16)
                    checkpoint = 3 * trained * 2 / STORAGE_BYTES_PER_S
                    overheads = RunTime(WORKER_START_S + model_bytes / STORAGE_BYTES_PER_S, decode, checkpoint)
                    return overheads.seconds(run.steps, run.points, step)

                slots = cluster // gpus
                low = SearchCost.of(low_shape, RATES, schedule, RULES, True, seconds, slots, gpus)
                high = SearchCost.of(high_shape, RATES, schedule, RULES, False, seconds, slots, gpus)
                print(f"{name:<12} {cluster:>4} {search:<18} {f'{gpus} ({how})':>13} "
                      f"{_span(low.trials, high.trials):>7} {_span(low.steps, high.steps):>14} "
                      f"{_span(_hours(SETUP_S + low.wall_s), _hours(SETUP_S + high.wall_s)):>20} "
                      f"{_span(f'{low.gpu_s / 3600:,.0f}', f'{high.gpu_s / 3600:,.0f}'):>24}")
    print(f"assumed: per trial {WORKER_START_S:g} s of worker start (measured on the toy) plus the model read at "
          f"{STORAGE_BYTES_PER_S / 1e9:g} GB/s; per point {EVAL_SEQUENCES} evaluation sequences decoded "
          f"{NEW_TOKENS} tokens in batches of {EVAL_BATCH} per GPU (memory-bound) and the trained weights and "
          f"AdamW moments written at {STORAGE_BYTES_PER_S / 1e9:g} GB/s; {SETUP_S:g} s per search before its runs")


def _searches(space, shape: Shape) -> dict:
    """The tree (its fewest nodes, its costliest branch by step work), the grid, the full-SFT sweep."""
    fewest, most = tree_shapes(space, SelectionPolicy(), lambda part: step_work(shape, part, SEQ).per_token)
    grid, sweep = grid_shape(space), sweep_shape()
    return {"tree": (fewest, most), "exhaustive grid": (grid, grid), "full-SFT lr sweep": (sweep, sweep)}


def _span(low, high) -> str:
    low, high = (f"{v:,}" if isinstance(v, int) else v for v in (low, high))
    return low if low == high else f"{low}..{high}"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h"


if __name__ == "__main__":
    main()
