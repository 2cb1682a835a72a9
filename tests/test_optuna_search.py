"""`strategy: optuna`: Optuna's node order, driven in-process (no Ray), then on a Ray cluster."""

import sys
from pathlib import Path

import pytest
import ray.cloudpickle
from ray import tune

import score_table
from cofitune_ray.core.drive import drive
from cofitune_ray.core.node import FFN_MODULES, ModelPart
from cofitune_ray.core.objective import Objective
from cofitune_ray.core.order import OptunaOrder, closest_node, node_params
from cofitune_ray.core.settings import LearningRates, SelectionPolicy, StopRules
from cofitune_ray.core.space import load_search_space, parse_search_space
from cofitune_ray.core.tree import SearchTree, TreeNode
from cofitune_ray.tuning.scheduler import PromisingChildScheduler
from cofitune_ray.tuning.searcher import TreeSearcher, latest_saved_tree
from score_table import PAPER_SCORES, UP_DOWN, TableExecutor, key, table_results

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
SPACE = load_search_space(SPACES / "cofitune.yaml")
REFERENCES = ["base", "full|mask=off"]
CANDIDATES = len(SPACE.reachable_nodes()) - len(REFERENCES)
LOW = (0.3, 0.3)  # nodes the paper table leaves out
WINNER = key(0.25, 0.5, UP_DOWN, softmask=True)
NO_STOPS = StopRules(vers_margin=None, prune_after=None)


def optuna_tree(max_trials=None, rates=(1e-4,)) -> SearchTree:
    return SearchTree(SPACE.as_grid(), SelectionPolicy(max_trials=max_trials), Objective("uni"), LearningRates(rates))


def ran_keys(executor: TableExecutor, tree: SearchTree) -> list[str]:
    """The node keys in the order their first run started."""
    return list(dict.fromkeys(tree.node_of_run(r).part.key() for r in executor.started))


def search(max_trials=None, seed=0, rates=(1e-4,), startup_trials=3) -> tuple[SearchTree, list[str]]:
    tree, executor = optuna_tree(max_trials, rates), TableExecutor(PAPER_SCORES, default=LOW)
    drive(tree, executor, NO_STOPS, order=OptunaOrder(seed=seed, startup_trials=startup_trials))
    return tree, ran_keys(executor, tree)


@pytest.mark.parametrize("name", ["cofitune.yaml", "grid.yaml"])
def test_candidates_are_every_reachable_node_and_survive_json(name):
    space = load_search_space(SPACES / name)
    candidates = space.as_grid()
    assert candidates.strategy == "grid"
    assert [r.key() for r in candidates.references] == REFERENCES
    assert ([n.key() for n in candidates.references + candidates.grid_nodes]
            == [n.key() for n in space.reachable_nodes()])
    tree = SearchTree(candidates)
    assert SearchTree.from_json(tree.to_json()).to_dict() == tree.to_dict()


def test_candidates_keep_explicit_layers_and_learning_rates():
    grid = {
        "strategy": "grid",
        "references": ["full"],
        "grid": [{"layers": [[0, 2], [1, 3]], "layer_ranges": [[0, 0.5]], "modules": ["ffn"], "lr": [None, 1e-4]}],
    }
    space = parse_search_space(grid)
    candidates = space.as_grid()
    assert ([n.key() for n in candidates.references + candidates.grid_nodes]
            == [n.key() for n in space.reachable_nodes()])
    assert {node_params(n)["range"] for n in candidates.grid_nodes} == {"(0,0.5]", "layers 0,2", "layers 1,3"}
    assert {node_params(n)["lr"] for n in candidates.grid_nodes} == {"candidates", "0.0001"}


def test_closest_node_prefers_an_exact_match_then_most_params_then_the_first_param():
    parts = [
        ModelPart(layer_range=(0.25, 0.5)),
        ModelPart(layer_range=(0.25, 0.5), modules=FFN_MODULES),
        ModelPart(layer_range=(0.5, 0.75), modules=FFN_MODULES, softmask=True),
    ]
    pending = [TreeNode(f"n{i}", p, None, 1, None) for i, p in enumerate(parts)]
    assert closest_node(pending, node_params(parts[2])) is pending[2]
    # (0.25, 0.5] FFN with soft-mask is not pending: n1 and n2 both match 3 of 4, n1 on the range.
    assert closest_node(pending, node_params(parts[1].with_(softmask=True))) is pending[1]
    assert closest_node(pending, node_params(parts[0].with_(layer_range=(0.5, 0.75)))) is pending[0]


