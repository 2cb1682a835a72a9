"""`strategy: optuna` and Optuna learning-rate tuning: driven directly (no Ray), then on a Ray cluster."""

import itertools
import json
import math
import sys
from pathlib import Path

import pytest
import ray.cloudpickle
from ray import tune
from ray.tune.search import Searcher

import score_table
from cofitune_ray.core.node import FFN_MODULES, ModelPart
from cofitune_ray.tuning.optuna_searcher import (
    LearningRateTuner,
    OptunaNodeSearcher,
    candidate_space,
    closest_node,
    is_tuning_node,
    node_params,
)
from cofitune_ray.tuning.scheduler import PromisingChildScheduler, StopRules
from cofitune_ray.core.space import load_search_space, parse_search_space
from cofitune_ray.tuning.searcher import TreeSearcher, latest_saved_tree
from cofitune_ray.core.tree import SearchTree, TreeNode
from score_table import PAPER_PATH_BEAM_1, PAPER_SCORES, UP_DOWN, evaluation_points, key

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
SPACE = load_search_space(SPACES / "cofitune.yaml")
REFERENCES = ["base", "full|mask=off"]
CANDIDATES = len(SPACE.reachable_nodes()) - len(REFERENCES)
LOW = (0.3, 0.3)  # nodes the paper table leaves out
BEST_LR = 1e-4
DEFAULT_LR = 3e-5  # the learning rate of nodes without one
WINNER = key(0.25, 0.5, UP_DOWN, softmask=True)


def scores(spec: ModelPart) -> tuple[float, float]:
    """(Spec, Vers): the paper table's (LOW if absent), lowered by 0.1 per decade the lr is off BEST_LR."""
    spec_value, vers_value = PAPER_SCORES.get(spec.with_(lr=None).key(), LOW)
    penalty = 0.1 * abs(math.log10((spec.lr or DEFAULT_LR) / BEST_LR))
    return spec_value - penalty, vers_value - penalty


def points(spec: ModelPart) -> list[dict]:
    return evaluation_points(spec, {spec.key(): scores(spec)}, num_evals=2)


_trial_ids = itertools.count()


def run(searcher: Searcher, trials: int | None = None) -> list[ModelPart]:
    """Run trials one at a time (suggest, report, complete) until FINISHED or `trials` trials."""
    specs = []
    while trials is None or len(specs) < trials:
        trial_id = f"trial{next(_trial_ids)}"
        config = searcher.suggest(trial_id)
        if config == Searcher.FINISHED:
            break
        assert config is not None, "a searcher driven one trial at a time must always have a node to run"
        spec = ModelPart.from_dict(config["part"])
        assert searcher.tree.node(config["node_id"]).part == spec
        for point in points(spec):
            searcher.on_trial_result(trial_id, point)
        searcher.on_trial_complete(trial_id, point)
        specs.append(spec)
    return specs


def keys(specs) -> list[str]:
    return [s.key() for s in specs]


def saved_and_restored(searcher: Searcher, fresh: Searcher, tmp_path) -> Searcher:
    path = tmp_path / "searcher-state.json"
    searcher.save(str(path))
    fresh.restore(str(path))
    return fresh


# ---- the candidates --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["cofitune.yaml", "grid.yaml"])
def test_candidates_are_every_reachable_node_and_survive_json(name):
    space = load_search_space(SPACES / name)
    candidates = candidate_space(space)

    assert candidates.strategy == "grid"
    assert keys(candidates.references) == REFERENCES
    assert keys(candidates.references + candidates.grid_nodes) == keys(space.reachable_nodes())
    tree = SearchTree(candidates)
    assert SearchTree.from_json(tree.to_json()).to_dict() == tree.to_dict()


def test_candidates_keep_explicit_layers_and_learning_rates():
    grid = {
        "strategy": "grid",
        "references": ["full"],
        "grid": [{"layers": [[0, 2], [1, 3]], "layer_ranges": [[0, 0.5]], "modules": ["ffn"], "lr": [None, 1e-4]}],
    }
    space = parse_search_space(grid)
    candidates = candidate_space(space)

    assert keys(candidates.references + candidates.grid_nodes) == keys(space.reachable_nodes())
    assert {node_params(n)["range"] for n in candidates.grid_nodes} == {"(0,0.5]", "layers 0,2", "layers 1,3"}
    assert {node_params(n)["lr"] for n in candidates.grid_nodes} == {"default", "0.0001"}
    ran = keys(run(OptunaNodeSearcher(space, startup_trials=2)))
    assert ran[0] == "full|mask=off" and sorted(ran[1:]) == sorted(keys(space.grid_nodes))


