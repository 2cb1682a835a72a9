"""TreeSearcher + PromisingChildScheduler on a real Ray cluster, with table-scored function trials.

The same tables driven in-process (`core.drive.drive`, what the benchmark uses) must give the same tree.
"""

import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import ray.cloudpickle
from ray import tune

import score_table
from cofitune_ray.core.drive import drive
from cofitune_ray.core.node import ATTENTION_MODULES, ModelPart
from cofitune_ray.core.objective import Objective
from cofitune_ray.core.settings import LearningRates, SelectionPolicy, StopRules
from cofitune_ray.core.space import load_search_space
from cofitune_ray.core.tree import SearchTree
from cofitune_ray.tuning.scheduler import PromisingChildScheduler
from cofitune_ray.tuning.searcher import RunLimiter, TreeSearcher, latest_saved_tree
from score_table import PAPER_PATH_BEAM_1, PAPER_SCORES, UP_DOWN, TableExecutor, key, table_results

pytestmark = pytest.mark.ray

# Trial workers cannot import the tests folder: ship these modules with the trainable.
ray.cloudpickle.register_pickle_by_value(score_table)
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
ATTENTION = key(0.25, 0.5, ATTENTION_MODULES)
UP_DOWN_KEY = key(0.25, 0.5, UP_DOWN)
RATES = LearningRates((1e-4, 3e-4))
RULES = StopRules(vers_margin=0.1, prune_after=None, uni_margin=0.08)


def paper_tree() -> SearchTree:
    return SearchTree(load_search_space(SPACES / "cofitune.yaml"), SelectionPolicy(), Objective("uni"), RATES)


def table_trainable(config, log_dir: str, always_fail=(), fail_once=(), delay: dict | None = None):
    """Reports the table's results for the run, logging each report; where told to, fails before its first point
    (always), fails once before its final result, or waits `delay[run_id]` seconds before its first point."""
    part = ModelPart.from_dict(config["part"])
    log = Path(log_dir) / "attempts.log"
    with log.open("a") as f:
        f.write(config["run_id"] + "\n")
    if part.key() in always_fail:
        raise RuntimeError(f"injected failure in {part.key()}")
    time.sleep((delay or {}).get(config["run_id"], 0.0))
    failed_once = Path(log_dir) / f"failed-{config['run_id']}"
    for result in table_results(part, config["lr"], PAPER_SCORES):
        if result.get("final") and part.key() in fail_once and not failed_once.exists():
            failed_once.touch()
            raise RuntimeError(f"injected failure in {part.key()}")
        with (Path(log_dir) / "reports.log").open("a") as f:
            f.write(f"{config['run_id']} {result.get('eval_index', 'final')} {time.time()}\n")
        tune.report(result)


def make_tuner(tmp_path, callbacks=(), concurrency=1, **options):
    """A Tuner as the CLI's (`search.make_tuner`), over the table trainable, but with `reuse_actors`.

    A trial whose function has returned or stopped at a report hands its process to the next trial: that saves a
    process start per trial (these four tests: 150 s -> 25 s) and gives the searcher and the scheduler the same
    events. The CLI cannot reuse them (its trials run inside a Ray Train run, which Tune cannot reset); its own way,
    a new process for every trial and every resumed one, is what the end-to-end tests' smoke search runs.
    """
    searcher = TreeSearcher(paper_tree())
    return tune.Tuner(
        tune.with_parameters(table_trainable, log_dir=str(tmp_path), **options),
        tune_config=tune.TuneConfig(search_alg=RunLimiter(searcher, concurrency),  # max_concurrent_trials
                                    scheduler=PromisingChildScheduler(searcher, RULES), num_samples=-1,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name="search", storage_path=str(tmp_path / "storage"),
                                  failure_config=tune.FailureConfig(max_failures=1), callbacks=list(callbacks),
                                  verbose=0),
    )


def levels(tree: SearchTree) -> list[list[str]]:
    return [[n.part.key() for n in tree.at_depth(d) if n.status != "not_expanded"] for d in range(tree.depth + 1)]


def view(tree: SearchTree) -> dict:
    """Everything the search decided, without trial ids and timings."""
    nodes = [(n.part.key(), n.status, n.stop_reason, n.promising,
              [(r.id, r.status, r.stop_reason, r.history, r.train_steps) for r in n.runs]) for n in tree.nodes.values()]
    return {"nodes": nodes, "best": tree.best().id, "end": tree.end_reason, "saved": tree.steps_saved()}


def attempts(tmp_path) -> Counter:
    return Counter((tmp_path / "attempts.log").read_text().splitlines())


def report_times(tmp_path) -> dict[tuple[str, str], float]:
    """(run id, eval index or "final") -> when the trainable first reported it."""
    times: dict[tuple[str, str], float] = {}
    for run, index, at in (line.split() for line in (tmp_path / "reports.log").read_text().splitlines()):
        times.setdefault((run, index), float(at))
    return times


