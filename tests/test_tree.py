"""The search tree without Ray: level-by-level expansion, learning-rate runs, selection, budgets, JSON state."""

from pathlib import Path

import pytest

from cofitune_ray.core.drive import drive
from cofitune_ray.core.node import FFN_MODULES
from cofitune_ray.core.objective import Objective
from cofitune_ray.core.settings import LearningRates, SelectionPolicy, StopRules
from cofitune_ray.core.space import load_search_space
from cofitune_ray.core.tree import SearchTree
from score_table import PAPER_PATH_BEAM_1, PAPER_SCORES, UP_DOWN, TableExecutor, key, table_results

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
LOW = (0.05, 0.05)  # score of nodes the table leaves out (only wide beams reach them)
NO_STOPS = StopRules(vers_margin=None, prune_after=None)
ONE_LR = LearningRates((1e-4,))
THREE_LRS = LearningRates((3e-5, 1e-4, 3e-4))


def paper_tree(space="cofitune.yaml", objective="uni", rates=ONE_LR, **policy) -> SearchTree:
    return SearchTree(load_search_space(SPACES / space), SelectionPolicy(**policy), Objective(objective), rates)


def levels_of(tree: SearchTree) -> list[list[str]]:
    """The keys of the nodes that ran, level by level, in creation order."""
    return [[n.part.key() for n in tree.at_depth(d) if n.status != "not_expanded"] for d in range(tree.depth + 1)]


def walk(tree: SearchTree, table=PAPER_SCORES, rules=NO_STOPS) -> list[list[str]]:
    drive(tree, TableExecutor(table, default=LOW), rules)
    return levels_of(tree)


def run_level(tree: SearchTree, table=PAPER_SCORES) -> None:
    """Run every runnable run of the current level to its end, without stop rules."""
    batch = tree.runnable()
    for _, run in batch:
        tree.start(run.id, f"trial-{run.id}")
    for node, run in batch:
        *points, final = table_results(node.part, run.lr, table, default=LOW)
        for point in points:
            tree.record(run.id, point)
        tree.complete(run.id, final)


def test_beam_1_follows_the_paper_path():
    tree = paper_tree()
    assert walk(tree) == PAPER_PATH_BEAM_1
    assert tree.end_reason == "search space exhausted"
    best = tree.best()
    assert best.part.key() == key(0.25, 0.5, UP_DOWN, softmask=True)
    assert tree.score(best).uni == pytest.approx(0.78) and best.depth == 5
    path = [n.part.key() for n in tree.nodes.values() if n.promising]
    assert path == [key(0.25, 0.75), key(0.25, 0.5), key(0.25, 0.5, FFN_MODULES), key(0.25, 0.5, UP_DOWN),
                    best.part.key()]
    (run,) = best.runs
    assert run.id == f"{best.id}-lr0.0001" and [p["eval_index"] for p in run.history] == [1, 2]
    assert tree.best_point(best).point["eval_index"] == 2 and tree.best_point(best).checkpoint.endswith("/2")
    assert best.trained_params == 500
    parent = tree.node(best.parent)
    assert parent.part.key() == key(0.25, 0.5, UP_DOWN) and best.id in parent.children


def test_min_gain_stops_when_no_child_beats_its_parent_by_enough():
    tree = paper_tree(min_gain=0.06)  # level 2's best gains 0.05 Uni over middle-plus
    assert walk(tree) == PAPER_PATH_BEAM_1[:3]
    assert tree.end_reason == "no promising node"
    assert tree.best().part.key() == key(0.25, 0.5)
    assert not tree.best().promising


def test_beam_2_expands_the_two_best_and_runs_shared_children_once():
    tree = paper_tree(beam_width=2, max_depth=2)
    levels = walk(tree)
    # middle-plus (0.60) and bottom-plus (0.50) are kept; (25%, 50%] is a child of both, run once.
    assert levels[2] == [key(0.25, 0.5), key(0.5, 0.75), key(0, 0.25)]
    assert tree.end_reason == "max_depth reached"
    shared = next(n for n in tree.nodes.values() if n.part.key() == key(0.25, 0.5))
    assert tree.node(shared.parent).part.key() == key(0.25, 0.75)


def test_epsilon_keeps_children_close_to_the_best():
    tree = paper_tree(epsilon=0.15, max_depth=2)
    levels = walk(tree)
    assert sorted(levels[2]) == sorted([key(0.25, 0.5), key(0.5, 0.75), key(0, 0.25)])
    assert [n.part.key() for n in tree.select_promising(1)] == [key(0.25, 0.75), key(0, 0.5)]


