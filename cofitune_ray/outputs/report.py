"""The end-of-search report: report.md, report.html, pareto.png and curves.png in the run directory.

Everything is read from a `SearchTree` (the same state as the run's `tree.json`). The report is
built once as a list of blocks (`outputs/document.py`) and rendered twice, to Markdown and to HTML; the
verdict comes from `outputs/verdict.py`, the plots from `outputs/plots.py`.
"""

from __future__ import annotations

import math
from pathlib import Path

from cofitune_ray.core.layout import REPORT_FILES
from cofitune_ray.core.objective import Score
from cofitune_ray.core.tree import SearchTree, Status, TreeNode, describe_runs
from cofitune_ray.outputs.document import (
    MISSING,
    Bullets,
    Heading,
    Image,
    Paragraph,
    Preformatted,
    Table,
    fmt_count,
    fmt_duration,
    fmt_percent,
    fmt_score,
    render_html,
)
from cofitune_ray.outputs.plots import plot_curves, plot_pareto
from cofitune_ray.outputs.verdict import reference_score, verdict

#: Headers of the all-nodes table, the part of report.md that mirrors tree.json one row per node.
NODE_TABLE_HEADERS = ("Node", "Key", "Status", "Spec", "Vers", "Uni", "Trained params", "Runs", "Train steps",
                      "Steps saved", "Wall time", "Note")


