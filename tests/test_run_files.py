"""A run's files on storage: a run the search stopped is marked, loses its training state, and keeps its points."""

import json

import pytest

from cofitune_ray.config import Config
from cofitune_ray.core.layout import RAY_TRAIN_SNAPSHOT, STOPPED_FILE
from cofitune_ray.core.node import ModelPart
from cofitune_ray.core.space import load_search_space
from cofitune_ray.core.tree import SearchTree
from cofitune_ray.training.runner import end_stopped_run, run_node, stopped_history
from conftest import PROJECT


def test_a_stopped_run_keeps_its_points_and_nothing_to_resume_from(tmp_path):
    run_dir = tmp_path / "node-n3-lr0.003"
    (run_dir / "checkpoint_2026-11-26_22-03-01.468568").mkdir(parents=True)
    (run_dir / RAY_TRAIN_SNAPSHOT).write_text("{}")
    points = [{"eval_index": 1, "step": 10, "spec": 0.1, "vers": 0.9}]
    (run_dir / "history.jsonl").write_text("".join(json.dumps(p) + "\n" for p in points))
    assert stopped_history(run_dir) is None  # not stopped: a restarted trial trains (or resumes) it
    end_stopped_run(run_dir, "learning rate 0.003 lost to 0.001 at the first evaluation point")
    end_stopped_run(run_dir, "a later call keeps the first reason")
    assert stopped_history(run_dir) == points
    assert json.loads((run_dir / STOPPED_FILE).read_text())["reason"].startswith("learning rate 0.003 lost")
    assert sorted(p.name for p in run_dir.iterdir()) == ["history.jsonl", STOPPED_FILE]


def test_tree_json_is_replaced_whole(tmp_path):
    tree = SearchTree(load_search_space(PROJECT / "search_spaces" / "smoke.yaml"))
    target = tmp_path / "tree.json"
    target.write_text("old")
    tree.save(target)
    assert SearchTree.from_json(target.read_text()).to_dict() == tree.to_dict()
    assert [p.name for p in tmp_path.iterdir()] == ["tree.json"]


def test_run_node_needs_the_runs_learning_rate_for_a_trained_part(tmp_path):
    with pytest.raises(ValueError, match="give the learning rate of its run"):
        run_node(Config(), ModelPart(layer_range=(0.0, 0.5)), "n1", tmp_path)
