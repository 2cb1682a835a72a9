"""What a user sees while the search runs: a line per level and per ended node, and Prometheus metrics.

The lines say which nodes a level runs and at how many learning rates, how each node ended (its
score, why it ranks where it does, what happened to each learning-rate run) with a running count
and an estimate of the level's remaining time. The run directory's files are `RunFiles`'
(`tuning/run_files.py`), which Tune calls first.

The metrics go through `ray.util.metrics`, so they are exported on the node's metrics port
(as `ray_cofitune_*`) and show in Grafana and the dashboard's metrics view.
"""

from __future__ import annotations

import time

from ray.util.metrics import Gauge

from cofitune_ray.core.tree import SearchTree, Status, TreeNode, describe_runs
from cofitune_ray.tuning.refresh import TreeRefresh
from cofitune_ray.tuning.searcher import TreeSearcher

METRIC_NAMES = {
    Status.FINISHED: "cofitune_nodes_finished",
    Status.RUNNING: "cofitune_nodes_running",
    Status.PRUNED: "cofitune_nodes_pruned",
    Status.FAILED: "cofitune_nodes_failed",
    "best_objective": "cofitune_best_objective",
    "steps_saved": "cofitune_steps_saved",
    "depth": "cofitune_tree_depth",
}


class SearchMetrics:
    """Gauges describing the search, tagged with the run name."""

    def __init__(self, run_name: str):
        self.tags = {"run": run_name}
        self.gauges = {key: Gauge(name, description=f"CoFiTune search: {key.replace('_', ' ')}", tag_keys=("run",))
                       for key, name in METRIC_NAMES.items()}

    def update(self, tree: SearchTree) -> None:
        statuses = [n.status for n in tree.nodes.values()]
        for status in (Status.FINISHED, Status.RUNNING, Status.PRUNED, Status.FAILED):
            self.gauges[status].set(statuses.count(status), tags=self.tags)
        best = tree.best()
        value = tree.objective.scalar(tree.score(best), tree.reference()) if best else 0.0
        self.gauges["best_objective"].set(value, tags=self.tags)
        self.gauges["steps_saved"].set(tree.steps_saved(), tags=self.tags)
        self.gauges["depth"].set(tree.depth, tags=self.tags)


def ended_node_line(tree: SearchTree, node: TreeNode) -> str:
    """One line for an ended node: its score, why it ranks there, its runs, and what the search did with it."""
    best = tree.best_point(node)
    if best is None:
        scores = "no score"
    else:
        scores = (f"Spec {best.score.spec:.3f}  Vers {best.score.vers:.3f} "
                  f"({tree.objective.explain(best.score, tree.reference())})")
        if best.run.lr is not None:
            scores += f" at lr {best.run.lr:.3g}"
    outcome = {Status.PRUNED: f"pruned: {node.stop_reason}",
               Status.FAILED: f"failed: {node.stop_reason}"}.get(node.status, node.status)
    runs = describe_runs(tree, node)
    return f"[cofitune] {node.id} {node.part.describe()}: {scores} -> {outcome}" + (f" [{runs}]" if runs else "")


def level_line(tree: SearchTree, depth: int) -> str:
    """The line that opens a level: its nodes and how many learning-rate runs each gets."""
    nodes = [n for n in tree.at_depth(depth) if n.status != Status.NOT_EXPANDED]
    runs = sum(len(n.runs) for n in nodes)
    name = "references" if depth == 0 else _level_name(tree, nodes)
    return (f"[cofitune] level {depth} ({name}): {len(nodes)} node(s), {runs} run(s): "
            + (", ".join(f"{n.id} {n.part.describe()}" for n in nodes) or "none"))


def count_line(tree: SearchTree, depth: int, level_started: float) -> str:
    """How far the level is, and about how long it still needs at the pace of its ended runs."""
    nodes = [n for n in tree.at_depth(depth) if n.status != Status.NOT_EXPANDED]
    runs = [r for n in nodes for r in n.runs if r.status != Status.NOT_EXPANDED]
    ended = [r for r in runs if r.ended]
    ended_nodes = sum(n.status in (Status.FINISHED, Status.PRUNED, Status.FAILED) for n in nodes)
    text = f"{ended_nodes} of {len(nodes)} node(s) of level {depth} ended, {len(ended)} of {len(runs)} run(s)"
    if ended and len(ended) < len(runs):
        pace = (time.time() - level_started) / len(ended)
        text += f"; about {_minutes(pace * (len(runs) - len(ended)))} left in this level"
    return text


def _level_name(tree: SearchTree, nodes: list[TreeNode]) -> str:
    levels = {n.level for n in nodes if n.level is not None}
    if len(levels) == 1:
        return tree.space.levels[levels.pop()].name
    return "every candidate" if tree.space.strategy == "grid" else "several rules"


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


class SearchProgress(TreeRefresh):
    """Prints the level and node lines and updates the metrics at each refresh (`tuning/refresh.py`)."""

    def __init__(self, searcher: TreeSearcher, run_name: str):
        super().__init__()
        self.searcher = searcher
        self.run_name = run_name
        self._metrics: SearchMetrics | None = None  # created lazily: gauges need a connected Ray
        self._depth_shown = -1
        self._ended_shown: set[str] = set()
        self._level_started = time.time()

    def __getstate__(self) -> dict:  # Tune pickles callbacks with the experiment; gauges stay out
        return {**self.__dict__, "_metrics": None}

    def refresh(self) -> None:
        tree = self.searcher.tree
        for node in tree.nodes.values():
            if node.id not in self._ended_shown and node.status in (Status.FINISHED, Status.PRUNED, Status.FAILED):
                self._ended_shown.add(node.id)
                print(f"{ended_node_line(tree, node)}  ({count_line(tree, node.depth, self._level_started)})",
                      flush=True)
        if tree.depth != self._depth_shown:
            if self._depth_shown > 0:  # level 0 holds the references, which are never expanded
                kept = [f"{n.id} {n.part.describe()}" for n in tree.at_depth(self._depth_shown) if n.promising]
                print(f"[cofitune] level {self._depth_shown} done; promising: {', '.join(kept) or 'none'}", flush=True)
            self._depth_shown, self._level_started = tree.depth, time.time()
            print(level_line(tree, tree.depth), flush=True)
        if self._metrics is None:
            self._metrics = SearchMetrics(self.run_name)
        self._metrics.update(tree)
