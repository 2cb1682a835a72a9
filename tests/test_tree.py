"""The search tree without Ray: level-by-level expansion, selection, budgets, JSON state."""

from pathlib import Path

import pytest

from cofitune_ray.core.node import FFN_MODULES
from cofitune_ray.core.space import load_search_space
from cofitune_ray.core.tree import SearchTree, SelectionPolicy
from score_table import PAPER_PATH_BEAM_1, PAPER_SCORES, UP_DOWN, evaluation_points, key

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
LOW = (0.05, 0.05)  # score of nodes the table leaves out (only wide beams reach them)


def paper_tree(**policy) -> SearchTree:
    return SearchTree(load_search_space(SPACES / "cofitune.yaml"), SelectionPolicy(**policy))


def run_level(tree: SearchTree, table=PAPER_SCORES) -> list[str]:
    """Run every runnable node of the current level to its end; return their keys."""
    batch = tree.runnable()
    for node in batch:
        tree.start(node.id, f"trial-{node.id}")
    for node in batch:
        for point in evaluation_points(node.part, table, num_evals=2, default=LOW):
            tree.record(node.id, point)
        tree.complete(node.id, point)
    return [n.part.key() for n in batch]


def walk_tree(tree: SearchTree, table=PAPER_SCORES) -> list[list[str]]:
    levels = []
    while not tree.finished:
        levels.append(run_level(tree, table))
    return levels


def test_beam_1_follows_the_paper_path():
    tree = paper_tree()
    assert walk_tree(tree) == PAPER_PATH_BEAM_1
    assert tree.end_reason == "search space exhausted"
    best = tree.best()
    assert best.part.key() == key(0.25, 0.5, UP_DOWN, softmask=True)
    assert best.score().uni == pytest.approx(0.78) and best.depth == 5
    path = [n.part.key() for n in tree.nodes.values() if n.promising]
    assert path == [key(0.25, 0.75), key(0.25, 0.5), key(0.25, 0.5, FFN_MODULES), key(0.25, 0.5, UP_DOWN), best.part.key()]
    assert [p["eval_index"] for p in best.history] == [1, 2]
    assert best.trained_params == 500
    parent = tree.node(best.parent)
    assert parent.part.key() == key(0.25, 0.5, UP_DOWN) and best.id in parent.children


def test_min_gain_stops_when_no_child_beats_its_parent_by_enough():
    tree = paper_tree(min_gain=0.06)  # level 2's best gains 0.05 over middle-plus
    assert walk_tree(tree) == PAPER_PATH_BEAM_1[:3]
    assert tree.end_reason == "no promising node"
    assert tree.best().part.key() == key(0.25, 0.5)
    assert not tree.best().promising


def test_beam_2_expands_the_two_best_and_runs_shared_children_once():
    tree = paper_tree(beam_width=2, max_depth=2)
    levels = walk_tree(tree)
    # middle-plus (0.60) and bottom-plus (0.50) are kept; (25%, 50%] is a child of both, run once.
    assert levels[2] == [key(0.25, 0.5), key(0.5, 0.75), key(0, 0.25)]
    assert tree.end_reason == "max_depth reached"
    shared = next(n for n in tree.nodes.values() if n.part.key() == key(0.25, 0.5))
    assert tree.node(shared.parent).part.key() == key(0.25, 0.75)


def test_epsilon_keeps_children_close_to_the_best():
    tree = paper_tree(epsilon=0.15, max_depth=2)
    levels = walk_tree(tree)
    assert sorted(levels[2]) == sorted([key(0.25, 0.5), key(0.5, 0.75), key(0, 0.25)])
    assert [n.part.key() for n in tree.select_promising(1)] == [key(0.25, 0.75), key(0, 0.5)]


def test_beam_2_with_min_gain_drops_children_that_do_not_beat_their_parent():
    tree = paper_tree(beam_width=2, max_depth=2)
    walk_tree(tree)
    # (50%, 75%] (0.55) is below its parent middle-plus (0.60); the bottom quarter (0.05) below bottom-plus.
    assert [n.part.key() for n in tree.select_promising(2)] == [key(0.25, 0.5)]


