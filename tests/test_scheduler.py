"""PromisingChildScheduler: the pure stop rules on numbers, and the scheduler on stub trials."""

from pathlib import Path

import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from cofitune_ray.tuning.scheduler import PromisingChildScheduler, StopRules, stop_reason, uni_stop_reason, vers_stop_reason
from cofitune_ray.core.space import load_search_space
from cofitune_ray.tuning.searcher import TreeSearcher
from cofitune_ray.core.tree import Score, SelectionPolicy
from score_table import PAPER_SCORES, evaluation_points, key

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
BEST = Score(spec=0.70, vers=0.60, uni=0.65)


def test_vers_rule():
    assert vers_stop_reason(Score(0.70, 0.45, 0.575), BEST, 0.1).startswith("vers 0.4500 is below")
    assert vers_stop_reason(Score(0.75, 0.45, 0.60), BEST, 0.1) is None  # higher spec: may still win
    assert vers_stop_reason(Score(0.70, 0.55, 0.625), BEST, 0.1) is None  # within the margin
    assert vers_stop_reason(Score(0.70, 0.45, 0.575), BEST, None) is None  # rule off
    assert vers_stop_reason(Score(0.70, 0.45, 0.575), None, 0.1) is None  # nothing finished yet


def test_uni_rule():
    assert uni_stop_reason(Score(0.5, 0.5, 0.50), BEST, 0.1) == "uni 0.5000 is below the incumbent's 0.6500 by more than uni_margin 0.1"
    assert uni_stop_reason(Score(0.5, 0.6, 0.56), BEST, 0.1) is None
    assert uni_stop_reason(Score(0.5, 0.5, 0.50), BEST, None) is None


def test_min_evals_delays_every_rule():
    rules = StopRules(vers_margin=0.1, uni_margin=0.0, min_evals=2)
    low = Score(0.1, 0.1, 0.1)
    assert stop_reason(low, 1, BEST, BEST, rules) is None
    assert stop_reason(low, 2, BEST, BEST, rules).startswith("vers")
    assert stop_reason(low, 2, None, BEST, rules).startswith("uni")


@pytest.mark.parametrize("bad", [{"vers_margin": -0.1}, {"uni_margin": -1.0}, {"min_evals": 0}])
def test_rules_are_validated(bad):
    with pytest.raises(ValueError):
        StopRules(**bad)


class StubController:
    """What the scheduler sees of Tune's controller: the trials."""

    def __init__(self, trials):
        self.trials = trials

    def get_trials(self):
        return self.trials


def stub_trial(searcher: TreeSearcher, trial_id: str) -> Trial:
    config = searcher.suggest(trial_id)
    return Trial("__fake", config=config, trial_id=trial_id, stub=True)


def finish(searcher: TreeSearcher, trial: Trial) -> None:
    node = searcher.node_for_trial(trial.trial_id)
    for point in evaluation_points(node.part, PAPER_SCORES):
        searcher.on_trial_result(trial.trial_id, point)
    searcher.on_trial_complete(trial.trial_id, point)


def at_level_1(rules: StopRules):
    """A searcher past the references, its scheduler, and the three level-1 stub trials."""
    searcher = TreeSearcher(load_search_space(SPACES / "cofitune.yaml"))
    for i in range(2):
        finish(searcher, stub_trial(searcher, f"ref{i}"))
    trials = {searcher.node_for_trial(t.trial_id).part.key(): t for t in (stub_trial(searcher, f"l1-{i}") for i in range(3))}
    return searcher, PromisingChildScheduler(searcher, rules), trials


def result(eval_index: int, spec: float, vers: float, **extra) -> dict:
    return {"eval_index": eval_index, "spec": spec, "vers": vers, "uni": (spec + vers) / 2, **extra}


def test_vers_rule_prunes_a_stub_trial_and_the_tree_records_why():
    searcher, scheduler, trials = at_level_1(StopRules(vers_margin=0.05))
    middle, top = trials[key(0.25, 0.75)], trials[key(0.5, 1)]
    finish(searcher, middle)  # best finished of level 1: spec 0.70, vers 0.50
    assert scheduler.on_trial_result(None, top, result(1, 0.72, 0.30)) == TrialScheduler.CONTINUE  # higher spec
    assert scheduler.on_trial_result(None, top, result(2, 0.50, 0.30)) == TrialScheduler.STOP
    node = searcher.node_for_trial(top.trial_id)
    assert node.status == "pruned" and node.stop_reason.startswith("vers 0.3000 is below the best finished node of its level (0.5000)")
    searcher.on_trial_complete(top.trial_id, result(2, 0.50, 0.30))  # what Tune calls after a STOP
    assert node.status == "pruned" and [p["eval_index"] for p in node.history] == [2]
    assert scheduler.debug_string() == "PromisingChildScheduler: 1 node(s) pruned"


def test_uni_rule_waits_for_min_evals_and_never_stops_a_final_or_replayed_result():
    searcher, scheduler, trials = at_level_1(StopRules(vers_margin=None, uni_margin=0.05, min_evals=2))
    bottom, top = trials[key(0, 0.5)], trials[key(0.25, 0.75)]
    finish(searcher, top)  # incumbent uni 0.60
    assert scheduler.on_trial_result(None, bottom, result(1, 0.3, 0.3)) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, bottom, result(2, 0.3, 0.3, final=True)) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, bottom, result(2, 0.3, 0.3, replayed=True)) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, bottom, result(2, 0.3, 0.3)) == TrialScheduler.STOP
    assert searcher.node_for_trial(bottom.trial_id).stop_reason.startswith("uni 0.3000 is below the incumbent's 0.6000")


def test_references_are_never_stopped():
    searcher = TreeSearcher(load_search_space(SPACES / "cofitune.yaml"))
    scheduler = PromisingChildScheduler(searcher, StopRules(vers_margin=0.0, uni_margin=0.0))
    base, full = stub_trial(searcher, "base"), stub_trial(searcher, "full")
    finish(searcher, base)
    assert scheduler.on_trial_result(None, full, result(1, 0.0, 0.0)) == TrialScheduler.CONTINUE


def test_choose_trial_to_run_prefers_children_of_the_best_parent():
    searcher = TreeSearcher(load_search_space(SPACES / "cofitune.yaml"), SelectionPolicy(beam_width=2))
    for i in range(5):
        finish(searcher, stub_trial(searcher, f"t{i}"))
    # Level 2: children of middle-plus (0.60) and of bottom-plus (0.50); Tune lists them in any order.
    level_2 = [stub_trial(searcher, f"l2-{i}") for i in range(3)]
    parents = {t.trial_id: searcher.tree.node(searcher.node_for_trial(t.trial_id).parent).part.key() for t in level_2}
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
