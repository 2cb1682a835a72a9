"""End to end: `python -m cofitune_ray.search --config configs/smoke.yaml` with real Ray Train trials.

The driver is killed after the first trained node has finished; `--resume` completes the search.
Then: every output exists, no finished node was trained twice, best_model/ is base + delta, and
the report agrees with tree.json. A second test kills a Ray Train worker in the middle of a trial.
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from cofitune_ray.training.checkpoint import read_delta
from cofitune_ray.config import load_config
from cofitune_ray.training.model import load_model
from cofitune_ray.training.runner import ATTEMPTS_FILE
from cofitune_ray.core.tree import ENDED, SearchTree

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "configs" / "smoke.yaml"
FINISHED_TRAINED_NODE = re.compile(r"^\[cofitune\] node (n\d+) (?!base model|full SFT).* -> finished$")


def cli(storage: Path, address: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cofitune_ray.search", "--config", str(SMOKE), f"storage_path={storage}",
            "--address", address, *extra]


def attempts(run_dir: Path) -> dict[str, int]:
    return {p.parent.name: len(p.read_text().splitlines()) for p in (run_dir / "nodes").glob(f"*/{ATTEMPTS_FILE}")}


@pytest.fixture(scope="module")
def resumed_run(ray_cluster, tmp_path_factory):
    """(run_dir, resume output, nodes finished before the kill, attempts before the kill)."""
    storage = tmp_path_factory.mktemp("storage")
    address = ray_cluster.get_runtime_context().gcs_address
    first = subprocess.Popen(cli(storage, address), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    finished_before = []
    for line in first.stdout:
        match = FINISHED_TRAINED_NODE.match(line.strip())
        if match:
            finished_before.append(match.group(1))
            break
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    assert finished_before, "the first run ended before any trained node finished"
    run_dir = storage / "smoke"
    before = attempts(run_dir)
    resumed = subprocess.run(cli(storage, address, "--resume"), capture_output=True, text=True, timeout=1200)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    return run_dir, resumed.stdout, finished_before, before


def test_resume_finishes_without_retraining_finished_nodes(resumed_run):
    run_dir, output, finished_before, before = resumed_run
    assert "resuming the search" in output
    assert output.strip().splitlines()[-1] == f"Results: {run_dir}"
    after = attempts(run_dir)
    tree = SearchTree.from_json((run_dir / "tree.json").read_text())
    for node_id in finished_before:
        assert after[f"node-{node_id}"] == 1 == before[f"node-{node_id}"]
    assert all(n.status in ENDED for n in tree.nodes.values())
    trained = [n for n in tree.nodes.values() if n.status == "finished" and n.part.trains]
    assert trained and all(after[f"node-{n.id}"] in (1, 2) for n in trained)  # 2 only if it ran during the kill
    # Tune ran each node once, across both drivers: no trial of a finished node was repeated.
    trial_ids = [n.trial_id for n in tree.nodes.values() if n.trial_id]
    assert len(trial_ids) == len(set(trial_ids)) == sum(n.status != "not_expanded" for n in tree.nodes.values())


def test_every_output_is_written(resumed_run):
    run_dir, output, _, _ = resumed_run
    for name in ("tree.json", "pareto.csv", "best_node.yaml", "best_model/config.json", "best_model/tokenizer.json",
                 "report.md", "report.html", "pareto.png", "curves.png", "summary.json"):
        assert (run_dir / name).is_file(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    tree = SearchTree.from_json((run_dir / "tree.json").read_text())
    assert summary["best"]["id"] == tree.best().id and "Winner" in output
    assert [n.part.kind for n in tree.at_depth(0)] == ["base", "full"]
    assert len(tree.at_depth(1)) == 2 and {c.depth for c in tree.at_depth(2)} <= {2}
    for node in tree.nodes.values():
        if node.status == "finished":
            assert node.history and node.final["train_steps"] >= 0 and node.trained_params is not None


def test_best_model_is_base_plus_delta(resumed_run):
    run_dir, _, _, _ = resumed_run
    tree = SearchTree.from_json((run_dir / "tree.json").read_text())
    best = tree.best()
    config = load_config(SMOKE)
    merged = AutoModelForCausalLM.from_pretrained(run_dir / "best_model")
    base = load_model(config.model.path).state_dict()
    delta = read_delta(best.checkpoint) if best.part.trains else {}
    for name, value in merged.state_dict().items():
        assert torch.equal(value, delta.get(name, base[name])), name


def test_report_agrees_with_tree_json(resumed_run):
    run_dir, _, _, _ = resumed_run
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


def _train_worker_pids() -> list[int]:
    listing = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in listing.splitlines() if "RayTrainWorker" in line]


def test_killed_train_worker_is_retried_and_the_winner_is_the_same(resumed_run, ray_cluster, tmp_path):
    clean_run_dir = resumed_run[0]
    clean_winner = SearchTree.from_json((clean_run_dir / "tree.json").read_text()).best().part.key()
    address = ray_cluster.get_runtime_context().gcs_address
    search = subprocess.Popen(cli(tmp_path, address), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(search.stdout), daemon=True)
    reader.start()
    killed, deadline = None, time.time() + 600
    while killed is None and time.time() < deadline and search.poll() is None:
        # mid-trial: a trained node has reported its first evaluation point but not finished
        histories = [h for h in (tmp_path / "smoke" / "nodes").glob("node-n*/history.jsonl") if h.read_text().strip()]
        started = [h.parent for h in histories if not (h.parent / "result.json").exists()]
        pids = _train_worker_pids()
        if started and pids:
            os.kill(pids[0], signal.SIGKILL)
            killed = started[0].name
        time.sleep(0.5)
    assert killed, "no trained node was caught in the middle of training"
    search.wait(timeout=1200)
    reader.join(timeout=10)
    assert search.returncode == 0, "".join(output[-60:])
    run_dir = tmp_path / "smoke"
    tree = SearchTree.from_json((run_dir / "tree.json").read_text())
    assert all(n.status == "finished" for n in tree.nodes.values()), {n.id: n.status for n in tree.nodes.values()}
    assert max(attempts(run_dir).values()) == 2  # the interrupted node was trained again, once
    assert tree.best().part.key() == clean_winner
