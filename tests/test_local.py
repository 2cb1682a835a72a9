"""The in-process executor (benchmarks' runs, no Ray): lazy training, stops, and the run cache."""

import copy

import pytest

from cofitune_ray.config import config_from_dict
from cofitune_ray.core.drive import drive
from cofitune_ray.core.node import BASE_PART, ModelPart
from cofitune_ray.core.objective import Objective
from cofitune_ray.core.settings import LearningRates, SelectionPolicy, StopRules
from cofitune_ray.core.space import parse_search_space
from cofitune_ray.core.tree import SearchTree
from cofitune_ray.training.local import LocalExecutor, RunCache
from tiny import make_world

pytestmark = pytest.mark.slow  # models trained in-process: not in the fast subset

PART = ModelPart(layer_range=(0.25, 0.5), modules=("up_proj", "down_proj"))


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    data = copy.deepcopy(make_world(tmp_path_factory.mktemp("world"), layers=4))
    data["train"].update(max_steps=6, epochs=3)
    data["eval"]["every_n_steps"] = 2
    return config_from_dict(data)


def test_a_run_yields_each_evaluation_point_then_its_cost(config):
    results = list(LocalExecutor(config).results(PART, 1e-3))
    *points, final = results
    assert [p["eval_index"] for p in points] == [1, 2, 3] and [p["step"] for p in points] == [2, 4, 6]
    assert all(p["total_steps"] == 6 and p["trained_params"] == 2 * 48 * 32 for p in points)
    assert all(0 <= p["spec"] <= 1 and 0 <= p["vers"] <= 1 for p in points)
    assert final["final"] and final["train_steps"] == 6 and final["total_steps"] == 6
    (base, base_final) = list(LocalExecutor(config).results(BASE_PART, None))
    assert base["step"] == 0 and base["trained_params"] == 0 and base_final["train_steps"] == 0


def test_closing_a_run_stops_its_training_and_the_cache_serves_it_later(config, tmp_path):
    cache = RunCache(tmp_path / "runs.json", {"world": "tiny"})
    executor = LocalExecutor(config, cache=cache)
    results = executor.results(PART, 1e-3)
    first = next(results)
    results.close()  # what core.drive does when the rules stop the run
    assert executor.trained_steps == 2 and first["step"] == 2

    again = LocalExecutor(config, cache=RunCache(tmp_path / "runs.json", {"world": "tiny"}))
    full = list(again.results(PART, 1e-3))
    assert full[0] == first  # served from the cache, not evaluated again
    assert again.trained_steps == 6  # trained from the start to reach the points not cached yet
    reference = list(LocalExecutor(config).results(PART, 1e-3))
    for cached_point, fresh in zip(full[1:-1], reference[1:-1]):
        assert cached_point["spec"] == fresh["spec"]
        assert cached_point["train_loss"] == pytest.approx(fresh["train_loss"])
    third = LocalExecutor(config, cache=RunCache(tmp_path / "runs.json", {"world": "tiny"}))
    assert list(third.results(PART, 1e-3)) == full and third.trained_steps == 0
    assert RunCache(tmp_path / "runs.json", {"world": "other"}).get("anything") is None  # other settings: new cache


def test_a_search_driven_in_process_counts_only_the_steps_it_used(config, tmp_path):
    space = parse_search_space({"strategy": "grid", "references": ["base", "full"],
                                "grid": [{"layer_ranges": [[0.25, 0.5]], "modules": [["up_proj", "down_proj"]]}]})
    tree = SearchTree(space, SelectionPolicy(), Objective("spec_floor"), LearningRates((1e-3, 3e-3, 1e-2)))
    executor = LocalExecutor(config, cache=RunCache(tmp_path / "runs.json", {"world": "tiny"}))
    drive(tree, executor, StopRules(vers_margin=None, prune_after=None))
    full, part = (n for n in tree.nodes.values() if n.part.trains)
    # The tiny model learns nothing in 6 steps: every run ties at the first point and the earliest is kept.
    # The partial node's later runs stop there at once; full SFT's all train to the end (a reference's
    # best gain at the end of the budget sets the floor).
    assert [(r.status, r.train_steps) for r in part.runs] == [("finished", 6), ("stopped", 2), ("stopped", 2)]
    assert [(r.status, r.train_steps) for r in full.runs] == [("finished", 6)] * 3
    assert tree.steps_saved() == 2 * 4
    assert executor.trained_steps == sum(r.train_steps for n in (full, part) for r in n.runs) == 28
