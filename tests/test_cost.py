"""The cost plan: a node's step work by hand, the search's bounds against searches driven on fixed score tables,
the schedule's wall time, and the CLI (no torch, no GPU)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from cofitune_ray.core.budget import RunSchedule, SearchCost, grid_shape, makespan, node_runs, sweep_shape, tree_shapes
from cofitune_ray.core.cost import CostError, RunTime, Shape, calibrate, step_work
from cofitune_ray.core.drive import drive
from cofitune_ray.core.node import FULL_SFT_PART, PAPER_NODE, ModelPart
from cofitune_ray.core.objective import Objective
from cofitune_ray.core.settings import LearningRates, SelectionPolicy, StopRules
from cofitune_ray.core.space import load_search_space, parse_search_space
from cofitune_ray.core.tree import SearchTree
from score_table import PAPER_SCORES, STEPS_PER_EVAL, TableExecutor, key

REPO = Path(__file__).resolve().parents[1]
SPACES = REPO / "search_spaces"
SHAPES = json.loads((REPO / "benchmarks" / "llama2_shapes.json").read_text())["models"]
#: 2 layers, hidden 4, intermediate 8, 2 heads of 2, vocabulary 10: q/k/v/o 16 weights each, gate/up/down 32.
TINY = Shape(num_layers=2, hidden_size=4, intermediate_size=8, num_heads=2, num_kv_heads=2, head_dim=2, vocab_size=10)
SEQ = 3  # attention per layer and token: 4 x 3 x 2 x 2 = 48; lm_head 2 x 4 x 10 = 80


def test_the_step_work_of_nodes_computed_by_hand():
    forward = 2 * (2 * 160 + 48) + 80  # both layers' projections and attention, lm_head
    full = step_work(TINY, FULL_SFT_PART, SEQ)
    assert full.forward == forward == 816
    # Every input gradient (down to the embeddings): lm_head, all projections, both attentions (2 x 48 each).
    assert full.input_gradients == 80 + 2 * 2 * 160 + 2 * 2 * 48
    assert full.weight_gradients == 80 + 2 * 2 * 160  # lm_head and every projection; the embeddings' is a scatter
    assert full.trained == 10 * 4 + 2 * (160 + 2 * 4) + 4 + 10 * 4 == TINY.parameters == 420

    top_ffn = step_work(TINY, ModelPart(layers=(1,), modules=("up_proj", "down_proj")), SEQ)
    assert top_ffn.forward == forward
    assert top_ffn.input_gradients == 80 + 2 * 32  # lm_head, then only down_proj sits above up_proj
    assert top_ffn.weight_gradients == 2 * (32 + 32)
    assert top_ffn.trained == 64

    low_o = step_work(TINY, ModelPart(layers=(0,), modules=("o_proj",)), SEQ)
    # Above o_proj of layer 0: its own gate, up, down; all of layer 1 with its attention; lm_head. Not the
    # attention of layer 0 nor q/k/v: they are below the lowest trained module.
    assert low_o.input_gradients == 80 + 2 * (32 + 32 + 32) + 2 * 160 + 2 * 48
    assert low_o.weight_gradients == 2 * 16
    # No backward below the lowest trained layer: a node higher up costs less.
    assert step_work(TINY, ModelPart(layers=(1,), modules=("o_proj",)), SEQ).per_token < low_o.per_token
    # Activation checkpointing runs the forward of every layer the backward goes through once more.
    assert step_work(TINY, FULL_SFT_PART, SEQ, activation_checkpointing=True).forward == forward + 2 * 368
    assert step_work(TINY, ModelPart(layers=(1,), modules=("up_proj",)), SEQ, True).forward == forward + 368
    with pytest.raises(CostError, match="base node"):
        step_work(TINY, ModelPart(kind="base"), SEQ)


def test_the_shape_read_from_config_json_is_the_model_transformers_builds():
    from transformers import LlamaConfig

    from cofitune_ray.plan.memory import ModelShape
    from cofitune_ray.training.model import Architecture

    configs = [entry["config"] for entry in SHAPES.values()]
    configs.append(json.loads((REPO / "assets/toyworld/calibrated/seed-0/model/config.json").read_text()))
    for config in configs:
        shape = Shape.from_config(config)
        hf = LlamaConfig(**config)
        built = ModelShape.from_model_config(hf)
        assert shape.parameters == built.count()
        arch = Architecture.from_config(hf)
        assert (shape.num_layers, shape.hidden_size, shape.intermediate_size, shape.num_heads, shape.num_kv_heads,
                shape.head_dim) == (arch.num_layers, arch.hidden_size, arch.intermediate_size, arch.num_heads,
                                    arch.num_kv_heads, arch.head_dim)
        for module in ("q_proj", "k_proj", "down_proj"):
            assert shape.projection(module) == built.count(arch.module_prefix(3, module))
    assert Shape.from_config(SHAPES["LLaMA-2 7B"]["config"]).parameters == 6_738_415_616
    with pytest.raises(CostError, match="missing key 'hidden_size'"):
        Shape.from_config({"num_attention_heads": 2})


def test_the_paper_node_costs_the_measured_share_of_full_sft():
    """docs/benchmarks.md and docs/gpu.md measured the (25%, 50%] up+down node's step at 0.55 of full SFT's on
    the CPU (8 layers, hidden 256, 8 x 128 tokens) and 0.72 on an H100 (12 layers, hidden 768, 8 x 512, bf16)."""
    node = PAPER_NODE
    cpu = Shape(8, 256, 688, 8, 8, 32, 2048)
    h100 = Shape(12, 768, 2048, 12, 12, 64, 32000)
    for shape, seq, measured in ((cpu, 128, 0.550), (h100, 512, 0.718)):
        ratio = step_work(shape, node, seq).per_token / step_work(shape, FULL_SFT_PART, seq).per_token
        assert 0.75 <= ratio / measured <= 1.33, (shape, ratio)


def test_a_calibrated_device_gives_back_the_measured_step_and_scales_with_the_work():
    work = step_work(TINY, FULL_SFT_PART, SEQ)
    device = calibrate("cpu", work, tokens=6, measured_step_s=0.5, bandwidth=1e6)
    assert device.step_seconds(work, 6) == pytest.approx(0.5)
    optimizer = work.trained * 32 / 1e6
    assert device.step_seconds(work, 6, micro_batches=2) == pytest.approx(2 * (0.5 - optimizer) + optimizer)
    assert device.step_seconds(work, 6, shards=4) == pytest.approx(0.5 - optimizer + optimizer / 4)  # FSDP
    node = step_work(TINY, ModelPart(layers=(1,), modules=("up_proj", "down_proj")), SEQ)
    compute = (0.5 - optimizer) * node.per_token / work.per_token
    assert device.step_seconds(node, 6) == pytest.approx(compute + 64 * 32 / 1e6)
    with pytest.raises(CostError, match="no time"):
        calibrate("cpu", work, 6, measured_step_s=optimizer / 2, bandwidth=1e6)


def test_run_seconds_add_start_up_steps_and_each_point():
    overheads = RunTime(startup_s=10, eval_s=3, checkpoint_s=1)
    assert overheads.seconds(steps=100, points=2, step_s=0.5) == 10 + 50 + 2 * (3 + 1)
    assert overheads.seconds(steps=0, points=1, step_s=0.0) == 13  # the base model: evaluated, no checkpoint
    with pytest.raises(CostError, match="eval_s"):
        RunTime(1, -1)


def test_the_run_schedule_and_where_runs_can_stop():
    assert RunSchedule.of(300, 150, 63, False).points == (150, 300)
    assert RunSchedule.of(130, None, 63, True).points == (63, 126, 130)
    assert RunSchedule.of(20, 10, 5, True).points == (5, 10, 15, 20)
    schedule = RunSchedule((10, 20, 30, 40))
    rules = StopRules(vers_margin=None, prune_after=0.5)
    assert schedule.earliest_stop(rules, kept=False) == 0  # the rung
    assert schedule.earliest_stop(rules, kept=True) == 1  # the floor rule from step 20 on
    assert schedule.earliest_stop(StopRules(vers_margin=0.1, prune_after=None, min_evals=3), kept=True) == 2
    assert schedule.earliest_stop(StopRules(vers_margin=None, prune_after=None), kept=True) == 3

    rates = LearningRates((1e-4, 3e-4, 1e-3), keep=1)
    node = ModelPart(layer_range=(0, 0.5))
    assert [(r.steps, r.points) for r in node_runs(node, rates, schedule, rules, True)] == [(20, 2), (10, 1), (10, 1)]
    assert [(r.steps, r.points) for r in node_runs(node, rates, schedule, rules, False)] == [(40, 4), (10, 1), (10, 1)]
    assert [r.steps for r in node_runs(node, LearningRates((1e-4, 3e-4), keep=2), schedule, rules, False)] == [40, 40]
    assert [r.steps for r in node_runs(FULL_SFT_PART, rates, schedule, rules, True)] == [40] * 3
    assert [r.steps for r in node_runs(ModelPart(kind="snr", top_percent=25), rates, schedule, rules, True)] == \
        [40, 10, 10]  # a Spectrum reference is halved, never pruned
    assert [(r.steps, r.points) for r in node_runs(ModelPart(kind="base"), rates, schedule, rules, True)] == [(0, 1)]


def test_the_paper_tree_has_nine_nodes_at_most_and_three_at_least_on_its_costliest_branch():
    space = load_search_space(SPACES / "cofitune.yaml")
    fewest, most = tree_shapes(space, SelectionPolicy(), node_cost=lambda part: 1.0)
    assert [len(level) for level in fewest.levels] == [2, 3]
    assert [len(level) for level in most.levels] == [2, 3, 2, 2, 1, 1]  # 50%, 25%, attention vs FFN, up+down, mask
    assert most.levels[4][0].modules == ("up_proj", "down_proj")
    # The costliest branch follows the cost: the widest ranges when a node costs its layer range.
    _, widest = tree_shapes(space, SelectionPolicy(), lambda p: p.layer_range[1] - p.layer_range[0])
    assert widest.nodes == most.nodes
    _, two = tree_shapes(space, SelectionPolicy(beam_width=2), node_cost=lambda part: 1.0)
    assert [len(level) for level in two.levels] == [2, 3, 4, 4, 2, 2]  # the quarters of (0, 50%] and (50%, 100%]
    _, shallow = tree_shapes(space, SelectionPolicy(max_depth=2), node_cost=lambda part: 1.0)
    assert [len(level) for level in shallow.levels] == [2, 3, 2]
    grid = grid_shape(space)
    assert [len(level) for level in grid.levels] == [2, 27]
    assert [len(level) for level in sweep_shape().levels] == [1]


def test_makespan_starts_each_run_on_the_first_free_slot():
    assert makespan([3, 1, 1, 1], 2) == 3
    assert makespan([2, 2, 2], 2) == 4
    assert makespan([2, 2, 2], 5) == 2
    assert makespan([], 2) == 0


def _bounds(space, policy, rates, rules, num_evals):
    schedule = RunSchedule(tuple(STEPS_PER_EVAL * (i + 1) for i in range(num_evals)))
    fewest, most = tree_shapes(space, policy, node_cost=lambda part: 1.0)
    seconds = lambda run: float(run.steps)  # noqa: E731
    low = SearchCost.of(fewest, rates, schedule, rules, True, seconds, 1, 1, policy.max_trials)
    high = SearchCost.of(most, rates, schedule, rules, False, seconds, 1, 1, policy.max_trials)
    return low, high


TABLES = {
    "the paper's story": PAPER_SCORES,
    "nothing beats full SFT": {"base": (0.1, 0.9), "full|mask=off": (0.9, 0.5)},
    "the middle wins, then stops": {**PAPER_SCORES, key(0.25, 0.5): (0.2, 0.2), key(0.5, 0.75): (0.2, 0.2)},
}


@pytest.mark.parametrize("table", list(TABLES))
@pytest.mark.parametrize("rules", [StopRules(vers_margin=None, prune_after=None), StopRules(vers_margin=0.1)],
                         ids=["no stop rules", "stop rules"])
@pytest.mark.parametrize("concurrency", [1, 3])
def test_a_search_driven_on_fixed_curves_trains_within_the_bounds(table, rules, concurrency):
    space = load_search_space(SPACES / "cofitune.yaml")
    rates = LearningRates((3e-5, 1e-4, 3e-4), keep=1)
    policy = SelectionPolicy()
    low, high = _bounds(space, policy, rates, rules, num_evals=4)
    tree = SearchTree(space, policy, Objective("spec_floor"), rates)
    drive(tree, TableExecutor(TABLES[table], num_evals=4, default=(0.05, 0.05)), rules, concurrency=concurrency)
    trials = tree.trials_started()
    steps = sum(r.train_steps for n in tree.nodes.values() for r in n.runs)
    assert low.trials <= trials <= high.trials, (low.trials, trials, high.trials)
    assert low.steps <= steps <= high.steps, (low.steps, steps, high.steps)


def test_the_grid_and_a_trial_budget_within_the_bounds():
    space = load_search_space(SPACES / "cofitune.yaml").as_grid()
    rates, rules = LearningRates((1e-4, 3e-4), keep=1), StopRules(vers_margin=0.1)
    for policy in (SelectionPolicy(), SelectionPolicy(max_trials=11)):
        low, high = _bounds(space, policy, rates, rules, num_evals=2)
        tree = SearchTree(space, policy, Objective("spec_floor"), rates)
        drive(tree, TableExecutor(PAPER_SCORES, num_evals=2, default=(0.05, 0.05)), rules, concurrency=2)
        steps = sum(r.train_steps for n in tree.nodes.values() for r in n.runs)
        assert low.trials <= tree.trials_started() <= high.trials
        assert low.steps <= steps <= high.steps
    assert high.trials == 11


def test_levels_run_one_after_another_on_the_slots():
    space = parse_search_space({"strategy": "grid", "references": ["base", "full"],
                                "grid": [{"layer_ranges": [[0, 0.5], [0.5, 1]], "modules": ["all"]}]})
    rates, schedule = LearningRates((1e-4, 3e-4)), RunSchedule((10, 20))
    cost = SearchCost.of(grid_shape(space), rates, schedule, StopRules(), False,
                         lambda run: 1.0 + run.steps, slots=2, gpus_per_trial=4)
    # level 0: base (1 s) and full SFT's two runs (21 s) on 2 slots: 22 s; level 1: each node's kept run (21 s)
    # and its rung loser (10 steps, 11 s) in order on 2 slots, 21 | 11, 11 + 21 | 21 + 11: 32 s.
    assert cost.trials == 7 and cost.steps == 2 * 20 + 2 * (20 + 10)
    assert cost.wall_s == 22 + 32
    assert cost.gpu_s == (1 + 4 * 21 + 2 * 11) * 4


def test_the_cli_prints_the_plan_without_torch(tmp_path):
    code = ("import sys; from cofitune_ray.plan.cost import main; "
            "rc = main(['--config', 'configs/toy.yaml', '--cpus', '2', '--tflops', '0.01']); "
            "heavy = [m for m in ('torch', 'ray', 'transformers') if m in sys.modules]; "
            "assert not heavy, heavy; sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "300 steps per run" in out and "evaluation at step(s) 150, 300" in out
    assert "2 trial(s) at once" in out
    tree = next(line for line in out.splitlines() if line.strip().startswith("tree"))
    # base, full SFT x 2, three 50% ranges x 2 .. nine nodes x 2; full SFT 2 x 300 steps and each node 150 + 150
    # (its kept rate pruned at step 150) .. 300 + 150 (the losing rate stopped at the rung, step 150)
    assert tree.split()[1:3] == ["9..21", "1,500..4,650"]
    grid = next(line for line in out.splitlines() if line.strip().startswith("exhaustive grid"))
    assert grid.split()[2:4] == ["57", "8,700..12,750"]


def test_the_cli_names_what_is_wrong(capsys):
    from cofitune_ray.plan.cost import main

    assert main(["--config", str(REPO / "configs/toy.yaml"), "--gpus", "8"]) == 2
    assert "scaling.use_gpu is false: give --cpus" in capsys.readouterr().err
    assert main(["--config", str(REPO / "configs/toy.yaml"), "--cpus", "2"]) == 2
    assert "needs --tflops or --calibrate" in capsys.readouterr().err
    assert main(["--config", str(REPO / "configs/toy.yaml"), "--cpus", "0.5", "--tflops", "1"]) == 2
    assert "a trial holds 1 CPU(s), the cluster has 0.5" in capsys.readouterr().err
    toy = ["--config", str(REPO / "configs/toy.yaml"), "--cpus", "2", "--tflops", "1"]
    assert main([*toy, "model.path=/nowhere"]) == 2
    assert "error: model.path: cannot read /nowhere" in capsys.readouterr().err
    assert main([*toy, "train.batch_size=0"]) == 2
    assert "train.batch_size" in capsys.readouterr().err


def test_the_calibration_step_measures_the_models_width_here(capsys):
    from cofitune_ray.plan.cost import main

    assert main(["--config", str(REPO / "configs/toy.yaml"), "--cpus", "2", "--calibrate"]) == 0
    out = capsys.readouterr().out
    assert "measured: a full-SFT step of 2 layer(s) of this width, 32 x 48 tokens" in out


def test_the_cluster_shape_holds_whole_trials_and_every_workers_copy_of_the_model():
    from cofitune_ray.config import load_config
    from cofitune_ray.plan.cost import ClusterShape, cluster_shape

    fsdp = REPO / "k8s/overlays/gpu-fsdp/search-fsdp.yaml"
    shape = Shape.from_config(SHAPES["LLaMA 33B"]["config"])
    model_gib = shape.parameters * 2 / 2**30
    eight = cluster_shape(load_config(fsdp), shape, slots=2, gpus_per_node=8)
    assert eight == ClusterShape(8, 81, math.ceil(1.25 * 8 * model_gib), 0, 2)  # 8 x 8 CPUs + a trial's 0.5, x 1.25
    assert eight.group_name == "gpu-x8"
    sixteen = cluster_shape(load_config(fsdp, ["scaling.num_workers=16"]), shape, slots=3, gpus_per_node=8)
    assert (sixteen.gpus_per_pod, sixteen.max_replicas) == (8, 6)  # a trial on two whole pods, three at once
    one = cluster_shape(load_config(fsdp, ["scaling.num_workers=1"]), shape, slots=4, gpus_per_node=8)
    assert (one.gpus_per_pod, one.max_replicas, one.group_name) == (1, 4, "gpu")
    with pytest.raises(CostError, match="12 GPUs per trial: not a whole number of 8-GPU nodes"):
        cluster_shape(load_config(fsdp, ["scaling.num_workers=12"]), shape, slots=1, gpus_per_node=8)


def test_the_training_records_are_counted_in_every_data_format(tmp_path):
    import datasets

    from cofitune_ray.plan.cost import training_examples

    rows = [{"instruction": f"q{i}", "input": "", "output": "a"} for i in range(7)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n\n" for r in rows))
    (tmp_path / "train.json").write_text(json.dumps(rows))
    table = datasets.Dataset.from_list(rows)
    table.to_parquet(str(tmp_path / "train.parquet"))
    table.save_to_disk(str(tmp_path / "saved"))
    for name in ("train.jsonl", "train.json", "train.parquet", "saved"):
        assert training_examples(str(tmp_path / name)) == 7, name
    with pytest.raises(CostError, match="data.speciality_train: cannot count the records of"):
        training_examples(str(tmp_path / "missing.jsonl"))
