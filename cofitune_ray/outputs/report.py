"""The end-of-search report: report.md, report.html, pareto.png and curves.png in the run directory.

Everything is read from a `SearchTree` (the same state as the run's `tree.json`). The report is
built once as a list of blocks (headings, paragraphs, tables, a preformatted tree, images) and
rendered twice, to Markdown and to HTML, so the two files always say the same thing. The plots
use matplotlib's object API (`Figure`, rendered by the Agg canvas), never pyplot's global state.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cofitune_ray.core.objective import Score
from cofitune_ray.core.tree import SearchTree, TreeNode, describe_runs

#: Names of the files `write_report` writes, by the key it returns them under.
REPORT_FILES = {"markdown": "report.md", "html": "report.html", "pareto": "pareto.png", "curves": "curves.png"}
#: Headers of the all-nodes table, the part of report.md that mirrors tree.json one row per node.
NODE_TABLE_HEADERS = ("Node", "Key", "Status", "Spec", "Vers", "Uni", "Trained params", "Runs", "Train steps",
                      "Steps saved", "Wall time", "Note")
MISSING = "n/a"


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


# ---- formatting ---------------------------------------------------------------------------------
def fmt_score(value: float | None) -> str:
    """A Spec/Vers/Uni value as the report prints it: three decimals, or n/a."""
    return MISSING if value is None or math.isnan(value) else f"{value:.3f}"


def fmt_count(value: int | None) -> str:
    """An integer with thousands separators, or n/a."""
    return MISSING if value is None else f"{value:,}"


def fmt_percent(numerator: float, denominator: float) -> str:
    """numerator / denominator as a percentage with one decimal, or n/a when undefined."""
    if any(math.isnan(x) for x in (numerator, denominator)) or denominator <= 0:
        return MISSING
    return f"{100 * numerator / denominator:.1f}%"


def fmt_duration(seconds: float | None) -> str:
    """A wall time as `42.0 s`, `3m 05s` or `1h 02m`, or n/a."""
    if seconds is None:
        return MISSING
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    return f"{minutes // 60}h {minutes % 60:02d}m"


def status_text(node: TreeNode, tree: SearchTree) -> str:
    """What happened to a node, in words: expanded, promising, pruned/failed with the reason, ..."""
    if node.status == "finished":
        if node.children:
            return "expanded (promising)"
        if node.promising:
            return "promising (no deeper level to expand)"
        return "reference" if node.is_reference else "finished, not expanded"
    if node.status in ("pruned", "failed"):
        return f"{node.status}: {node.stop_reason or 'no reason recorded'}"
    if node.status == "not_expanded":
        return f"not run (search ended: {tree.end_reason})"
    return node.status


# ---- report blocks, rendered to Markdown and HTML --------------------------------------------------
@dataclass
class Heading:
    """A section title (level 1 or 2)."""

    level: int
    text: str

    def markdown(self) -> str:
        return "#" * self.level + " " + self.text

    def html(self) -> str:
        return f"<h{self.level}>{html.escape(self.text)}</h{self.level}>"


@dataclass
class Paragraph:
    """Plain text."""

    text: str

    def markdown(self) -> str:
        return self.text

    def html(self) -> str:
        return f"<p>{html.escape(self.text)}</p>"


@dataclass
class Bullets:
    """An unordered list."""

    items: list[str]

    def markdown(self) -> str:
        return "\n".join(f"- {item}" for item in self.items)

    def html(self) -> str:
        return "<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in self.items) + "</ul>"


@dataclass
class Preformatted:
    """Text shown as is, in a monospace font (the tree drawing)."""

    text: str

    def markdown(self) -> str:
        return f"```\n{self.text}\n```"

    def html(self) -> str:
        return f"<pre>{html.escape(self.text)}</pre>"


@dataclass
class Table:
    """A table; Markdown cells escape `|` (node keys contain it)."""

    headers: tuple[str, ...]
    rows: list[tuple[str, ...]]

    def markdown(self) -> str:
        lines = [self.headers, tuple("---" for _ in self.headers), *self.rows]
        return "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in lines)

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.headers)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in self.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


@dataclass
class Image:
    """An image by path relative to the report."""

    alt: str
    src: str

    def markdown(self) -> str:
        return f"![{self.alt}]({self.src})"

    def html(self) -> str:
        return f'<img src="{html.escape(self.src)}" alt="{html.escape(self.alt)}">'


_CSS = (
    "body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse;font-size:90%}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}"
    "pre{background:#f6f6f6;padding:1em;overflow-x:auto}img{max-width:100%}"
)


def render_html(blocks: list, title: str) -> str:
    """A standalone HTML page holding the blocks."""
    body = "\n".join(b.html() for b in blocks)
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


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
                  "speciality set is Spec, Vers is the mean of the others (JSONL sets and lm-eval tasks alike)."),
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
              for s in ("finished", "pruned", "failed", "not_expanded")}
    unfinished = sum(n.status in ("pending", "running") for n in tree.nodes.values())
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
        f"Nodes run: {counts['finished'] + counts['pruned'] + counts['failed']} "
        f"({counts['finished']} finished, {counts['pruned']} pruned, {counts['failed']} failed); "
        f"not expanded: {counts['not_expanded']}" + (f"; pending or running: {unfinished}" if unfinished else ""),
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
def reference_score(tree: SearchTree, kind: str) -> Score | None:
    """The score of an ended reference of `kind`, or None when it is missing or has no score."""
    node = tree.reference_node(kind)
    return tree.score(node) if node is not None and node.status in ("finished", "pruned") else None


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


# ---- plots --------------------------------------------------------------------------------------
def _scored(tree: SearchTree) -> list[tuple[TreeNode, Score]]:
    """Every node with a usable (Spec, Vers) score, whatever its status."""
    pairs = [(n, tree.score(n)) for n in tree.nodes.values()]
    return [(n, s) for n, s in pairs if s is not None and not (math.isnan(s.spec) or math.isnan(s.vers))]


def plot_pareto(tree: SearchTree, path: Path) -> None:
    """Spec (x) vs Vers (y) of every scored node; the front connected, winner and references marked."""
    fig = Figure(figsize=(7.5, 6), dpi=120)
    ax = fig.add_subplot()
    scored = _scored(tree)
    front = tree.pareto_front()
    best = tree.best()
    special = {n.id for n in front} | {n.id for n in (best, tree.reference_node("base"), tree.reference_node("full"))
                                       if n}
    others = [(n, s) for n, s in scored if n.id not in special]
    for status, marker, label in (("finished", "o", "other finished nodes"),
                                  ("pruned", "x", "pruned (best point before the stop)")):
        points = [s for n, s in others if n.status == status]
        if points:
            ax.scatter([s.spec for s in points], [s.vers for s in points], marker=marker, color="0.55", s=30,
                       label=label, zorder=2)
    if front:
        xs, ys = [tree.score(n).spec for n in front], [tree.score(n).vers for n in front]
        ax.plot(xs, ys, "-o", color="tab:orange", lw=2, ms=8, label="Pareto front", zorder=3)
    if best is not None:
        ax.scatter([tree.score(best).spec], [tree.score(best).vers], marker="*", s=320, color="tab:red",
                   edgecolor="k", label=f"winner ({best.id})", zorder=5)
    for kind, marker, name in (("base", "s", "base model"), ("full", "D", "full SFT")):
        node = tree.reference_node(kind)
        score = tree.score(node) if node else None
        if score is not None:
            ax.scatter([score.spec], [score.vers], marker=marker, s=70, color="k", zorder=4)
            ax.annotate(name, (score.spec, score.vers), xytext=(8, -12), textcoords="offset points", fontsize=10,
                        weight="bold")
    for node, score in scored:
        if not node.is_reference:
            ax.annotate(node.id, (score.spec, score.vers), xytext=(5, 4), textcoords="offset points", fontsize=8,
                        color="0.25", zorder=6)
    if not scored:
        ax.text(0.5, 0.5, "no node has a score yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("Spec (speciality)")
    ax.set_ylabel("Vers (versatility)")
    ax.set_title("Speciality vs versatility of every scored node")
    ax.grid(alpha=0.3)
    _pad_limits(ax, [s for _, s in scored])
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def _pad_limits(ax, scores: list[Score]) -> None:
    """Axis limits around the scores with a margin, kept inside [-0.02, 1.02] (scores live in [0, 1])."""
    if not scores:
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        return
    for values, setter in (([s.spec for s in scores], ax.set_xlim), ([s.vers for s in scores], ax.set_ylim)):
        lo, hi = min(values), max(values)
        margin = max(0.05, 0.1 * (hi - lo))
        setter(max(-0.02, lo - margin), min(1.02, hi + margin))


def plot_curves(tree: SearchTree, path: Path) -> None:
    """One small panel per node with evaluation points: Spec, Vers and Uni over steps (or eval index) of the
    node's best run, its other learning-rate runs faint.

    The panels share their axes, so a run stopped early shows as a short curve.
    """
    nodes = [n for n in tree.nodes.values() if any(r.history for r in n.runs)]
    points = [p for n in nodes for r in n.runs for p in r.history]
    x_key = "step" if points and all("step" in p for p in points) else "eval_index"
    ncols = max(1, min(4, len(nodes)))
    nrows = max(1, math.ceil(len(nodes) / ncols))
    fig = Figure(figsize=(3.4 * ncols, 2.5 * nrows + 0.6), dpi=110)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True).ravel()
    best = tree.best()
    for ax, node in zip(axes, nodes):
        _plot_node_curves(ax, tree, node, x_key, is_winner=best is not None and best.id == node.id)
    for ax in axes[len(nodes):]:
        ax.set_axis_off()
    if not nodes:
        axes[0].text(0.5, 0.5, "no evaluation points yet", ha="center", va="center", transform=axes[0].transAxes)
    else:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="upper center", ncol=3, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    fig.savefig(path)


def _plot_node_curves(ax, tree: SearchTree, node: TreeNode, x_key: str, is_winner: bool) -> None:
    """Spec, Vers and Uni of one node's runs on one small axis, titled with its id, name and status."""
    best = tree.best_point(node)
    main = best.run if best else next(r for r in node.runs if r.history)
    for run in node.runs:
        if run is main or not run.history:
            continue
        for metric, color in (("spec", "tab:blue"), ("vers", "tab:orange")):
            ax.plot([p[x_key] for p in run.history], [p[metric] for p in run.history], ":", color=color, lw=0.9,
                    alpha=0.5)
    for metric, style, color in (("spec", "-o", "tab:blue"), ("vers", "-s", "tab:orange"), ("uni", "--^", "tab:green")):
        pts = [p for p in main.history if metric in p]
        ax.plot([p[x_key] for p in pts], [p[metric] for p in pts], style, color=color, ms=3, lw=1.4,
                label=metric.capitalize())
    name = node.part.describe()
    name = name if len(name) <= 30 else name[:29] + "…"
    status = "" if node.status == "finished" else f" ({node.status})"
    lr = f" lr {main.lr:.3g}" if main.lr is not None else ""
    ax.set_title(f"{'★ ' if is_winner else ''}{node.id} {name}{lr}{status}", fontsize=8,
                 weight="bold" if is_winner else "normal")
    ax.set_ylim(0, 1)
    ax.tick_params(labelsize=7, labelbottom=True, labelleft=True)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step" if x_key == "step" else "evaluation", fontsize=7)
    ax.grid(alpha=0.3)
