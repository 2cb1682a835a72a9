"""What a user sees while the search runs: a line per ended node, and Prometheus metrics.

The metrics go through `ray.util.metrics`, so they are exported on the node's metrics port
(as `ray_cofitune_*`) and show in Grafana and the dashboard's metrics view.
"""

from __future__ import annotations

from pathlib import Path

from ray.tune import Callback
from ray.util.metrics import Gauge

from cofitune_ray.tuning.searcher import TreeSearcher

METRIC_NAMES = {
    "finished": "cofitune_nodes_finished",
    "running": "cofitune_nodes_running",
    "pruned": "cofitune_nodes_pruned",
    "failed": "cofitune_nodes_failed",
    "best_uni": "cofitune_best_uni",
    "depth": "cofitune_tree_depth",
}


class SearchMetrics:
    """Gauges describing the search, tagged with the run name."""

    def __init__(self, run_name: str):
        self.tags = {"run": run_name}
        self.gauges = {key: Gauge(name, description=f"CoFiTune search: {key.replace('_', ' ')}", tag_keys=("run",))
                       for key, name in METRIC_NAMES.items()}

    def update(self, searcher: TreeSearcher) -> None:
        tree = searcher.tree
        statuses = [n.status for n in tree.nodes.values()]
        for status in ("finished", "running", "pruned", "failed"):
            self.gauges[status].set(statuses.count(status), tags=self.tags)
        best = tree.best()
        self.gauges["best_uni"].set(best.score().uni if best else 0.0, tags=self.tags)
        self.gauges["depth"].set(tree.depth, tags=self.tags)


def ended_node_line(node) -> str:
    """One line for an ended node: its scores and what the search did with it."""
    score = node.score()
    scores = f"Spec {score.spec:.3f}  Vers {score.vers:.3f}  Uni {score.uni:.3f}" if score else "no score"
    outcome = {"pruned": f"pruned: {node.stop_reason}", "failed": f"failed: {node.stop_reason}"}.get(node.status, node.status)
    return f"[cofitune] node {node.id} {node.part.describe()}: {scores} -> {outcome}"


class SearchProgress(Callback):
    """Prints a line per ended node and per new level, keeps tree.json current, updates metrics."""

    def __init__(self, searcher: TreeSearcher, run_dir: str, run_name: str):
        self.searcher = searcher
        self.run_dir = run_dir
        self.run_name = run_name
        self._metrics: SearchMetrics | None = None  # created lazily: gauges need a connected Ray
        self._depth_shown = -1

    def __getstate__(self) -> dict:  # Tune pickles callbacks with the experiment; gauges stay out
        return {**self.__dict__, "_metrics": None}

    def on_step_begin(self, iteration, trials, **info):
        self._refresh()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._node_ended(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._node_ended(trial)

    def _node_ended(self, trial) -> None:
        node = self.searcher.node_for_trial(trial.trial_id)
        if node is not None:
            print(ended_node_line(node), flush=True)
        self._refresh()

    def _refresh(self) -> None:
        tree = self.searcher.tree
        if tree.depth != self._depth_shown:
            if self._depth_shown > 0:  # level 0 holds the references, which are never expanded
                kept = [n.part.describe() for n in tree.at_depth(self._depth_shown) if n.promising]
                print(f"[cofitune] level {self._depth_shown} done; promising: {', '.join(kept) or 'none'}", flush=True)
            self._depth_shown = tree.depth
            names = ", ".join(n.part.describe() for n in tree.at_depth(tree.depth)) or "none"
            print(f"[cofitune] level {tree.depth}: running {names}", flush=True)
        (Path(self.run_dir) / "tree.json").write_text(tree.to_json())
        if self._metrics is None:
            self._metrics = SearchMetrics(self.run_name)
        self._metrics.update(self.searcher)
