"""The report's plots: pareto.png (Spec against Vers of every scored node) and curves.png (each node's
evaluation points). They use matplotlib's object API (`Figure`, rendered by the Agg canvas), never pyplot's global
state.
"""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cofitune_ray.core.objective import Score
from cofitune_ray.core.tree import SearchTree, Status, TreeNode


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
    for status, marker, label in ((Status.FINISHED, "o", "other finished nodes"),
                                  (Status.PRUNED, "x", "pruned (best point before the stop)")):
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
    status = "" if node.status == Status.FINISHED else f" ({node.status})"
    lr = f" lr {main.lr:.3g}" if main.lr is not None else ""
    ax.set_title(f"{'★ ' if is_winner else ''}{node.id} {name}{lr}{status}", fontsize=8,
                 weight="bold" if is_winner else "normal")
    ax.set_ylim(0, 1)
    ax.tick_params(labelsize=7, labelbottom=True, labelleft=True)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step" if x_key == "step" else "evaluation", fontsize=7)
    ax.grid(alpha=0.3)