def test_closest_node_prefers_an_exact_match_then_most_params_then_the_first_param():
    specs = [
        ModelPart(layer_range=(0.25, 0.5)),
        ModelPart(layer_range=(0.25, 0.5), modules=FFN_MODULES),
        ModelPart(layer_range=(0.5, 0.75), modules=FFN_MODULES, softmask=True),
    ]
    pending = [TreeNode(f"n{i}", s, None, 1, None) for i, s in enumerate(specs)]

    assert closest_node(pending, node_params(specs[2])) is pending[2]
    # (0.25, 0.5] FFN with soft-mask is not pending: n1 and n2 both match 3 of 4, n1 on the range.
    assert closest_node(pending, node_params(specs[1].with_(softmask=True))) is pending[1]
    assert closest_node(pending, node_params(specs[0].with_(layer_range=(0.5, 0.75)))) is pending[0]


# ---- OptunaNodeSearcher ----------------------------------------------------------------------------
def test_references_run_first_and_candidates_wait_for_them():
    searcher = OptunaNodeSearcher(SPACE, max_trials=3)

    first, second = searcher.suggest("a"), searcher.suggest("b")
    assert [ModelPart.from_dict(c["part"]).key() for c in (first, second)] == REFERENCES
    assert searcher.suggest("c") is None
    for trial_id, config in (("a", first), ("b", second)):
        searcher.on_trial_complete(trial_id, points(ModelPart.from_dict(config["part"]))[-1])
    third = searcher.suggest("c")
    assert searcher.tree.node(third["node_id"]).depth == 1
    assert ModelPart.from_dict(third["part"]).key() not in REFERENCES


@pytest.mark.parametrize("budget", [1, 6])
def test_a_budgeted_search_runs_the_references_then_budget_distinct_nodes(budget):
    searcher = OptunaNodeSearcher(SPACE, max_trials=budget, startup_trials=3)
    ran = keys(run(searcher))
    tree = searcher.tree

    assert len(ran) == budget + 2 and len(set(ran)) == len(ran)
    assert ran[:2] == REFERENCES
    assert set(ran[2:]) <= set(keys(SPACE.reachable_nodes()))
    assert tree.end_reason == "max_trials reached"
    statuses = [n.status for n in tree.nodes.values()]
    assert statuses.count("finished") == budget + 2
    assert statuses.count("not_expanded") == CANDIDATES - budget
    assert searcher.suggest("after") == Searcher.FINISHED
    assert tree.best().part.key() in ran[2:]
    assert {n.part.key() for n in tree.pareto_front()} <= set(ran)


def test_without_a_budget_every_candidate_runs_once():
    searcher = OptunaNodeSearcher(SPACE, startup_trials=3)
    ran = keys(run(searcher))

    assert len(ran) == len(set(ran)) == CANDIDATES + 2
    assert set(ran) == set(keys(SPACE.reachable_nodes()))
    assert searcher.tree.end_reason == "search space exhausted"
    assert searcher.tree.best().part.key() == WINNER


def test_the_order_depends_on_the_seed_only_and_a_restored_search_continues_it(tmp_path):
    uninterrupted = keys(run(OptunaNodeSearcher(SPACE, max_trials=8, seed=3, startup_trials=3)))
    assert keys(run(OptunaNodeSearcher(SPACE, max_trials=8, seed=3, startup_trials=3))) == uninterrupted
    assert keys(run(OptunaNodeSearcher(SPACE, max_trials=8, seed=4, startup_trials=3))) != uninterrupted

    searcher = OptunaNodeSearcher(SPACE, max_trials=8, seed=3, startup_trials=3)
    before = keys(run(searcher, trials=5))
    restored = saved_and_restored(searcher, OptunaNodeSearcher(SPACE, max_trials=8, seed=3, startup_trials=3), tmp_path)
    assert restored.tree.to_dict() == searcher.tree.to_dict()
    assert before + keys(run(restored)) == uninterrupted
    state = json.loads((tmp_path / "searcher-state.json").read_text())
    assert SearchTree.from_dict(state["tree"]).to_dict() == state["tree"]


# ---- LearningRateTuner -----------------------------------------------------------------------------
def lr_tuner(search=None, **options) -> LearningRateTuner:
    settings = {"n_trials": 3, "lr_min": 1e-5, "lr_max": 1e-3, "startup_trials": 2, **options}
    return LearningRateTuner(search or TreeSearcher(SPACE), **settings)