def test_beam_2_drops_children_that_do_not_beat_their_parent():
    tree = paper_tree(beam_width=2, max_depth=2)
    walk(tree)
    # (50%, 75%] (0.55) is below its parent middle-plus (0.60); the bottom quarter (0.05) below bottom-plus.
    assert [n.part.key() for n in tree.select_promising(2)] == [key(0.25, 0.5)]


def test_ties_go_to_fewer_trained_parameters():
    table = dict(PAPER_SCORES)
    table[key(0, 0.5)] = table[key(0.25, 0.75)]
    tree = paper_tree(max_depth=1)
    walk(tree, table)
    ranked = [n.part.key() for n in tree.ranking(include_references=False)]
    assert ranked[:2] == [key(0, 0.5), key(0.25, 0.75)]  # equal params: creation order
    low = next(n for n in tree.nodes.values() if n.part.key() == key(0.25, 0.75))
    low.trained_params = 1
    assert tree.ranking(include_references=False)[0] is low


def test_max_trials_counts_every_learning_rate_run():
    tree = paper_tree(rates=THREE_LRS, max_trials=6)  # base (1 run) + full SFT (3) + 2 runs of the first level-1 node
    drive(tree, TableExecutor(PAPER_SCORES, default=LOW), NO_STOPS)
    assert tree.end_reason == "max_trials reached" and tree.trials_started() == 6
    first = tree.at_depth(1)[0]
    # the third run never starts, so the rung's verdict is known once the first two are there: 3e-5 loses
    assert [r.status for r in first.runs] == ["stopped", "finished", "not_expanded"]
    assert first.status == "finished" and [n.status for n in tree.at_depth(1)[1:]] == ["not_expanded", "not_expanded"]


def test_each_learning_rate_is_a_run_and_the_node_scores_its_best_kept_run():
    tree = paper_tree(objective="spec_floor", rates=THREE_LRS, max_depth=1)
    drive(tree, TableExecutor(PAPER_SCORES, default=LOW), NO_STOPS)
    middle = next(n for n in tree.at_depth(1) if n.part.key() == key(0.25, 0.75))
    assert [r.id for r in middle.runs] == [f"{middle.id}-lr3e-05", f"{middle.id}-lr0.0001", f"{middle.id}-lr0.0003"]
    # No partial node reaches 0.9 of full SFT's gain here, so runs compare by gain: at the rung 3e-4 and 1e-4
    # tie on Spec (0.60) and the earlier run, 1e-4, is kept; 3e-4 is stopped there, and 3e-5, which waited at the
    # rung for the verdict instead of training on, too.
    assert [r.lr for r in tree.kept_runs(middle)] == [1e-4]
    assert [r.status for r in middle.runs] == ["stopped", "finished", "stopped"]
    assert [r.train_steps for r in middle.runs] == [10, 20, 10] and [len(r.history) for r in middle.runs] == [1, 2, 1]
    assert middle.runs[2].stop_reason.startswith("learning rate 0.0003 lost to 0.0001 at the first evaluation point")
    best = tree.best_point(middle)
    assert best.run.lr == 1e-4 and best.score.spec == pytest.approx(0.70)
    assert middle.cost() == {"trials": 3, "train_steps": 40, "steps_saved": 20, "wall_time_s": 2.0}


def test_failed_runs_and_nodes():
    tree = paper_tree(rates=THREE_LRS)
    run_level(tree)
    node = tree.at_depth(1)[0]
    first, second, third = node.runs
    for run in node.runs:
        tree.start(run.id, "t")
    tree.fail(first.id, "RuntimeError: worker died")
    *points, final = table_results(node.part, second.lr, PAPER_SCORES)
    for point in points:
        tree.record(second.id, point)
    tree.complete(second.id, final)
    assert node.status == "running"
    tree.complete(third.id, {"final": True})  # no evaluation point
    assert third.status == "failed" and third.stop_reason == "the trial reported no evaluation point"
    assert node.status == "finished" and tree.kept_runs(node) == [second]
    other = tree.at_depth(1)[1]
    for run in other.runs:
        tree.start(run.id, "t")
        tree.fail(run.id, "RuntimeError: out of memory")
    assert other.status == "failed" and other.stop_reason == "RuntimeError: out of memory"