@pytest.mark.parametrize("budget", [3, 8])
def test_a_budgeted_search_runs_the_references_then_distinct_nodes(budget):
    tree, ran = search(max_trials=budget)
    assert ran[:2] == REFERENCES and len(ran) == budget == len(set(ran))
    assert tree.end_reason == "max_trials reached"
    statuses = [n.status for n in tree.nodes.values()]
    assert statuses.count("finished") == budget and statuses.count("not_expanded") == CANDIDATES + 2 - budget
    assert tree.best().part.key() in ran


def test_without_a_budget_every_candidate_runs_once():
    tree, ran = search()
    assert len(ran) == len(set(ran)) == CANDIDATES + 2
    assert set(ran) == {n.key() for n in SPACE.reachable_nodes()}
    assert tree.end_reason == "search space exhausted" and tree.best().part.key() == WINNER


def test_a_nodes_learning_rate_runs_start_together():
    tree, ran = search(max_trials=1 + 3 + 3 * 3, rates=(3e-5, 1e-4, 3e-4))  # base, full SFT at 3 lrs, 3 nodes
    started = [r.id for n in tree.nodes.values() for r in n.runs if r.status != "not_expanded"]
    assert len(started) == 13 and len(ran) == 2 + 3
    for node in tree.at_depth(1):
        assert {r.status == "not_expanded" for r in node.runs} in ({True}, {False})


def test_the_order_depends_on_the_seed_only_and_a_restored_search_continues_it():
    uninterrupted = search(max_trials=10, seed=3)[1]
    assert search(max_trials=10, seed=3)[1] == uninterrupted
    assert search(max_trials=10, seed=4)[1] != uninterrupted
    tree, order = optuna_tree(10), OptunaOrder(seed=3, startup_trials=3)
    started = []
    for _ in range(6):
        node, run = order.next_run(tree)
        tree.start(run.id, run.id)
        *points, final = table_results(node.part, run.lr, PAPER_SCORES, default=LOW)
        for point in points:
            tree.record(run.id, point)
        tree.complete(run.id, final)
        started.append(node.part.key())
    restored = SearchTree.from_json(tree.to_json())
    executor = TableExecutor(PAPER_SCORES, default=LOW)
    drive(restored, executor, NO_STOPS, order=OptunaOrder(seed=3, startup_trials=3))
    assert started + ran_keys(executor, restored) == uninterrupted


# ---- on a Ray cluster ------------------------------------------------------------------------------
ray.cloudpickle.register_pickle_by_value(score_table)
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def table_trainable(config):
    for result in table_results(ModelPart.from_dict(config["part"]), config["lr"], PAPER_SCORES, default=LOW):
        tune.report(result)


@pytest.mark.ray
def test_a_budgeted_optuna_search_on_ray_runs_what_the_in_process_one_runs(ray_cluster, tmp_path):
    searcher = TreeSearcher(optuna_tree(6), OptunaOrder(seed=1, startup_trials=2))
    tuner = tune.Tuner(
        table_trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=PromisingChildScheduler(searcher, NO_STOPS),
                                    num_samples=-1, max_concurrent_trials=1,
                                    reuse_actors=True),  # a process start less per trial (test_searcher_ray.py)
        run_config=tune.RunConfig(name="optuna", storage_path=str(tmp_path / "storage"), verbose=0),
    )
    results = tuner.fit()
    tree = latest_saved_tree(tmp_path / "storage" / "optuna")
    assert len(results) == 6 and not results.errors
    in_process, ran = search(max_trials=6, seed=1, startup_trials=2)
    assert sorted(n.part.key() for n in tree.nodes.values() if n.status == "finished") == sorted(ran)
    assert tree.best().part.key() == in_process.best().part.key()
