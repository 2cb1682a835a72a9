"""When a run is stopped early: the learning-rate comparison and the stop rules (`StopRules`).

Checked at every evaluation point a run reports (never on its final result):

  learning rate (successive halving, trained nodes): the runs of a node are compared at their first
      evaluation point (the rung, core/tree.py; under spec_floor on their gain projected to the end
      of the run, `Objective.rung_value`) once every run of the node is there and the reference is
      final (`SearchTree.rung_decided`): all but the best `keep` are stopped there. Until then a run
      at the rung waits (`SearchTree.waits_at_rung`), unjudged by the rules below; the drivers then
      `decide` on it again: the losers are stopped, the kept runs judged by the rules and, if not
      stopped, train on. A run whose rung point is its last is not stopped by the comparison (it has
      nothing left to train; it is simply not kept). Full SFT's runs are never stopped by it: its
      best gain at the end of the budget is the objective's yardstick.
  vers rule (`vers_margin`, trained nodes): the run's Vers is more than `vers_margin` below the
      incumbent's (the best node of the levels above; under spec_floor the best qualifying one, full
      SFT included) while its Spec is not higher: training mostly lowers Vers further, so it cannot
      overtake the incumbent.
  floor rule (`prune_after`, spec_floor only, trained nodes): from that fraction of its steps on,
      a run none of whose points qualifies is stopped when its best gain so far, projected
      linearly to the end of its steps, stays below the floor.
  uni rule (`uni_margin`, uni only): the run's Uni is more than `uni_margin` below the incumbent's.

Every decision depends only on the run's own points, its node's rung points and levels that have
ended, never on the order in which runs happened to report: the same results give the same tree.

The vers and uni rules wait for `min_evals` evaluation points. A run stopped by the learning-rate
comparison ends `stopped`; one stopped by a rule ends `pruned` (and its node is pruned when that run
was its best). Pure Python: no Ray, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from cofitune_ray.core.objective import Score
from cofitune_ray.core.settings import StopRules
from cofitune_ray.core.tree import SearchTree, Status


@dataclass(frozen=True)
class Stop:
    """A decision to stop a run: `status` is "stopped" (learning rate) or "pruned" (a stop rule)."""

    status: str
    reason: str


def decide(tree: SearchTree, run_id: str, rules: StopRules) -> Stop | None:
    """Whether the run should stop at the last evaluation point it reported.

    The drivers ask it at every point, and again for every run waiting at the rung after each event (a verdict
    that has become known stops the losers, and lets the rules judge the kept runs' rung points).
    """
    node, run = tree.node_of_run(run_id), tree.run(run_id)
    if run.status != Status.RUNNING or not run.history:
        return None
    reason = learning_rate_reason(tree, run_id)
    if reason:
        return Stop(Status.STOPPED, reason)
    if node.is_reference or tree.waits_at_rung(run_id):  # the rules judge a waiting run once it is kept
        return None
    reason = rule_reason(tree, run_id, rules)
    return Stop(Status.PRUNED, reason) if reason else None


def learning_rate_reason(tree: SearchTree, run_id: str) -> str | None:
    """Why the learning-rate comparison stops this run, or None."""
    node, run = tree.node_of_run(run_id), tree.run(run_id)
    if (not tree.compared_at_rung(node) or run.rung_point() is None or run.rung_done() >= 1
            or not tree.rung_decided(node)):
        return None
    kept = tree.kept_runs(node)
    if run in kept:
        return None
    winner = kept[0]
    return (f"learning rate {run.lr:g} lost to {winner.lr:g} at the first evaluation point "
            f"({_explain_rung(tree, run)} against {_explain_rung(tree, winner)})")


def rule_reason(tree: SearchTree, run_id: str, rules: StopRules) -> str | None:
    """Why a stop rule stops this run of a trained node, or None."""
    run = tree.run(run_id)
    current = tree.point_score(run.history[-1])
    objective = tree.objective
    incumbent = tree.incumbent(tree.node_of_run(run_id).depth)
    if len(run.history) >= rules.min_evals and incumbent is not None:
        best = tree.score(incumbent)
        if rules.vers_margin is not None and current.vers < best.vers - rules.vers_margin and current.spec <= best.spec:
            return (f"vers {current.vers:.3f} is more than vers_margin {rules.vers_margin:g} below the incumbent "
                    f"{incumbent.id}'s {best.vers:.3f}, and spec {current.spec:.3f} is not higher than its "
                    f"{best.spec:.3f}")
        if objective.name == "uni" and rules.uni_margin is not None and current.uni < best.uni - rules.uni_margin:
            return (f"uni {current.uni:.3f} is more than uni_margin {rules.uni_margin:g} below the incumbent "
                    f"{incumbent.id}'s {best.uni:.3f}")
    return _floor_reason(tree, run, rules)


def _floor_reason(tree: SearchTree, run, rules: StopRules) -> str | None:
    objective, reference = tree.objective, tree.reference()
    floor = objective.floor_gain(reference)
    if objective.name != "spec_floor" or rules.prune_after is None or floor is None or not run.total_steps:
        return None
    if not tree.reference_final():
        return None
    scores = [tree.point_score(p) for p in run.history]
    if any(objective.qualifies(s, reference) for s in scores):
        return None
    done = run.history[-1]["step"] / run.total_steps
    if done < rules.prune_after or done >= 1:
        return None
    gain = max(objective.gain(s, reference) for s in scores)
    projected = objective.projected_gain(gain, reference, done)
    if projected >= floor - 1e-12:
        return None
    return (f"cannot reach the speciality floor: best gain {gain:.3f} after {done:.0%} of its steps "
            f"projects to {projected:.3f}, below the floor {floor:.3f}")


def _explain_rung(tree: SearchTree, run) -> str:
    point = run.rung_point()
    score, reference = Score(point["spec"], point["vers"], point["uni"]), tree.reference()
    text = tree.objective.explain(score, reference)
    done = run.rung_done()
    floor = tree.objective.floor_gain(reference)
    if tree.objective.name == "uni" or floor is None or done >= 1:
        return text
    projected = tree.objective.projected_gain(tree.objective.gain(score, reference), reference, done)
    return f"{text}; projected to the end: {projected / reference.full_gain:.0%}"
