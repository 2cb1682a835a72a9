"""`PromisingChildScheduler`: stops trials that can no longer become promising.

Stop rules, checked at each evaluation point of a trained (non-reference) node, once the trial has
reported at least `min_evals` evaluation points, never on a trial's final result nor on results a
restarted trial replays from a node that had already finished (`replayed: true`):

  vers rule (`vers_margin`): the node's Vers is below the Vers of the best finished node of its
      level by more than `vers_margin`, while its Spec is not higher than that node's. Training
      mostly lowers Vers further, so it cannot overtake that node.
  uni rule (`uni_margin`): the node's Uni is below the incumbent's (the best finished trained node
      of the whole search) by more than `uni_margin`.

A rule set to None is off. A stopped node is marked pruned in the searcher's tree with the rule's
reason (`TreeNode.stop_reason`, saved in tree.json) and is never expanded. Pending trials run
children of the best parent first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from cofitune_ray.tuning.searcher import TreeSearcher
from cofitune_ray.core.tree import Score

logger = logging.getLogger(__name__)


@dataclass
class StopRules:
    """The scheduler's settings (the `search:` config's vers_margin, uni_margin, min_evals)."""

    vers_margin: float | None = 0.1
    uni_margin: float | None = None
    min_evals: int = 1

    def __post_init__(self) -> None:
        for name in ("vers_margin", "uni_margin"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} {value} must not be negative (None turns the rule off)")
        if self.min_evals < 1:
            raise ValueError(f"min_evals {self.min_evals} must be at least 1")


def vers_stop_reason(current: Score, best_of_level: Score | None, vers_margin: float | None) -> str | None:
    """Why the vers rule stops a node scoring `current`, or None if it does not."""
    if vers_margin is None or best_of_level is None:
        return None
    if current.vers < best_of_level.vers - vers_margin and current.spec <= best_of_level.spec:
        return (
            f"vers {current.vers:.4f} is below the best finished node of its level ({best_of_level.vers:.4f}) "
            f"by more than vers_margin {vers_margin:g}, and spec {current.spec:.4f} is not higher than its {best_of_level.spec:.4f}"
        )
    return None


def uni_stop_reason(current: Score, incumbent: Score | None, uni_margin: float | None) -> str | None:
    """Why the uni rule stops a node scoring `current`, or None if it does not."""
    if uni_margin is None or incumbent is None:
        return None
    if current.uni < incumbent.uni - uni_margin:
        return f"uni {current.uni:.4f} is below the incumbent's {incumbent.uni:.4f} by more than uni_margin {uni_margin:g}"
    return None


def stop_reason(current: Score, evals_done: int, best_of_level: Score | None, incumbent: Score | None, rules: StopRules) -> str | None:
    """The first rule that stops a node at this evaluation point, or None to let it continue."""
    if evals_done < rules.min_evals:
        return None
    return vers_stop_reason(current, best_of_level, rules.vers_margin) or uni_stop_reason(current, incumbent, rules.uni_margin)


class PromisingChildScheduler(FIFOScheduler):
    """Runs children of the best parents first and prunes trials by `StopRules`.

    It reads and marks the tree of the `TreeSearcher` it is given (the same object passed to
    `TuneConfig(search_alg=...)`), so stop reasons land in the tree the searcher saves.
    """

    def __init__(self, searcher: TreeSearcher, rules: StopRules | None = None):
        super().__init__()
        self.searcher = searcher
        self.rules = rules or StopRules()

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        node = self.searcher.node_for_trial(trial.trial_id)
        if (node is None or node.is_reference or node.status != "running" or result.get("final")
                or result.get("replayed") or "eval_index" not in result):
            return TrialScheduler.CONTINUE
        tree = self.searcher.tree
        same_level = [n for n in tree.ranking() if n.depth == node.depth]
        incumbent = tree.best()
        reason = stop_reason(
            Score(result["spec"], result["vers"], result["uni"]),
            int(result["eval_index"]),
            same_level[0].score() if same_level else None,
            incumbent.score() if incumbent else None,
            self.rules,
        )
        if reason is None:
            return TrialScheduler.CONTINUE
        logger.info("Pruning node %s (%s): %s", node.id, node.part.describe(), reason)
        tree.prune(node.id, reason)
        return TrialScheduler.STOP

    def choose_trial_to_run(self, tune_controller) -> Trial | None:
        for status in (Trial.PENDING, Trial.PAUSED):
            waiting = [t for t in tune_controller.get_trials() if t.status == status]
            if waiting:
                return min(waiting, key=self._run_priority)
        return None

    def _run_priority(self, trial: Trial) -> tuple[float, int]:
        node = self.searcher.node_for_trial(trial.trial_id)
        return self.searcher.tree.run_priority(node) if node else (0.0, 10**9)

    def debug_string(self) -> str:
        pruned = sum(n.status == "pruned" for n in self.searcher.tree.nodes.values())
        return f"PromisingChildScheduler: {pruned} node(s) pruned"
