"""`PromisingChildScheduler` and `TreeSearcher` called the way Tune calls them, on stub trials (no cluster)."""

import random
from pathlib import Path

import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from cofitune_ray.core.drive import drive
from cofitune_ray.core.objective import Objective
from cofitune_ray.core.settings import LearningRates, SelectionPolicy, StopRules
from cofitune_ray.core.space import load_search_space
from cofitune_ray.core.tree import SearchTree
from cofitune_ray.tuning.scheduler import PromisingChildScheduler
from cofitune_ray.tuning.searcher import RunLimiter, TreeSearcher
from score_table import PAPER_SCORES, TableExecutor, key, table_results

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
LRS = LearningRates((3e-5, 1e-4, 3e-4))


class StubController:
    """What the scheduler sees of Tune's controller: the trials, and stop_trial (what it does to a trial's status)."""

    def __init__(self, trials=()):
        self.trials = list(trials)
        self.stopped: list[Trial] = []

    def get_trials(self):
        return self.trials

    def stop_trial(self, trial):
        trial.status = Trial.TERMINATED
        self.stopped.append(trial)


def paper_searcher(objective="spec_floor", rates=LRS, **policy) -> TreeSearcher:
    space = load_search_space(SPACES / "cofitune.yaml")
    return TreeSearcher(SearchTree(space, SelectionPolicy(**policy), Objective(objective), rates))


def stub_trial(searcher: TreeSearcher, trial_id: str) -> Trial:
    config = searcher.suggest(trial_id)
    return Trial("__fake", config=config, trial_id=trial_id, stub=True)


def finish(searcher: TreeSearcher, trial: Trial) -> None:
    run = searcher.run_for_trial(trial.trial_id)
    node = searcher.tree.node_of_run(run.id)
    *points, final = table_results(node.part, run.lr, PAPER_SCORES)
    for point in points:
        searcher.on_trial_result(trial.trial_id, point)
    searcher.on_trial_complete(trial.trial_id, final)


def past_references(searcher: TreeSearcher) -> None:
    for i in range(4):  # the base model and full SFT at three learning rates
        finish(searcher, stub_trial(searcher, f"ref{i}"))
    assert searcher.tree.depth == 1


def result(eval_index: int, spec: float, vers: float, **extra) -> dict:
    return {"eval_index": eval_index, "spec": spec, "vers": vers, "uni": (spec + vers) / 2, "step": 10 * eval_index,
            "total_steps": 40, **extra}


def test_the_searcher_hands_out_each_learning_rate_run_as_a_trial():
    searcher = paper_searcher()
    configs = [searcher.suggest(f"t{i}") for i in range(4)]
    assert [c["run_id"] for c in configs] == ["n0", "n1-lr3e-05", "n1-lr0.0001", "n1-lr0.0003"]
    assert [c["lr"] for c in configs] == [None, 3e-5, 1e-4, 3e-4]
    assert configs[1]["node_id"] == "n1" and configs[1]["part"]["kind"] == "full"
    assert searcher.suggest("t4") is None  # level 1 waits for the references
    for i in range(4):
        searcher.on_trial_complete(f"t{i}", {"final": True})
    assert [n.status for n in searcher.tree.at_depth(0)] == ["failed", "failed"]  # no run reported a point
    assert searcher.suggest("t5")["run_id"] == "n2-lr3e-05"  # level 1 runs all the same
    searcher.tree.end_reason = "stopped by the test"
    assert searcher.suggest("t6") == Searcher.FINISHED


