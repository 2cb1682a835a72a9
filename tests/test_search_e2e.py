"""End to end: `python -m cofitune_ray.search --config configs/smoke.yaml` with real Ray Train trials.

The session's smoke search (`smoke_search.py`, shared with the console tests): one versatility set is given as a
local lm-evaluation-harness task (the toy `upper` set through a task YAML), and the smoke space has a Spectrum
reference (`{snr: 50}`). The driver is killed after the first trained node has finished; `--resume` completes the
search. Then: every output exists, no
finished node was trained twice, best_model/ is base + delta, the lm-eval set is scored at every
evaluation point and joins Vers, the Spectrum node trains its selection, and the report agrees with
tree.json. A second test kills a Ray Train worker in the middle of a run of a search of the
references (base model, full SFT and Spectrum's node, each learning rate a run): the retried run
continues from its last evaluation point, and every run trains, stops and scores as in the first
search (runs wait at the rung, so timing changes nothing).
`COFITUNE_KILL_RUNS=N` repeats that test N times in one session (a reliability loop; 1 in CI).
"""

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from cofitune_ray.config import load_config
from cofitune_ray.core.layout import RAY_TRAIN_SNAPSHOT
from cofitune_ray.core.tree import ENDED, RUNG, SearchTree
from cofitune_ray.training.checkpoint import read_delta
from cofitune_ray.training.model import load_model
from cofitune_ray.training.spectrum import snr_part
from cofitune_ray.training.tokenized import BUILDS_FILE, CACHE_DIR
from ray_processes import train_worker_pids
from smoke_search import LM_EVAL_SET, SMOKE, SearchDriver, attempts, cli
from tool_rules import axolotl_selects

pytestmark = pytest.mark.ray


def test_resume_finishes_without_retraining_finished_nodes(resumed_smoke):
    run_dir, output = resumed_smoke.run_dir, resumed_smoke.resumed_output
    finished_before, before = resumed_smoke.finished_before, resumed_smoke.attempts_before
    assert "resuming the search" in output
    assert output.strip().splitlines()[-1] == f"Results: {run_dir}"
    # One tokenisation of the training set, and of each evaluation set given by path (speciality, copy, reverse),
    # for every trial and worker of both drivers (training/tokenized.py).
    builds = [json.loads(line) for line in (run_dir.parent / CACHE_DIR / BUILDS_FILE).read_text().splitlines()]
    assert len(builds) == len({b["entry"] for b in builds}) == 4
    assert "[cofitune] training set already tokenized" in output and "evaluation sets tokenized now: 0 of 3" in output
    after = attempts(run_dir)
    tree = SearchTree.from_json((run_dir / "tree.json").read_text())
    for node_id in finished_before:  # not trained again (a run kept at the rung was started twice: paused there)
        runs = [r for r in before if r.startswith(f"node-{node_id}-lr")]
        assert runs and all(after[r] == before[r] in (1, 2) for r in runs)
    assert all(n.status in ENDED for n in tree.nodes.values())
    started = [r for n in tree.nodes.values() if n.part.trains for r in n.runs if r.status != "not_expanded"]
    assert started and all(1 <= after[f"node-{r.id}"] <= 3 for r in started)  # 3: paused at the rung, and in the kill
    # Tune ran each run once, across both drivers: no trial of a finished run was repeated.
    trial_ids = [r.trial_id for n in tree.nodes.values() for r in n.runs if r.trial_id]
    assert len(trial_ids) == len(set(trial_ids)) == len(started) + 1  # and the base model's