def test_tuning_runs_n_trials_for_the_winner_and_full_sft_after_the_tree():
    searcher = lr_tuner()
    specs = run(searcher)
    tree = searcher.tree
    path = [k for level in PAPER_PATH_BEAM_1 for k in level]

    assert keys(specs[: len(path)]) == path
    tuned = specs[len(path):]
    assert [s.with_(lr=None).key() for s in tuned] == [WINNER, "full|mask=off"] * 3
    assert all(1e-5 <= s.lr <= 1e-3 for s in tuned)
    assert len({s.lr for s in tuned[0::2]}) == len({s.lr for s in tuned[1::2]}) == 3
    nodes = [n for n in tree.nodes.values() if is_tuning_node(n)]
    assert len(nodes) == 6 and all(n.status == "finished" and n.depth == 6 for n in nodes)
    assert {tree.node(n.parent).part.key() for n in nodes} == {WINNER, "full|mask=off"}
    assert tree.depth == 6 and tree.end_reason == "search space exhausted"
    assert searcher.suggest("after") == Searcher.FINISHED
    assert SearchTree.from_json(tree.to_json()).to_dict() == tree.to_dict()


def test_tpe_moves_towards_the_best_learning_rate():
    searcher = lr_tuner(n_trials=12, startup_trials=3, default_lr=DEFAULT_LR)
    tuned = [s for s in run(searcher) if s.lr is not None]
    distance = [abs(math.log10(s.lr / BEST_LR)) for s in tuned]

    # Random for the first 3 per target, then TPE: its rates are nearer BEST_LR on average.
    assert sum(distance[6:]) / len(distance[6:]) < sum(distance[:6]) / 6


def test_a_beam_of_two_tunes_the_two_best_nodes_and_full_sft():
    searcher = lr_tuner(n_trials=2, beam=2)
    tuned = [s.with_(lr=None).key() for s in run(searcher) if s.lr is not None]

    second = key(0.25, 0.5, UP_DOWN)  # the paper table's runner-up by Uni
    assert sorted(tuned) == sorted([WINNER, second, "full|mask=off"] * 2)


def test_tuning_follows_an_optuna_search_in_the_same_tree():
    searcher = lr_tuner(OptunaNodeSearcher(SPACE, max_trials=4, startup_trials=3), n_trials=1)
    specs = run(searcher)

    assert len(specs) == 2 + 4 + 2
    assert [s.lr is not None for s in specs] == [False] * 6 + [True] * 2
    assert {n.depth for n in searcher.tree.nodes.values() if is_tuning_node(n)} == {2}


def test_a_restored_tuner_proposes_the_same_learning_rates(tmp_path):
    uninterrupted = keys(run(lr_tuner()))
    searcher = lr_tuner()
    before = keys(run(searcher, trials=len(uninterrupted) - 3))
    restored = saved_and_restored(searcher, lr_tuner(), tmp_path)

    assert before + keys(run(restored)) == uninterrupted


@pytest.mark.parametrize(
    "options, message",
    [({"n_trials": 0}, "n_trials"), ({"lr_min": 1e-3, "lr_max": 1e-5}, "lr_min < lr_max"), ({"beam": 0}, "beam")],
)
def test_tuner_settings_are_checked(options, message):
    with pytest.raises(ValueError, match=message):
        lr_tuner(**options)


# ---- on a Ray cluster ------------------------------------------------------------------------------
ray.cloudpickle.register_pickle_by_value(score_table)
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def table_trainable(config):
    for point in points(ModelPart.from_dict(config["part"])):
        tune.report(point)


@pytest.mark.ray
def test_a_budgeted_optuna_search_with_tuning_on_ray(ray_cluster, tmp_path):
    searcher = lr_tuner(OptunaNodeSearcher(SPACE, max_trials=3, startup_trials=2), n_trials=1)
    tuner = tune.Tuner(
        table_trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=PromisingChildScheduler(searcher, StopRules(vers_margin=None)),
            num_samples=-1,
            max_concurrent_trials=2,
        ),
        run_config=tune.RunConfig(name="optuna", storage_path=str(tmp_path / "storage"), verbose=0),
    )
    results = tuner.fit()
    tree = latest_saved_tree(tmp_path / "storage" / "optuna")

    assert len(results) == 2 + 3 + 2 and not results.errors
    ran = [ModelPart.from_dict(r.config["part"]).key() for r in results]
    assert len(set(ran)) == len(ran)
    started = [n for n in tree.nodes.values() if n.status == "finished"]
    assert sorted(n.part.key() for n in started) == sorted(ran)
    assert sum(n.depth == 0 for n in started) == 2 and sum(n.depth == 1 for n in started) == 3
    assert sorted(tree.node(n.parent).part.kind for n in started if is_tuning_node(n)) == ["full", "partial"]
