"""`PromisingChildScheduler`: stops the runs that cannot win, and runs the most promising first.

At every evaluation point a trial reports (not its final result, nor results a restarted trial
replays from a run that had already finished: `replayed: true`), the point goes into the tree and
`core.rules.decide` judges it: the learning-rate comparison at the rung and the stop rules
(`StopRules`); a stop marks the run in the searcher's tree with its reason (saved in tree.json)
and ends the trial. A run that reaches the rung before its node's verdict is known is paused there
(PAUSE: Tune ends its trial, whose training state at the rung is already saved as its Ray Train
checkpoint, and `RunLimiter` gives its place to the next run). Once the verdict is known, the
paused runs are judged again: the losers, and kept runs a stop rule stops at their rung point, are
stopped (`tune_controller.stop_trial`, as Ray's HyperBand does); the other kept runs resume: their
trials start again and continue from the rung, as a retried trial does. The decisions are the ones
`core/drive.py` makes in-process, on the same tree. Pending trials run in the tree's order
(children of the best parent first), then kept runs paused at the rung.

Why pause rather than hold the trial at the rung: a held trial keeps its place, so with
`max_concurrent_trials` 1 its sibling could never start; a paused one costs a trial start when it
resumes (docs/architecture.md has the figures).
"""

from __future__ import annotations

import logging

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from cofitune_ray.core.rules import Stop, decide
from cofitune_ray.core.settings import StopRules
from cofitune_ray.core.tree import STOPPED_EARLY
from cofitune_ray.tuning.searcher import TreeSearcher

logger = logging.getLogger(__name__)


class PromisingChildScheduler(FIFOScheduler):
    """Stops runs by `core.rules.decide` and orders pending trials by the tree.

    It reads and marks the tree of the `TreeSearcher` it is given (the same object passed to
    `TuneConfig(search_alg=...)`), so stop reasons land in the tree the searcher saves.
    """

    def __init__(self, searcher: TreeSearcher, rules: StopRules | None = None):
        super().__init__()
        self.searcher = searcher
        self.rules = rules or StopRules()

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        run = self.searcher.run_for_trial(trial.trial_id)
        if run is None or result.get("final") or result.get("replayed") or "eval_index" not in result:
            return TrialScheduler.CONTINUE
        if run.status in STOPPED_EARLY:  # stopped before the driver died; Tune restarted its trial
            return TrialScheduler.STOP
        tree = self.searcher.tree
        tree.record(run.id, result)
        stop = decide(tree, run.id, self.rules)
        self._judge_paused(tune_controller, trial)  # this point may have completed a node's verdict
        if stop is not None:
            self._stop(run.id, stop)
            return TrialScheduler.STOP
        if tree.waits_at_rung(run.id):
            logger.info("Pausing run %s at the rung until every run of its node is there", run.id)
            return TrialScheduler.PAUSE
        return TrialScheduler.CONTINUE

    def choose_trial_to_run(self, tune_controller) -> Trial | None:
        self._judge_paused(tune_controller)  # a sibling's end or the reference's may have decided a rung
        trials = tune_controller.get_trials()
        pending = [t for t in trials if t.status == Trial.PENDING]
        if pending:
            return min(pending, key=self._run_priority)
        resumable = [t for t in trials if t.status == Trial.PAUSED and not self.searcher.waits_at_rung(t.trial_id)]
        return min(resumable, key=self._run_priority) if resumable else None

    def _judge_paused(self, tune_controller, current: Trial | None = None) -> None:
        """Stop the trials paused at the rung (or pausing) whose runs `decide` stops now that their node's verdict
        may be known (a run still waiting is not judged)."""
        for trial in tune_controller.get_trials():
            if trial is current or not (trial.status == Trial.PAUSED or trial.is_saving):
                continue
            run = self.searcher.run_for_trial(trial.trial_id)
            stop = decide(self.searcher.tree, run.id, self.rules) if run is not None else None
            if stop is not None:
                self._stop(run.id, stop)
                tune_controller.stop_trial(trial)

    def _stop(self, run_id: str, stop: Stop) -> None:
        tree = self.searcher.tree
        logger.info("Stopping run %s (%s): %s", run_id, tree.node_of_run(run_id).part.describe(), stop.reason)
        tree.stop(run_id, stop.status, stop.reason)

    def _run_priority(self, trial: Trial) -> tuple:
        run = self.searcher.run_for_trial(trial.trial_id)
        if run is None:
            return ((1,), 10**9, 0)
        node = self.searcher.tree.node_of_run(run.id)
        return (*self.searcher.tree.run_priority(node), node.runs.index(run))

    def debug_string(self) -> str:
        runs = [r for n in self.searcher.tree.nodes.values() for r in n.runs]
        stopped = sum(r.status in STOPPED_EARLY for r in runs)
        return (f"PromisingChildScheduler: {stopped} run(s) stopped early, "
                f"{self.searcher.tree.steps_saved()} steps saved")