def test_ties_go_to_fewer_trained_parameters():
    table = dict(PAPER_SCORES)
    table[key(0, 0.5)] = table[key(0.25, 0.75)]
    tree = paper_tree(max_depth=1)
    walk_tree(tree, table)
    ranked = [n.part.key() for n in tree.ranking(include_references=False)]
    assert ranked[:2] == [key(0, 0.5), key(0.25, 0.75)]  # equal params: creation order
    low = next(n for n in tree.nodes.values() if n.part.key() == key(0.25, 0.75))
    low.trained_params = 1
    assert tree.ranking(include_references=False)[0] is low


def test_max_trials_leaves_the_rest_not_expanded():
    tree = paper_tree(max_trials=4)
    levels = walk_tree(tree)
    assert levels == [PAPER_PATH_BEAM_1[0], PAPER_PATH_BEAM_1[1][:2]]
    assert tree.end_reason == "max_trials reached"
    assert [n.status for n in tree.at_depth(1)] == ["finished", "finished", "not_expanded"]


def test_pruned_and_failed_nodes_are_never_expanded():
    tree = paper_tree()
    run_level(tree)
    by_key = {n.part.key(): n for n in tree.runnable()}
    for node in by_key.values():
        tree.start(node.id, "t")
    middle, bottom, top = by_key[key(0.25, 0.75)], by_key[key(0, 0.5)], by_key[key(0.5, 1)]
    tree.record(middle.id, evaluation_points(middle.part, PAPER_SCORES)[0])
    tree.prune(middle.id, "vers 0.50 below best sibling's 0.62 by more than 0.1")
    tree.complete(middle.id, evaluation_points(middle.part, PAPER_SCORES)[0])
    tree.fail(top.id, "RuntimeError: worker died")
    assert tree.depth == 1  # bottom-plus still running
    tree.complete(bottom.id, evaluation_points(bottom.part, PAPER_SCORES)[0])
    assert middle.status == "pruned" and middle.stop_reason.startswith("vers 0.50")
    assert top.status == "failed" and top.stop_reason == "RuntimeError: worker died"
    assert [tree.node(n.parent).part.key() for n in tree.runnable()] == [key(0, 0.5), key(0, 0.5)]


def test_a_trial_without_evaluation_points_fails():
    tree = paper_tree()
    base = tree.runnable()[0]
    tree.start(base.id, "t")
    tree.complete(base.id, {"done": True})
    assert base.status == "failed" and base.stop_reason == "the trial reported no evaluation point"


def test_pareto_front():
    tree = paper_tree()
    walk_tree(tree)
    front = [n.part.key() for n in tree.pareto_front()]
    assert front == ["full|mask=off", key(0.25, 0.5, UP_DOWN), key(0.25, 0.5, UP_DOWN, softmask=True)]


def test_json_round_trip_mid_search_continues_identically():
    tree = paper_tree(beam_width=2, epsilon=0.01)
    run_level(tree)
    run_level(tree)
    node = tree.runnable()[0]
    tree.start(node.id, "trial-x")
    tree.record(node.id, {"eval_index": 1, "spec": 0.5, "vers": 0.4, "uni": 0.45, "trained_params": 7})
    restored = SearchTree.from_json(tree.to_json())
    assert restored.to_dict() == tree.to_dict()
    assert restored.node(node.id).status == "running" and restored.node(node.id).trained_params == 7
    for t in (tree, restored):
        for point in evaluation_points(node.part, PAPER_SCORES, default=LOW):
            t.complete(node.id, point)
    assert walk_tree(restored) == walk_tree(tree)
    assert restored.to_dict() == tree.to_dict()


def test_grid_runs_every_node_in_one_level():
    tree = SearchTree(load_search_space(SPACES / "grid.yaml"))
    levels = walk_tree(tree)
    assert [len(level) for level in levels] == [2, 27]
    assert tree.end_reason == "search space exhausted"
    assert tree.best().part.key() == key(0.25, 0.5, UP_DOWN, softmask=True)
