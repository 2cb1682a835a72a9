"""TreeSearcher + PromisingChildScheduler on a real Ray cluster, with table-scored function trials."""

import sys
from collections import Counter
from pathlib import Path

import pytest
import ray.cloudpickle
from ray import tune

import score_table
from cofitune_ray.core.node import ATTENTION_MODULES
from cofitune_ray.tuning.scheduler import PromisingChildScheduler, StopRules
from cofitune_ray.core.space import load_search_space
from cofitune_ray.tuning.searcher import TreeSearcher, latest_saved_tree
from cofitune_ray.core.tree import SearchTree
from score_table import PAPER_PATH_BEAM_1, PAPER_SCORES, UP_DOWN, evaluation_points, key

pytestmark = pytest.mark.ray

# Trial workers cannot import the tests folder: ship these modules with the trainable.
ray.cloudpickle.register_pickle_by_value(score_table)
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
ATTENTION = key(0.25, 0.5, ATTENTION_MODULES)
UP_DOWN_KEY = key(0.25, 0.5, UP_DOWN)


def table_trainable(config, log_dir: str, always_fail=(), fail_once=()):
    """Reports the table's two evaluation points; fails after the first where told to."""
    from cofitune_ray.core.node import ModelPart

    node_key = ModelPart.from_dict(config["part"]).key()
    log = Path(log_dir) / "attempts.log"
    with log.open("a") as f:
        f.write(node_key + "\n")
    attempt = log.read_text().splitlines().count(node_key)
    for point in evaluation_points(ModelPart.from_dict(config["part"]), PAPER_SCORES, num_evals=2):
        tune.report(point)
        if node_key in always_fail or (node_key in fail_once and attempt == 1):
            raise RuntimeError(f"injected failure in {node_key}")


def make_trainable(tmp_path, **failures):
    return tune.with_parameters(table_trainable, log_dir=str(tmp_path), **failures)


def make_tuner(tmp_path, trainable, callbacks=()):
    searcher = TreeSearcher(load_search_space(SPACES / "cofitune.yaml"))
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=PromisingChildScheduler(searcher, StopRules(vers_margin=0.1)),
            num_samples=-1,
            max_concurrent_trials=1,
        ),
        run_config=tune.RunConfig(
            name="search",
            storage_path=str(tmp_path / "storage"),
            failure_config=tune.FailureConfig(max_failures=1),
            callbacks=list(callbacks),
            verbose=0,
        ),
    )


def levels(tree: SearchTree) -> list[list[str]]:
    return [[n.part.key() for n in tree.at_depth(d) if n.status != "not_expanded"] for d in range(tree.depth + 1)]


def attempts(tmp_path) -> Counter:
    return Counter((tmp_path / "attempts.log").read_text().splitlines())


def test_search_visits_the_tree_level_by_level_prunes_and_retries(ray_cluster, tmp_path):
    trainable = make_trainable(tmp_path, always_fail=(ATTENTION,), fail_once=(UP_DOWN_KEY,))
    results = make_tuner(tmp_path, trainable).fit()
    tree = latest_saved_tree(tmp_path / "storage" / "search")

    assert levels(tree) == PAPER_PATH_BEAM_1
    assert tree.end_reason == "search space exhausted"
    assert tree.best().part.key() == key(0.25, 0.5, UP_DOWN, softmask=True)
    status = {n.part.key(): n.status for n in tree.nodes.values()}
    # Scheduler: vers at the first evaluation point is below middle-plus's by more than 0.1.
    assert status[key(0.5, 1)] == status[key(0.5, 0.75)] == "pruned"
    pruned = next(n for n in tree.nodes.values() if n.part.key() == key(0.5, 1))
    assert pruned.stop_reason.startswith("vers 0.2800 is below the best finished node of its level (0.5000)")
    assert status[ATTENTION] == "failed" and not tree.node(next(n.id for n in tree.nodes.values() if n.part.key() == ATTENTION)).children
    assert status[UP_DOWN_KEY] == "finished"
    assert sum(s == "finished" for s in status.values()) == 8
    # One trial per node; the failing ones ran twice (max_failures=1), the pruned ones once.
    assert len(results) == 11
    counts = attempts(tmp_path)
    assert counts[ATTENTION] == counts[UP_DOWN_KEY] == 2
    assert {k: c for k, c in counts.items() if k not in (ATTENTION, UP_DOWN_KEY)} == {k: 1 for level in PAPER_PATH_BEAM_1 for k in level if k not in (ATTENTION, UP_DOWN_KEY)}


class InterruptOnce(tune.Callback):
    """Stops the driver (once: a marker file survives Tuner.restore) after `after` trials ended."""

    def __init__(self, marker: str, after: int):
        self.marker, self.after = marker, after

    def on_step_begin(self, iteration, trials, **info):
        if not Path(self.marker).exists() and sum(t.status == "TERMINATED" for t in trials) >= self.after:
            Path(self.marker).touch()
            raise RuntimeError("driver interrupted")


def test_restore_continues_the_tree_without_rerunning_finished_nodes(ray_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "0")  # save experiment and searcher state every step
    trainable = make_trainable(tmp_path)
    interrupt = InterruptOnce(str(tmp_path / "interrupted"), after=4)
    with pytest.raises(RuntimeError, match="driver interrupted"):
        make_tuner(tmp_path, trainable, [interrupt]).fit()
    experiment = tmp_path / "storage" / "search"
    before = latest_saved_tree(experiment)
    finished_before = {n.part.key() for n in before.nodes.values() if n.status in ("finished", "pruned")}
    assert len(finished_before) >= 4 and not before.finished

    tune.Tuner.restore(str(experiment), trainable).fit()
    after = latest_saved_tree(experiment)

    assert levels(after) == PAPER_PATH_BEAM_1
    assert after.best().part.key() == key(0.25, 0.5, UP_DOWN, softmask=True)
    counts = attempts(tmp_path)
    assert all(counts[k] == 1 for k in finished_before)
    assert set(counts) == {k for level in PAPER_PATH_BEAM_1 for k in level}
    assert sum(counts.values()) <= len(counts) + 1  # at most the trial in flight at the interrupt ran twice
