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

from cofitune_ray.core.tree import Score, SearchTree, TreeNode

#: Names of the files `write_report` writes, by the key it returns them under.
REPORT_FILES = {"markdown": "report.md", "html": "report.html", "pareto": "pareto.png", "curves": "curves.png"}
#: Headers of the all-nodes table, the part of report.md that mirrors tree.json one row per node.
NODE_TABLE_HEADERS = ("Node", "Key", "Status", "Spec", "Vers", "Uni", "Trained params", "Train steps", "Wall time", "Note")
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
        Heading(2, "Ranking"),
        Paragraph("Finished nodes with a score, best first: Uni, then fewer trained parameters."),
        ranking_table(tree),
        Heading(2, "Pareto front"),
        Paragraph("Finished nodes that no other finished node beats on both Spec and Vers."),
        pareto_table(tree),
        Image("Spec vs Vers of every node, Pareto front and winner marked", REPORT_FILES["pareto"]),
        Heading(2, "Curves"),
        Paragraph("Spec, Vers and Uni at each evaluation point of every node that reported one."),
        Image("Spec, Vers and Uni over the evaluation points of each node", REPORT_FILES["curves"]),
        Heading(2, "All nodes"),
        node_table(tree),
    ]


def summary_lines(tree: SearchTree) -> list[str]:
    """The run summary: how the search ended, node counts by status, total train steps and wall time."""
    counts = {s: sum(n.status == s for n in tree.nodes.values()) for s in ("finished", "pruned", "failed", "not_expanded")}
    unfinished = sum(n.status in ("pending", "running") for n in tree.nodes.values())
    costs = [n.cost() for n in tree.nodes.values()]
    steps = [c["train_steps"] for c in costs if "train_steps" in c]
    walls = [c["wall_time_s"] for c in costs if "wall_time_s" in c]
    policy = tree.policy
    return [
        f"Search space: {tree.space.source} ({tree.space.strategy}); levels reached: {tree.depth}",
        f"Selection: beam_width {policy.beam_width}, epsilon {policy.epsilon:g}, min_gain {policy.min_gain:g}, "
        f"max_depth {policy.max_depth}, max_trials {policy.max_trials}",
        f"Search ended: {tree.end_reason}" if tree.finished else "Search still running",
        f"Nodes run: {counts['finished'] + counts['pruned'] + counts['failed']} "
        f"({counts['finished']} finished, {counts['pruned']} pruned, {counts['failed']} failed); "
        f"not expanded: {counts['not_expanded']}" + (f"; pending or running: {unfinished}" if unfinished else ""),
        f"Total train steps: {fmt_count(sum(steps)) if steps else MISSING}; "
        f"total node wall time: {fmt_duration(sum(walls)) if walls else MISSING}",
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
    """One node of the tree drawing: name, scores, trained parameters, status."""
    score = node.score()
    marks = _marks(tree, node)
    scores = (
        f"Spec {fmt_score(score.spec)}  Vers {fmt_score(score.vers)}  Uni {fmt_score(score.uni)}"
        if score
        else "no score"
    )
    return (
        f"{node.id} {node.part.describe()}{marks} | {scores} | "
        f"{fmt_count(node.trained_params)} params | {status_text(node, tree)}"
    )


def _marks(tree: SearchTree, node: TreeNode) -> str:
    """` [winner]` and/or ` [Pareto]` for the nodes that are."""
    best = tree.best()
    marks = ["winner"] if best is not None and best.id == node.id else []
    if node in tree.pareto_front():
        marks.append("Pareto")
    return "".join(f" [{m}]" for m in marks)


def ranking_table(tree: SearchTree) -> Table:
    """Finished nodes best first, with Vers relative to the base model and their cost."""
    base = reference_score(tree, "base")
    rows = []
    for rank, node in enumerate(tree.ranking(), start=1):
        score = node.score()
        cost = node.cost()
        rows.append((
            str(rank),
            f"{node.id} {node.part.describe()}{_marks(tree, node)}",
            fmt_score(score.spec),
            fmt_score(score.vers),
            fmt_score(score.uni),
            fmt_percent(score.vers, base.vers) if base else MISSING,
            fmt_count(node.trained_params),
            fmt_count(cost.get("train_steps")),
            fmt_duration(cost.get("wall_time_s")),
        ))
    headers = ("Rank", "Node", "Spec", "Vers", "Uni", "Vers vs base", "Trained params", "Train steps", "Wall time")
    return Table(headers, rows)


def pareto_table(tree: SearchTree) -> Table:
    """The Pareto front, highest Spec first."""
    rows = [
        (f"{n.id} {n.part.describe()}", fmt_score(n.score().spec), fmt_score(n.score().vers), fmt_score(n.score().uni), fmt_count(n.trained_params))
        for n in tree.pareto_front()
    ]
    return Table(("Node", "Spec", "Vers", "Uni", "Trained params"), rows)


def node_table(tree: SearchTree) -> Table:
    """One row per node of tree.json: id, key, raw status, scores, cost, and why it stopped."""
    rows = []
    for node in tree.nodes.values():
        score = node.score() or Score(math.nan, math.nan, math.nan)
        cost = node.cost()
        rows.append((
            node.id,
            node.part.key(),
            node.status,
            fmt_score(score.spec),
            fmt_score(score.vers),
            fmt_score(score.uni),
            fmt_count(node.trained_params),
            fmt_count(cost.get("train_steps")),
            fmt_duration(cost.get("wall_time_s")),
            status_text(node, tree),
        ))
    return Table(NODE_TABLE_HEADERS, rows)


# ---- verdict ------------------------------------------------------------------------------------
def reference(tree: SearchTree, kind: str) -> TreeNode | None:
    """The level-0 reference node of `kind` ("base" or "full"), if the search space has one."""
    return next((n for n in tree.at_depth(0) if n.part.kind == kind), None)


def reference_score(tree: SearchTree, kind: str) -> Score | None:
    """The score of a finished reference of `kind`, or None when it is missing or did not finish."""
    node = reference(tree, kind)
    return node.score() if node is not None and node.status == "finished" else None


def _missing_reference(tree: SearchTree, kind: str, name: str) -> str | None:
    """Why the `kind` reference cannot be compared with, or None when it can."""
    node = reference(tree, kind)
    if node is None:
        return f"the search space has no {name} reference"
    if node.status == "finished":
        return None
    reason = f" ({node.stop_reason})" if node.stop_reason else ""
    return f"the {name} reference is {node.status}{reason}"


def verdict(tree: SearchTree) -> str:
    """The winner against the base model and full SFT: kept versatility, speciality, trained parameters."""
    winner = tree.best()
    if winner is None:
        return "No trained node has finished with a score, so there is no winner to compare yet."
    win = winner.score()
    base, full = reference_score(tree, "base"), reference_score(tree, "full")
    full_node = reference(tree, "full")
    sentences = [
        f"The winner, {winner.id} {winner.part.describe()}, has Spec {fmt_score(win.spec)}, "
        f"Vers {fmt_score(win.vers)}, Uni {fmt_score(win.uni)}."
    ]
    claim = "The winner"
    if base:
        claim += f" keeps {fmt_percent(win.vers, base.vers)} of the base model's versatility"
        if full:
            claim += f" vs {fmt_percent(full.vers, base.vers)} for full SFT"
        claim += ","
    if full:
        claim += f" reaches {fmt_percent(win.spec, full.spec)} of full SFT's speciality,"
    claim += f" training {fmt_count(winner.trained_params)} parameters"
    if full and winner.trained_params is not None and full_node.trained_params:
        claim += f" ({fmt_percent(winner.trained_params, full_node.trained_params)} of full SFT's)"
    sentences.append(claim + ".")
    unis = [f"winner {fmt_score(win.uni)}"]
    unis += [f"full SFT {fmt_score(full.uni)}"] if full else []
    unis += [f"base model {fmt_score(base.uni)}"] if base else []
    sentences.append("Uni: " + ", ".join(unis) + ".")
    missing = [m for m in (_missing_reference(tree, "base", "base model"), _missing_reference(tree, "full", "full SFT")) if m]
    if missing:
        sentences.append("Not compared: " + "; ".join(missing) + ".")
    return " ".join(sentences)


# ---- plots --------------------------------------------------------------------------------------
def _scored(tree: SearchTree) -> list[tuple[TreeNode, Score]]:
    """Every node with a usable (Spec, Vers) score, whatever its status."""
    pairs = [(n, n.score()) for n in tree.nodes.values()]
    return [(n, s) for n, s in pairs if s is not None and not (math.isnan(s.spec) or math.isnan(s.vers))]


def plot_pareto(tree: SearchTree, path: Path) -> None:
    """Spec (x) vs Vers (y) of every scored node; the front connected, winner and references marked."""
    fig = Figure(figsize=(7.5, 6), dpi=120)
    ax = fig.add_subplot()
    scored = _scored(tree)
    front = tree.pareto_front()
    best = tree.best()
    special = {n.id for n in front} | {n.id for n in (best, reference(tree, "base"), reference(tree, "full")) if n}
    others = [(n, s) for n, s in scored if n.id not in special]
    for status, marker, label in (("finished", "o", "other finished nodes"), ("pruned", "x", "pruned (best point before the stop)")):
        points = [s for n, s in others if n.status == status]
        if points:
            ax.scatter([s.spec for s in points], [s.vers for s in points], marker=marker, color="0.55", s=30, label=label, zorder=2)
    if front:
        xs, ys = [n.score().spec for n in front], [n.score().vers for n in front]
        ax.plot(xs, ys, "-o", color="tab:orange", lw=2, ms=8, label="Pareto front", zorder=3)
    if best is not None:
        ax.scatter([best.score().spec], [best.score().vers], marker="*", s=320, color="tab:red", edgecolor="k", label=f"winner ({best.id})", zorder=5)
    for kind, marker, name in (("base", "s", "base model"), ("full", "D", "full SFT")):
        node = reference(tree, kind)
        score = node.score() if node else None
        if score is not None:
            ax.scatter([score.spec], [score.vers], marker=marker, s=70, color="k", zorder=4)
            ax.annotate(name, (score.spec, score.vers), xytext=(8, -12), textcoords="offset points", fontsize=10, weight="bold")
    for node, score in scored:
        if not node.is_reference:
            ax.annotate(node.id, (score.spec, score.vers), xytext=(5, 4), textcoords="offset points", fontsize=8, color="0.25", zorder=6)
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
    """One small panel per node with evaluation points: Spec, Vers and Uni over steps (or eval index).

    The panels share their axes, so a node pruned early shows as a short curve.
    """
    nodes = [n for n in tree.nodes.values() if n.history]
    points = [p for n in nodes for p in n.history]
    x_key = "step" if points and all("step" in p for p in points) else "eval_index"
    ncols = max(1, min(4, len(nodes)))
    nrows = max(1, math.ceil(len(nodes) / ncols))
    fig = Figure(figsize=(3.4 * ncols, 2.5 * nrows + 0.6), dpi=110)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True).ravel()
    best = tree.best()
    for ax, node in zip(axes, nodes):
        _plot_node_curves(ax, node, x_key, is_winner=best is not None and best.id == node.id)
    for ax in axes[len(nodes):]:
        ax.set_axis_off()
    if not nodes:
        axes[0].text(0.5, 0.5, "no evaluation points yet", ha="center", va="center", transform=axes[0].transAxes)
    else:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="upper center", ncol=3, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    fig.savefig(path)


def _plot_node_curves(ax, node: TreeNode, x_key: str, is_winner: bool) -> None:
    """Spec, Vers and Uni of one node on one small axis, titled with its id, name and status."""
    for metric, style, color in (("spec", "-o", "tab:blue"), ("vers", "-s", "tab:orange"), ("uni", "--^", "tab:green")):
        pts = [p for p in node.history if metric in p]
        ax.plot([p[x_key] for p in pts], [p[metric] for p in pts], style, color=color, ms=3, lw=1.4, label=metric.capitalize())
    name = node.part.describe()
    name = name if len(name) <= 34 else name[:33] + "…"
    status = "" if node.status == "finished" else f" ({node.status})"
    ax.set_title(f"{'★ ' if is_winner else ''}{node.id} {name}{status}", fontsize=8, weight="bold" if is_winner else "normal")
    ax.set_ylim(0, 1)
    ax.tick_params(labelsize=7, labelbottom=True, labelleft=True)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step" if x_key == "step" else "evaluation", fontsize=7)
    ax.grid(alpha=0.3)