def test_every_output_is_written(resumed_smoke):
    run_dir, output = resumed_smoke.run_dir, resumed_smoke.resumed_output
    for name in ("tree.json", "pareto.csv", "best_node.yaml", "best_model/config.json", "best_model/tokenizer.json",
                 "report.md", "report.html", "pareto.png", "curves.png", "summary.json"):
        assert (run_dir / name).is_file(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    tree = SearchTree.from_json((run_dir / "tree.json").read_text())
    assert summary["best"]["id"] == tree.best().id and "Winner" in output and "Answer: " in output
    assert [n.part.kind for n in tree.at_depth(0)] == ["base", "full", "snr"]
    assert len(tree.at_depth(1)) == 2 and {c.depth for c in tree.at_depth(2)} <= {2}
    for node in tree.nodes.values():
        if node.status == "finished":
            assert tree.best_point(node) is not None and node.trained_params is not None
            assert node.cost()["trials"] == len(node.runs)
    # only each node's best point keeps its checkpoint once the search has ended
    for node in tree.nodes.values():
        kept = [path for run in node.runs for path in run.checkpoints.values()]
        best = tree.best_point(node)
        assert kept == ([best.checkpoint] if best and best.checkpoint else [])
        assert all(Path(path, "delta.safetensors").is_file() for path in kept)


def test_best_model_is_base_plus_delta(resumed_smoke):
    run_dir = resumed_smoke.run_dir
    tree = SearchTree.from_json((run_dir / "tree.json").read_text())
    best = tree.best()
    config = load_config(SMOKE)
    merged = AutoModelForCausalLM.from_pretrained(run_dir / "best_model")
    base = load_model(config.model.path).state_dict()
    delta = read_delta(tree.best_point(best).checkpoint) if best.part.trains else {}
    for name, value in merged.state_dict().items():
        assert torch.equal(value, delta.get(name, base[name])), name
    assert (run_dir / "recipes").is_dir() == best.part.trains  # no recipe when the answer is the base model
    if best.part.trains:
        names = [n for n, _ in merged.named_parameters()]
        recipe = yaml.safe_load((run_dir / "recipes" / "axolotl.yaml").read_text())
        assert axolotl_selects(recipe["unfrozen_parameters"], names) == set(delta)
        assert recipe["learning_rate"] == (tree.best_point(best).run.lr or config.train.lr)


def test_lm_eval_set_is_scored_at_every_point_and_joins_vers(resumed_smoke):
    run_dir = resumed_smoke.run_dir
    tree = SearchTree.from_json((run_dir / "tree.json").read_text())
    points = [p for n in tree.nodes.values() for r in n.runs for p in r.history]
    assert len(points) > 3
    for point in points:
        sets = point["set_scores"]
        assert set(sets) == {"speciality", "copy", "reverse", LM_EVAL_SET}
        assert point["vers"] == pytest.approx((sets["copy"] + sets["reverse"] + sets[LM_EVAL_SET]) / 3)
    base = tree.best_point(tree.node("n0")).point["set_scores"]
    assert base[LM_EVAL_SET] > 0.5  # the toy base model knows `upper`
    report = (run_dir / "report.md").read_text().split("## Scores per set", 1)[1].split("## ", 1)[0]
    assert f"| Node | speciality | copy | reverse | {LM_EVAL_SET} |" in report
    for node in tree.ranking():
        sets = tree.best_point(node).point["set_scores"]
        assert (f"| {node.id} {node.part.describe()} | " + " | ".join(
            f"{sets[n]:.3f}" for n in ("speciality", "copy", "reverse", LM_EVAL_SET)) + " |") in report


def test_spectrum_reference_trains_its_selection(resumed_smoke):
    run_dir, output = resumed_smoke.run_dir, resumed_smoke.resumed_output
    assert "Spectrum's SNR scores reused from cache" in output  # computed by the first driver, before the kill
    tree = SearchTree.from_json((run_dir / "tree.json").read_text())
    (node,) = [n for n in tree.at_depth(0) if n.part.kind == "snr"]
    config = load_config(SMOKE)
    assert node.status == "finished" and node.part == snr_part(config.model.path, 50)  # the Ray task's = local
    selection = dict(node.part.selection)
    assert all(len(layers) == 4 for layers in selection.values()) and len(selection) == 7  # half of 8 layers
    blocks = {m: "mlp" if m in ("gate_proj", "up_proj", "down_proj") else "self_attn" for m in selection}
    assert set(read_delta(tree.best_point(node).checkpoint)) == {f"model.layers.{i}.{blocks[m]}.{m}.weight"
                                                for m, layers in selection.items() for i in layers}
    report = (run_dir / "report.md").read_text()
    for module, layers in selection.items():
        assert f"| {node.id} Spectrum top 50% | {module} | {', '.join(map(str, layers))} |" in report


def test_report_agrees_with_tree_json(resumed_smoke):
    run_dir = resumed_smoke.run_dir
    tree = SearchTree.from_json((run_dir / "tree.json").read_text())
    report = (run_dir / "report.md").read_text()
    rows = {}
    for line in report.splitlines():
        cells = [c.strip() for c in line.replace("\\|", "\x00").split("|")]
        if len(cells) > 4 and re.fullmatch(r"n\d+", cells[1]):
            rows[cells[1]] = [c.replace("\x00", "|") for c in cells]
    assert set(rows) == set(tree.nodes)
    for node_id, node in tree.nodes.items():
        assert node.part.key() in rows[node_id] and node.status in rows[node_id]


def failed_trials(run_dir: Path) -> dict[str, int]:
    """Run id -> how many times Tune saw its trial fail, for the trials that failed (the newest experiment state)."""
    state = json.loads(sorted((run_dir / "tune").glob("experiment_state-*.json"))[-1].read_text())
    trials = [(json.loads(trial), json.loads(meta)) for trial, meta in state["trial_data"]]
    return {t["config"]["run_id"]: m["num_failures"] for t, m in trials if m["num_failures"]}


def run_view(tree: SearchTree, depth: int) -> dict:
    """What the search decided and trained on the levels up to `depth`: each run's status, reason, steps, points."""
    return {r.id: (r.status, r.stop_reason, r.train_steps, r.total_steps,
                   [(p["eval_index"], p["step"]) for p in r.history])
            for n in tree.nodes.values() if n.depth <= depth for r in n.runs}


def _saved_step(run_files: Path) -> int | None:
    """The step of the training state a retry of the run would continue from: its one Ray Train checkpoint, once Ray
    Train's record of the run's checkpoints names it (a folder uploaded but not yet recorded is not restored; with
    `num_to_keep=1` two folders mean the newer one is not recorded yet)."""
    states = list(run_files.glob("checkpoint_*/position.json"))
    try:
        recorded = (run_files / RAY_TRAIN_SNAPSHOT).read_text()
        if len(states) != 1 or states[0].parent.name not in recorded:
            return None
        return json.loads(states[0].read_text())["position"]["step"]
    except (OSError, json.JSONDecodeError, KeyError):  # not there yet, being written, or deleted meanwhile
        return None


def _killable_worker(ray_cluster, run_dir: Path) -> tuple[int, str] | None:
    """(pid, run id) of a Ray Train worker whose run is between two saved evaluation points with training left (the
    last point's training state saved, so a retry continues from it, not from an earlier one), and
    that the search will neither pause nor stop there: full SFT's (never compared at the rung), or one past its rung.

    A Train worker's working directory is its Ray Train run's (`artifacts/node-<run id>`); history.jsonl is written
    before each point's training state is saved.
    """
    tree_file = run_dir / "tree.json"
    if not tree_file.is_file():
        return None
    tree = SearchTree.from_json(tree_file.read_text())
    for pid in train_worker_pids(ray_cluster):
        try:
            run_id = Path(os.readlink(f"/proc/{pid}/cwd")).name.removeprefix("node-")
            run = tree.run(run_id)
        except (OSError, KeyError, StopIteration):  # gone, or not a run of this search
            continue
        history = run_dir / "nodes" / f"node-{run_id}" / "history.jsonl"
        lines = history.read_text().splitlines() if run.status == "running" and history.is_file() else []
        try:
            last = json.loads(lines[-1]) if lines else None
        except json.JSONDecodeError:  # a line being written
            continue
        if last is None or last["step"] >= last["total_steps"] or _saved_step(history.parent) != last["step"]:
            continue
        if last["eval_index"] > RUNG or not tree.compared_at_rung(tree.node_of_run(run_id)):
            return pid, run_id
    return None


@pytest.mark.parametrize("repeat", range(int(os.environ.get("COFITUNE_KILL_RUNS", "1"))))
def test_killed_train_worker_is_retried_and_continues(resumed_smoke, ray_cluster, tmp_path, smoke_versatility,
                                                      repeat):
    clean = SearchTree.from_json((resumed_smoke.run_dir / "tree.json").read_text())
    address = ray_cluster.get_runtime_context().gcs_address
    # the references only (5 trials): Spectrum's two runs are compared at the rung and wait there for each
    # other and for full SFT; the later levels' nodes add nothing this test checks, at several minutes each
    search = SearchDriver(cli(tmp_path, address, smoke_versatility, overrides=("search.max_trials=5",)))
    run_dir = tmp_path / "smoke"
    killed, deadline = None, time.time() + 600
    while not killed and time.time() < deadline and search.process.poll() is None:
        killed = _killable_worker(ray_cluster, run_dir)
        if killed:
            os.kill(killed[0], signal.SIGKILL)
        time.sleep(0.05)
    assert killed, "no trained run was caught in the middle of training:\n" + "\n".join(search.lines[-30:])
    assert search.wait() == 0, "\n".join(search.lines[-60:])
    tree = SearchTree.from_json((run_dir / "tree.json").read_text())
    assert tree.end_reason == "max_trials reached" and tree.depth == 0
    assert all(n.status == "finished" for n in tree.nodes.values()), {n.id: n.status for n in tree.nodes.values()}
    run_id = killed[1]
    assert failed_trials(run_dir) == {run_id: 1}  # the killed worker's trial failed once, and was retried
    history_file = run_dir / "nodes" / f"node-{run_id}" / "history.jsonl"
    history = [json.loads(line) for line in history_file.read_text().splitlines()]
    steps = [h["step"] for h in history]
    assert steps == sorted(set(steps)) and steps[0] > 0  # no step trained twice, no evaluation point repeated
    assert attempts(run_dir)[f"node-{run_id}"] >= 2 and any(h["resumed_from_step"] > 0 for h in history)
    # The same search as the first one, on these levels: every run stopped, kept and trained alike.
    assert run_view(tree, 0) == run_view(clean, 0)
    assert [n.status for n in tree.nodes.values()] == [clean.node(n.id).status for n in tree.nodes.values()]
    for node in tree.nodes.values():
        for run in node.runs:
            for point, expected in zip(run.history, clean.run(run.id).history):
                for key in ("train_loss", "spec", "vers"):  # the base model's point has no train_loss
                    want = expected[key] if expected[key] is None else pytest.approx(expected[key], rel=1e-4, abs=1e-6)
                    assert point[key] == want, (run.id, point, key)
    assert tree.ranking()[0].part.key() == [n for n in clean.ranking() if n.depth == 0][0].part.key()