def test_a_stopped_learning_rate_run_and_what_tune_calls_after_the_stop():
    searcher = paper_searcher()
    past_references(searcher)
    scheduler = PromisingChildScheduler(searcher, StopRules(vers_margin=None, prune_after=None))
    low, mid, high = (stub_trial(searcher, f"l1-{i}") for i in range(3))
    tune = StubController([low, mid, high])
    assert scheduler.on_trial_result(tune, low, result(1, 0.5, 0.45)) == TrialScheduler.PAUSE  # mid, high not there
    low.status = Trial.PAUSED
    assert scheduler.on_trial_result(tune, mid, result(1, 0.6, 0.5)) == TrialScheduler.PAUSE  # high not there
    mid.status = Trial.PAUSED
    # high completes the rung: it loses to mid (same projected gain, less Vers), and so does the paused low
    assert scheduler.on_trial_result(tune, high, result(1, 0.6, 0.4)) == TrialScheduler.STOP
    assert tune.stopped == [low]
    run = searcher.run_for_trial(high.trial_id)
    assert run.status == "stopped" and run.stop_reason.startswith("learning rate 0.0003 lost to 0.0001")
    searcher.on_trial_complete(high.trial_id, result(1, 0.6, 0.4))  # what Tune calls after a STOP
    assert run.status == "stopped" and run.steps_saved() == 30
    # Tune restarts the trial of a stopped run when its driver died before saving the stop: nothing new is kept
    assert scheduler.on_trial_result(tune, high, result(2, 0.7, 0.4)) == TrialScheduler.STOP
    searcher.on_trial_result(high.trial_id, result(2, 0.7, 0.4))
    assert [p["eval_index"] for p in run.history] == [1] and run.train_steps == 10
    assert scheduler.debug_string() == "PromisingChildScheduler: 2 run(s) stopped early, 60 steps saved"
    high.status = Trial.TERMINATED
    assert scheduler.choose_trial_to_run(tune) is mid  # kept: resumed


def test_final_and_replayed_results_are_never_judged():
    searcher = paper_searcher()
    past_references(searcher)
    scheduler = PromisingChildScheduler(searcher, StopRules(vers_margin=0.0, prune_after=None))
    low, mid, high = (stub_trial(searcher, f"l1-{i}") for i in range(3))
    tune = StubController([low, mid, high])
    assert scheduler.on_trial_result(tune, low, result(2, 0.1, 0.0, final=True)) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(tune, low, result(2, 0.1, 0.0, replayed=True)) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(tune, low, result(2, 0.1, 0.0)) == TrialScheduler.STOP  # vers rule
    assert searcher.run_for_trial(low.trial_id).status == "pruned"


def test_references_are_only_compared_among_their_learning_rates():
    searcher = paper_searcher()
    scheduler = PromisingChildScheduler(searcher, StopRules(vers_margin=0.0, prune_after=0.1))
    base, full_low, full_mid, full_high = (stub_trial(searcher, f"r{i}") for i in range(4))
    finish(searcher, base)
    assert scheduler.on_trial_result(StubController(), full_low, result(1, 0.0, 0.0)) == TrialScheduler.CONTINUE


def test_choose_trial_to_run_prefers_children_of_the_best_parent():
    searcher = paper_searcher("uni", rates=LearningRates((1e-4,)), beam_width=2)
    for i in range(5):
        finish(searcher, stub_trial(searcher, f"t{i}"))
    # Level 2: children of middle-plus (0.60) and of bottom-plus (0.50); Tune lists them in any order.
    level_2 = [stub_trial(searcher, f"l2-{i}") for i in range(3)]
    tree = searcher.tree
    parents = {t.trial_id: tree.node(tree.node_of_run(searcher.run_for_trial(t.trial_id).id).parent).part.key()
               for t in level_2}
    scheduler = PromisingChildScheduler(searcher)
    stranger = Trial("__fake", config={}, trial_id="stranger", stub=True)
    listed = [stranger, *reversed(level_2)]
    for trial in listed:
        trial.status = Trial.PENDING
    chosen = scheduler.choose_trial_to_run(StubController(listed))
    assert parents[chosen.trial_id] == key(0.25, 0.75)
    for trial in listed:
        trial.status = Trial.RUNNING
    assert scheduler.choose_trial_to_run(StubController(listed)) is None
    level_2[2].status = Trial.PAUSED
    assert scheduler.choose_trial_to_run(StubController(listed)) is level_2[2]