def test_learning_rate_halving_and_stop_rules_on_ray_give_the_in_process_tree(ray_cluster, tmp_path):
    results = make_tuner(tmp_path).fit()
    tree = latest_saved_tree(tmp_path / "storage" / "search")
    in_process = drive(paper_tree(), TableExecutor(PAPER_SCORES), RULES)

    assert view(tree) == view(in_process)
    assert levels(tree) == PAPER_PATH_BEAM_1
    assert tree.best().part.key() == key(0.25, 0.5, UP_DOWN, softmask=True)
    # 3e-4 runs after 1e-4 and loses at the first evaluation point (less Uni) on every trained node but full SFT,
    # whose runs all train to the end; the uni rule prunes four nodes at their first point (Uni more than 0.08
    # below the best node of the levels above).
    runs = [r for n in tree.nodes.values() if n.part.trains and not n.is_reference for r in n.runs]
    assert len(results) == 1 + 2 * 10 == len(runs) + 2 + 1
    assert {r.status for r in runs if r.lr == 3e-4} == {"stopped"}
    assert {r.status for r in tree.reference_node("full").runs} == {"finished"}
    assert {n.part.key() for n in tree.nodes.values() if n.status == "pruned"} == {
        key(0, 0.5), key(0.5, 1), key(0.5, 0.75), key(0.25, 0.5, ATTENTION_MODULES)}
    assert all(r.train_steps == 10 and len(r.history) == 1 for r in runs if r.status in ("stopped", "pruned"))
    assert tree.steps_saved() == 13 * 10
    # With one place, each kept 1e-4 run was paused at the rung for its sibling, then resumed: two starts.
    counts = attempts(tmp_path)
    assert sorted(counts[r.id] for r in runs if r.status == "finished") == [2] * 5


def test_a_run_waits_at_the_rung_for_a_delayed_sibling_and_the_tree_is_the_same(ray_cluster, tmp_path):
    """Two places; the 3e-4 run of middle-plus starts 4 s late. Its sibling reaches the rung first and waits there
    (paused, not training) until the late run's rung point decides; the tree is the in-process one."""
    early, late = "n3-lr0.0001", "n3-lr0.0003"  # middle-plus (0.25, 0.75], the second node of level 1
    make_tuner(tmp_path, concurrency=2, delay={late: 4.0}).fit()
    tree = latest_saved_tree(tmp_path / "storage" / "search")
    assert tree.node_of_run(late).part.key() == key(0.25, 0.75)
    for concurrency in (1, 2):
        assert view(tree) == view(drive(paper_tree(), TableExecutor(PAPER_SCORES), RULES, concurrency=concurrency))
    times = report_times(tmp_path)
    assert times[(early, "1")] < times[(late, "1")] < times[(early, "2")]  # no point past the rung before the verdict
    assert attempts(tmp_path)[early] == 2 and tree.run(early).status == "finished"
    assert tree.run(late).status == "stopped" and tree.run(late).train_steps == 10


def test_failed_runs_are_retried_then_recorded(ray_cluster, tmp_path):
    make_tuner(tmp_path, always_fail=(ATTENTION,), fail_once=(UP_DOWN_KEY,)).fit()
    tree = latest_saved_tree(tmp_path / "storage" / "search")
    status = {n.part.key(): n.status for n in tree.nodes.values()}
    assert status[ATTENTION] == "failed" and status[UP_DOWN_KEY] == "finished"
    attention = next(n for n in tree.nodes.values() if n.part.key() == ATTENTION)
    assert {r.status for r in attention.runs} == {"failed"} and not attention.children
    counts = attempts(tmp_path)
    up_down = next(n for n in tree.nodes.values() if n.part.key() == UP_DOWN_KEY)
    assert [counts[r.id] for r in attention.runs] == [2, 2]  # max_failures=1: each run tried twice
    # up+down's 1e-4 run: paused at the rung, resumed, failed before its end, retried
    assert counts[up_down.runs[0].id] == 3 and up_down.runs[0].status == "finished"
    assert tree.best().part.key() == key(0.25, 0.5, UP_DOWN, softmask=True)


class InterruptOnce(tune.Callback):
    """Stops the driver (once: a marker file survives Tuner.restore) after `after` trials ended."""

    def __init__(self, marker: str, after: int):
        self.marker, self.after = marker, after

    def on_step_begin(self, iteration, trials, **info):
        if not Path(self.marker).exists() and sum(t.status == "TERMINATED" for t in trials) >= self.after:
            Path(self.marker).touch()
            raise RuntimeError("driver interrupted")


def test_restore_continues_the_tree_without_rerunning_finished_runs(ray_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "0")  # save experiment and searcher state every step
    with pytest.raises(RuntimeError, match="driver interrupted"):
        make_tuner(tmp_path, [InterruptOnce(str(tmp_path / "interrupted"), after=6)]).fit()
    experiment = tmp_path / "storage" / "search"
    before = latest_saved_tree(experiment)
    ended_before = {r.id for n in before.nodes.values() for r in n.runs if r.ended}
    assert len(ended_before) >= 4 and not before.finished  # the state is saved each step, the last end may follow

    trainable = tune.with_parameters(table_trainable, log_dir=str(tmp_path))
    started_before = attempts(tmp_path)
    tune.Tuner.restore(str(experiment), trainable).fit()
    after = latest_saved_tree(experiment)

    assert view(after) == view(drive(paper_tree(), TableExecutor(PAPER_SCORES), RULES))
    counts = attempts(tmp_path)
    # No finished run started again. Tune may restart the trial of a run stopped while paused at the rung (its
    # experiment state can still say PAUSED); the scheduler stops it at its first report, so it adds nothing
    # (the tree above is the in-process one). The CLI's trial does not even train it (stopped.json).
    restarted = {r for r in ended_before if counts[r] != started_before[r]}
    assert all(after.run(r).status in ("stopped", "pruned") and counts[r] == started_before[r] + 1 for r in restarted)