def write_report(tree: SearchTree, run_dir: Path, title: str | None = None) -> dict[str, Path]:
    """Write report.md, report.html, pareto.png and curves.png into `run_dir`; return their paths."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: run_dir / filename for name, filename in REPORT_FILES.items()}
    plot_pareto(tree, paths["pareto"])
    plot_curves(tree, paths["curves"])
    title = title or f"CoFiTune search report: {Path(tree.space.source).name}"
    blocks = build_report(tree, title)
    paths["markdown"].write_text("\n\n".join(b.markdown() for b in blocks) + "\n")
    paths["html"].write_text(render_html(blocks, title))
    return paths


def status_text(node: TreeNode, tree: SearchTree) -> str:
    """What happened to a node, in words: expanded, promising, pruned/failed with the reason, ..."""
    if node.status == Status.FINISHED:
        if node.children:
            return "expanded (promising)"
        if node.promising:
            return "promising (no deeper level to expand)"
        return "reference" if node.is_reference else "finished, not expanded"
    if node.status in (Status.PRUNED, Status.FAILED):
        return f"{node.status}: {node.stop_reason or 'no reason recorded'}"
    if node.status == Status.NOT_EXPANDED:
        return f"not run (search ended: {tree.end_reason})"
    return node.status



# ---- report content -----------------------------------------------------------------------------
def build_report(tree: SearchTree, title: str) -> list:
    """Every block of the report, in order."""
    return [
        Heading(1, title),
        Bullets(summary_lines(tree)),
        Heading(2, "Verdict"),
        Paragraph(verdict(tree)),
        Heading(2, "Search tree"),
        Preformatted(tree_drawing(tree)),
        *spectrum_blocks(tree),
        Heading(2, "Ranking"),
        Paragraph(ranking_rule(tree)),
        ranking_table(tree),
        Heading(2, "Pareto front"),
        Paragraph("Scored nodes that no other scored node beats on both Spec and Vers."),
        pareto_table(tree),
        Image("Spec vs Vers of every node, Pareto front and winner marked", REPORT_FILES["pareto"]),
        Heading(2, "Curves"),
        Paragraph("Spec, Vers and Uni at each evaluation point of each node's best run; "
                  "its other learning-rate runs dotted."),
        Image("Spec, Vers and Uni over the evaluation points of each node", REPORT_FILES["curves"]),
        Heading(2, "Scores per set"),
        Paragraph("Each scored node's score on every evaluation set at its best point, in ranking order: the "
                  "speciality set is Spec, Vers is the mean of the others (sets given by path and lm-eval tasks "
                  "alike)."),
        set_scores_table(tree),
        Heading(2, "All nodes"),
        node_table(tree),
    ]


def ranking_rule(tree: SearchTree) -> str:
    """How the ranking table is ordered, in words."""
    if tree.objective.name == "uni":
        return "Scored nodes, best first: Uni, then fewer trained parameters."
    return (f"Scored nodes, best first: nodes whose speciality gain over the base model reaches "
            f"{tree.objective.spec_floor:.0%} of full SFT's best gain rank by Vers, the others after them by gain; "
            f"ties: fewer trained parameters.")


def summary_lines(tree: SearchTree) -> list[str]:
    """The run summary: space, objective, learning rates, how the search ended, node counts and cost."""
    counts = {s: sum(n.status == s for n in tree.nodes.values())
              for s in (Status.FINISHED, Status.PRUNED, Status.FAILED, Status.NOT_EXPANDED)}
    unfinished = sum(n.status in (Status.PENDING, Status.RUNNING) for n in tree.nodes.values())
    costs = [n.cost() for n in tree.nodes.values()]
    policy, objective, rates = tree.policy, tree.objective, tree.learning_rates
    floor = f" at spec_floor {objective.spec_floor:g}" if objective.name == "spec_floor" else ""
    return [
        f"Search space: {tree.space.source} ({tree.space.strategy}); levels reached: {tree.depth}",
        f"Objective: {objective.name}{floor}; learning rates {', '.join(f'{lr:.3g}' for lr in rates.candidates)} "
        f"(best {rates.keep} kept at the first evaluation point)",
        f"Selection: beam_width {policy.beam_width}, epsilon {policy.epsilon:g}, min_gain {policy.min_gain:g}, "
        f"max_depth {policy.max_depth}, max_trials {policy.max_trials}",
        f"Search ended: {tree.end_reason}" if tree.finished else "Search still running",
        f"Nodes run: {counts[Status.FINISHED] + counts[Status.PRUNED] + counts[Status.FAILED]} "
        f"({counts[Status.FINISHED]} finished, {counts[Status.PRUNED]} pruned, {counts[Status.FAILED]} failed); "
        f"not expanded: {counts[Status.NOT_EXPANDED]}" + (f"; pending or running: {unfinished}" if unfinished else ""),
        f"Trials (learning-rate runs): {sum(c['trials'] for c in costs)}; "
        f"train steps: {fmt_count(sum(c['train_steps'] for c in costs))}; "
        f"steps saved by early stops: {fmt_count(sum(c['steps_saved'] for c in costs))}; "
        f"total run wall time: {fmt_duration(sum(c['wall_time_s'] for c in costs))}",
    ]


def tree_drawing(tree: SearchTree) -> str:
    """The search tree as indented text: references and level-1 nodes at the top, children below."""
    roots = [n for n in tree.nodes.values() if n.parent is None]
    lines: list[str] = []
    for i, node in enumerate(roots):
        _draw(tree, node, "", i == len(roots) - 1, lines)
    return "\n".join(lines)


def _draw(tree: SearchTree, node: TreeNode, prefix: str, last: bool, lines: list[str]) -> None:
    """Append `node`'s line and, below it, its children's subtrees."""
    lines.append(prefix + ("└── " if last else "├── ") + drawing_line(tree, node))
    children = [tree.node(c) for c in node.children]
    for i, child in enumerate(children):
        _draw(tree, child, prefix + ("    " if last else "│   "), i == len(children) - 1, lines)


def drawing_line(tree: SearchTree, node: TreeNode) -> str:
    """One node of the tree drawing: name, scores at its best point (and that point's lr), trained parameters,
    status."""
    best = tree.best_point(node)
    scores = "no score"
    if best:
        scores = (f"Spec {fmt_score(best.score.spec)}  Vers {fmt_score(best.score.vers)}  "
                  f"Uni {fmt_score(best.score.uni)}")
        scores += f" at lr {best.run.lr:.3g}" if best.run.lr is not None else ""
    return (
        f"{node.id} {node.part.describe()}{_marks(tree, node)} | {scores} | "
        f"{fmt_count(node.trained_params)} params | {status_text(node, tree)}"
    )


def _marks(tree: SearchTree, node: TreeNode) -> str:
    """` [winner]` and/or ` [Pareto]` for the nodes that are."""
    best = tree.best()
    marks = ["winner"] if best is not None and best.id == node.id else []
    if node in tree.pareto_front():
        marks.append("Pareto")
    return "".join(f" [{m}]" for m in marks)


def spectrum_blocks(tree: SearchTree) -> list:
    """What each Spectrum (snr) reference trains, per module type; nothing when the space has none."""
    rows = [(f"{n.id} {n.part.describe()}", module, ", ".join(map(str, layers)))
            for n in tree.at_depth(0) if n.part.kind == "snr" for module, layers in n.part.selection or ()]
    if not rows:
        return []
    return [Heading(2, "Spectrum reference"),
            Paragraph("The layers each Spectrum node trains per module type: the top share by signal-to-noise ratio "
                      "of the base weights (Marchenko-Pastur noise edge), chosen before any training."),
            Table(("Node", "Module", "Layers"), rows)]


def ranking_table(tree: SearchTree) -> Table:
    """Scored nodes best first under the objective, with Vers relative to the base model and their cost."""
    base = reference_score(tree, "base")
    reference = tree.reference()
    rows = []
    for rank, node in enumerate(tree.ranking(), start=1):
        best = tree.best_point(node, reference)
        cost = node.cost()
        rows.append((
            str(rank),
            f"{node.id} {node.part.describe()}{_marks(tree, node)}",
            MISSING if best.run.lr is None else f"{best.run.lr:.3g}",
            fmt_score(best.score.spec),
            fmt_score(best.score.vers),
            fmt_score(best.score.uni),
            tree.objective.explain(best.score, reference),
            fmt_percent(best.score.vers, base.vers) if base else MISSING,
            fmt_count(node.trained_params),
            str(cost["trials"]),
            fmt_count(cost["train_steps"]),
        ))
    headers = ("Rank", "Node", "lr", "Spec", "Vers", "Uni", "Objective", "Vers vs base", "Trained params", "Trials",
               "Train steps")
    return Table(headers, rows)


def set_scores_table(tree: SearchTree) -> Table:
    """One row per scored node (ranking order), one column per evaluation set, at the node's best point."""
    reference = tree.reference()
    points = [(node, tree.best_point(node, reference).point.get("set_scores", {})) for node in tree.ranking()]
    names = list(dict.fromkeys(name for _, scores in points for name in scores))
    rows = [(f"{node.id} {node.part.describe()}", *(fmt_score(scores.get(name)) for name in names))
            for node, scores in points]
    return Table(("Node", *names), rows)


def pareto_table(tree: SearchTree) -> Table:
    """The Pareto front, highest Spec first."""
    rows = []
    for node in tree.pareto_front():
        score = tree.score(node)
        rows.append((f"{node.id} {node.part.describe()}", fmt_score(score.spec), fmt_score(score.vers),
                     fmt_score(score.uni), fmt_count(node.trained_params)))
    return Table(("Node", "Spec", "Vers", "Uni", "Trained params"), rows)


def node_table(tree: SearchTree) -> Table:
    """One row per node of tree.json: id, key, raw status, scores, its runs, cost, and why it stopped."""
    rows = []
    for node in tree.nodes.values():
        score = tree.score(node) or Score(math.nan, math.nan, math.nan)
        cost = node.cost()
        rows.append((
            node.id,
            node.part.key(),
            node.status,
            fmt_score(score.spec),
            fmt_score(score.vers),
            fmt_score(score.uni),
            fmt_count(node.trained_params),
            describe_runs(tree, node) or MISSING,
            fmt_count(cost["train_steps"]),
            fmt_count(cost["steps_saved"]),
            fmt_duration(cost["wall_time_s"]),
            status_text(node, tree),
        ))
    return Table(NODE_TABLE_HEADERS, rows)


# ---- verdict ------------------------------------------------------------------------------------