def test_a_run_at_the_rung_is_paused_until_its_node_is_decided_then_resumed_or_stopped():
    searcher = paper_searcher()
    past_references(searcher)
    scheduler = PromisingChildScheduler(searcher, StopRules(vers_margin=None, prune_after=None))
    limiter = RunLimiter(searcher, max_concurrent=1)  # one place: a run holding it at the rung would deadlock
    tune = StubController()

    def start(trial_id):
        trial = Trial("__fake", config=limiter.suggest(trial_id), trial_id=trial_id, stub=True)
        trial.status = Trial.RUNNING
        tune.trials.append(trial)
        return trial

    low = start("l1-0")
    assert limiter.suggest("l1-x") is None  # its place is taken
    assert scheduler.on_trial_result(tune, low, result(1, 0.6, 0.4)) == TrialScheduler.PAUSE
    low.status = Trial.PAUSED
    assert searcher.waits_at_rung(low.trial_id) and scheduler.choose_trial_to_run(tune) is None  # not resumed yet
    mid = start("l1-1")  # the paused run gave its place to its sibling
    assert scheduler.on_trial_result(tune, mid, result(1, 0.6, 0.5)) == TrialScheduler.PAUSE  # high not there
    mid.status = Trial.PAUSED
    assert tune.stopped == [] and scheduler.choose_trial_to_run(tune) is None
    high = start("l1-2")
    # high completes the rung: mid is kept; high and the paused low lost to it
    assert scheduler.on_trial_result(tune, high, result(1, 0.6, 0.45)) == TrialScheduler.STOP
    assert tune.stopped == [low] and searcher.run_for_trial(low.trial_id).status == "stopped"
    limiter.on_trial_complete(low.trial_id)  # what Tune calls for a stopped paused trial
    assert not searcher.waits_at_rung(mid.trial_id)  # decided: mid is kept
    assert scheduler.choose_trial_to_run(tune) is mid
    assert limiter.suggest("l1-y") is None  # the kept run counts again, before it resumes
    runs = searcher.tree.node_of_run(searcher.run_for_trial(mid.trial_id).id).runs
    assert [(r.status, r.train_steps, len(r.history)) for r in runs] == [("stopped", 10, 1), ("running", 10, 1),
                                                                         ("stopped", 10, 1)]


class TuneLike(StubController):
    """Tune's calls to the searcher (through `RunLimiter`) and the scheduler, with the trials reporting in an order
    a seeded random generator picks: a trial restarted after a pause reports its table results from the start."""

    def __init__(self, searcher: TreeSearcher, rules: StopRules, concurrency: int, seed: int):
        super().__init__()
        self.limiter, self.scheduler = RunLimiter(searcher, concurrency), PromisingChildScheduler(searcher, rules)
        self.tree, self.rng, self.results = searcher.tree, random.Random(seed), {}

    def stop_trial(self, trial):
        self.limiter.on_trial_complete(trial.trial_id, result=None if trial.status == Trial.PAUSED else {})
        super().stop_trial(trial)

    def start(self, trial):
        run = self.limiter.searcher.run_for_trial(trial.trial_id)
        trial.status = Trial.RUNNING
        self.results[trial.trial_id] = iter(table_results(self.tree.node_of_run(run.id).part, run.lr, PAPER_SCORES))

    def run(self) -> SearchTree:
        while not self.tree.finished:
            while (config := self.limiter.suggest(f"t{len(self.trials)}")) not in (None, Searcher.FINISHED):
                self.trials.append(Trial("__fake", config=config, trial_id=f"t{len(self.trials)}", stub=True))
            chosen = self.scheduler.choose_trial_to_run(self)
            if chosen is not None:
                self.start(chosen)
                continue
            trial = self.rng.choice([t for t in self.trials if t.status == Trial.RUNNING])
            result = next(self.results[trial.trial_id])
            if result.get("final"):
                self.limiter.on_trial_complete(trial.trial_id, result)
                trial.status = Trial.TERMINATED
                continue
            decision = self.scheduler.on_trial_result(self, trial, result)
            self.limiter.on_trial_result(trial.trial_id, result)
            if decision == TrialScheduler.PAUSE:
                trial.status = Trial.PAUSED
            elif decision == TrialScheduler.STOP:
                self.stop_trial(trial)
        return self.tree


def decisions(tree: SearchTree) -> list:
    return [(n.id, n.status, n.stop_reason, [(r.id, r.status, r.stop_reason, r.train_steps, r.history) for r in n.runs])
            for n in tree.nodes.values()]


@pytest.mark.parametrize("concurrency", [1, 2, 3])
def test_any_order_of_results_on_tune_gives_the_in_process_tree(concurrency):
    """Runs report in random orders and wait at the rung (paused, their places given to the next runs), the uni rule
    prunes some of them at their rung points: the tree is `drive`'s, at concurrency 1, whatever the order."""
    rules = StopRules(vers_margin=0.1, prune_after=None, uni_margin=0.08)
    rates = LearningRates((1e-4, 3e-4))
    expected = decisions(drive(paper_searcher("uni", rates=rates).tree, TableExecutor(PAPER_SCORES), rules))
    assert any(status == "pruned" for _, status, _, _ in expected)
    for seed in range(8):
        assert decisions(TuneLike(paper_searcher("uni", rates=rates), rules, concurrency, seed).run()) == expected