def test_pruned_and_failed_nodes_are_never_expanded():
    tree = paper_tree()
    run_level(tree)
    by_key = {n.part.key(): (n, r) for n, r in tree.runnable()}
    for _, run in by_key.values():
        tree.start(run.id, "t")
    (middle, m_run), (bottom, b_run), (top, t_run) = by_key[key(0.25, 0.75)], by_key[key(0, 0.5)], by_key[key(0.5, 1)]
    first_point = table_results(middle.part, m_run.lr, PAPER_SCORES)[0]
    tree.record(m_run.id, first_point)
    tree.stop(m_run.id, "pruned", "vers 0.50 below the incumbent's")
    tree.complete(m_run.id, first_point)
    tree.fail(t_run.id, "RuntimeError: worker died")
    assert tree.depth == 1  # bottom-plus still running
    *points, final = table_results(bottom.part, b_run.lr, PAPER_SCORES)
    for point in points:
        tree.record(b_run.id, point)
    tree.complete(b_run.id, final)
    assert middle.status == "pruned" and middle.stop_reason.startswith("vers 0.50")
    assert top.status == "failed" and top.stop_reason == "RuntimeError: worker died"
    assert [tree.node(n.parent).part.key() for n, _ in tree.runnable()] == [key(0, 0.5), key(0, 0.5)]
    assert m_run.steps_saved() == 10


def test_pareto_front():
    tree = paper_tree()
    walk(tree)
    front = [n.part.key() for n in tree.pareto_front()]
    assert front == ["full|mask=off", key(0.25, 0.5, UP_DOWN), key(0.25, 0.5, UP_DOWN, softmask=True)]


def test_json_round_trip_mid_search_continues_identically():
    tree = paper_tree(rates=THREE_LRS, beam_width=2, epsilon=0.01)
    run_level(tree)
    run_level(tree)
    node, run = tree.runnable()[0]
    tree.start(run.id, "trial-x")
    tree.record(run.id, {"eval_index": 1, "spec": 0.5, "vers": 0.4, "uni": 0.45, "trained_params": 7,
                         "vers/copy/score": 0.4})
    restored = SearchTree.from_json(tree.to_json())
    assert restored.to_dict() == tree.to_dict()
    assert restored.run(run.id).status == "running" and restored.node(node.id).trained_params == 7
    assert restored.run(run.id).history[0]["set_scores"] == {"copy": 0.4}
    for t in (tree, restored):
        t.complete(run.id, table_results(node.part, run.lr, PAPER_SCORES, default=LOW)[-1])
        drive(t, TableExecutor(PAPER_SCORES, default=LOW), NO_STOPS)
    assert restored.to_dict() == tree.to_dict()


def test_grid_runs_every_node_in_one_level():
    tree = paper_tree("grid.yaml")
    levels = walk(tree)
    assert [len(level) for level in levels] == [2, 27]
    assert tree.end_reason == "search space exhausted"
    assert tree.best().part.key() == key(0.25, 0.5, UP_DOWN, softmask=True)


def test_checkpoints_of_ended_levels_are_disposable_except_each_best_point():
    tree = paper_tree(max_depth=1)
    run_level(tree)  # the references: full SFT's best point is its second
    assert tree.disposable_checkpoints() == ["ckpt/full|mask=off/0.0001/1"]
    tree.forget_checkpoints(tree.disposable_checkpoints())
    run_level(tree)
    disposable = tree.disposable_checkpoints()
    kept = {tree.best_point(n).checkpoint for n in tree.at_depth(1)}
    assert len(disposable) == 3 and not set(disposable) & kept and all(p.endswith("/1") for p in disposable)
    tree.forget_checkpoints(disposable)
    assert tree.disposable_checkpoints() == []
    assert all(tree.best_point(n).checkpoint for n in tree.at_depth(1))


def test_a_nodes_own_learning_rate_replaces_the_candidates_everywhere():
    rates = LearningRates((1e-4, 3e-4), keep=1)
    assert rates.for_node(None) == (1e-4, 3e-4) and rates.for_node(5e-5) == (5e-5,)
    space = load_search_space(SPACES / "cofitune.yaml")
    tree = SearchTree(space, learning_rates=rates)
    full = tree.reference_node("full")
    assert [r.lr for r in full.runs] == [1e-4, 3e-4]



def test_a_runs_node_is_known_without_reading_its_id():
    tree = SearchTree(load_search_space(SPACES / "cofitune.yaml"), learning_rates=LearningRates((1e-4, 3e-4), keep=1))
    again = SearchTree.from_json(tree.to_json())
    for current in (tree, again):
        pairs = [(run.id, node.id) for node in current.nodes.values() for run in node.runs]
        assert pairs and all(current.node_of_run(run_id).id == node_id for run_id, node_id in pairs)
