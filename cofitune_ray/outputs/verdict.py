"""The search's answer in words (`verdict`): which model to use and why, against the base model and full SFT.

Printed in the summary, written in best_node.yaml and at the top of the report.
"""

from __future__ import annotations

from cofitune_ray.core.objective import Score
from cofitune_ray.core.tree import SearchTree, Status
from cofitune_ray.outputs.document import fmt_count, fmt_percent, fmt_score


def reference_score(tree: SearchTree, kind: str) -> Score | None:
    """The score of an ended reference of `kind`, or None when it is missing or has no score."""
    node = tree.reference_node(kind)
    return tree.score(node) if node is not None and node.status in (Status.FINISHED, Status.PRUNED) else None


def _missing_reference(tree: SearchTree, kind: str, name: str) -> str | None:
    """Why the `kind` reference cannot be compared with, or None when it can."""
    node = tree.reference_node(kind)
    if node is None:
        return f"the search space has no {name} reference"
    if reference_score(tree, kind) is not None:
        return None
    reason = f" ({node.stop_reason})" if node.stop_reason else ""
    return f"the {name} reference is {node.status}{reason}"


def verdict(tree: SearchTree) -> str:
    """The search's answer in words: which model to use and why, against the base model and full SFT."""
    winner = tree.best()
    if winner is None:
        return "No node has ended with a score, so there is no answer yet."
    reference, objective = tree.reference(), tree.objective
    best = tree.best_point(winner, reference)
    base, full = reference_score(tree, "base"), reference_score(tree, "full")
    full_node = tree.reference_node("full")
    at_lr = f" at lr {best.run.lr:.3g}" if best.run.lr is not None else ""
    if winner.part.kind == "base":
        sentences = ["The answer is the base model: no trained node gained speciality on the speciality set."]
    elif winner.part.kind == "full":
        trained = tree.ranking(include_references=False)
        closest = (f" The closest trained part, {trained[0].id} {trained[0].part.describe()}: "
                   f"{objective.explain(tree.score(trained[0]), reference)}.") if trained else ""
        rule = ("reached the speciality floor with more versatility" if objective.name == "spec_floor"
                else "scored a higher Uni")
        sentences = [f"The answer is full SFT{at_lr} ({objective.explain(best.score, reference)}): "
                     f"no trained part {rule}.{closest}"]
    else:
        sentences = [f"The answer is {winner.id} {winner.part.describe()}{at_lr}: "
                     f"{objective.explain(best.score, reference)}."]
        claim = []
        if full:
            claim.append(f"Vers {fmt_score(best.score.vers)} against full SFT's {fmt_score(full.vers)} "
                         f"({best.score.vers - full.vers:+.3f})")
        if base:
            claim.append(f"{fmt_percent(best.score.vers, base.vers)} of the base model's versatility")
        params = f"training {fmt_count(winner.trained_params)} parameters"
        if full_node is not None and winner.trained_params is not None and full_node.trained_params:
            params += f" ({fmt_percent(winner.trained_params, full_node.trained_params)} of full SFT's)"
        sentences.append("It keeps " + ", ".join(claim + [params]) + "." if claim else params.capitalize() + ".")
    missing = [m for m in (_missing_reference(tree, "base", "base model"), _missing_reference(tree, "full", "full SFT"))
               if m]
    if missing:
        sentences.append("Not compared: " + "; ".join(missing) + ".")
    return " ".join(sentences)
