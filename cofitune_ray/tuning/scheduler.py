"""`PromisingChildScheduler`: stops the runs that cannot win, and runs the most promising first.

At every evaluation point a trial reports (not its final result, nor results a restarted trial
replays from a run that had already finished: `replayed: true`), the point goes into the tree and
`core.rules.decide` judges it: the learning-rate comparison at the rung and the stop rules
(`StopRules`); a stop marks the run in the searcher's tree with its reason (saved in tree.json)
and ends the trial. The decisions are the ones `core/drive.py` makes in-process, on the same tree.
Pending trials run in the tree's order: children of the best parent first.
"""

from __future__ import annotations

import logging

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from cofitune_ray.core.rules import decide
from cofitune_ray.core.settings import StopRules
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
        tree = self.searcher.tree
        tree.record(run.id, result)
        stop = decide(tree, run.id, self.rules)
        if stop is None:
            return TrialScheduler.CONTINUE
        logger.info("Stopping run %s (%s): %s", run.id, tree.node_of_run(run.id).part.describe(), stop.reason)
        tree.stop(run.id, stop.status, stop.reason)
        return TrialScheduler.STOP

    def choose_trial_to_run(self, tune_controller) -> Trial | None:
        for status in (Trial.PENDING, Trial.PAUSED):
            waiting = [t for t in tune_controller.get_trials() if t.status == status]
            if waiting:
                return min(waiting, key=self._run_priority)
        return None

    def _run_priority(self, trial: Trial) -> tuple:
        run = self.searcher.run_for_trial(trial.trial_id)
        if run is None:
            return ((1,), 10**9, 0)
        node = self.searcher.tree.node_of_run(run.id)
        return (*self.searcher.tree.run_priority(node), node.runs.index(run))

    def debug_string(self) -> str:
        runs = [r for n in self.searcher.tree.nodes.values() for r in n.runs]
        stopped = sum(r.status in ("stopped", "pruned") for r in runs)
        return (f"PromisingChildScheduler: {stopped} run(s) stopped early, "
                f"{self.searcher.tree.steps_saved()} steps saved")
