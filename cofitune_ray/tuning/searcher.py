"""`TreeSearcher`: Ray Tune's search algorithm for the CoFiTune tree (and the flat grid).

Tune asks for trials; the searcher hands out the runnable nodes of the tree's current level as
`{"part": ModelPart.to_dict(), "node_id": id}`, returns None while the level's results are still
in flight, and `Searcher.FINISHED` once the tree has ended. Results and completions go into the
tree (`tree.py`), which expands the next level. A grid space (`strategy: grid`) runs through the
same class: its one level holds every grid node.

Use with `TuneConfig(search_alg=searcher, scheduler=PromisingChildScheduler(searcher, ...),
num_samples=-1, max_concurrent_trials=N)`. `save`/`restore` write and read the tree as JSON, so
`Tuner.restore` continues the search exactly where it stopped.
"""

from __future__ import annotations

import json
from pathlib import Path

from ray.tune.search import Searcher

from cofitune_ray.core.space import SearchSpace
from cofitune_ray.core.tree import SearchTree, SelectionPolicy, TreeNode


class TreeSearcher(Searcher):
    """Suggests each node of a `SearchTree` once, level by level."""

    def __init__(self, space: SearchSpace, policy: SelectionPolicy | None = None, metric: str = "uni", mode: str = "max"):
        super().__init__(metric=metric, mode=mode)
        self.tree = SearchTree(space, policy)
        self.trial_nodes: dict[str, str] = {}  # Tune trial id -> tree node id

    def suggest(self, trial_id: str):
        if self.tree.finished:
            return Searcher.FINISHED
        node = self.next_node()
        if node is None:
            return None  # the next level depends on results still in flight
        return self.start_trial(node, trial_id)

    def next_node(self) -> TreeNode | None:
        """The pending node to run next (the tree's first runnable one), or None if none may run yet."""
        runnable = self.tree.runnable()
        return runnable[0] if runnable else None

    def start_trial(self, node: TreeNode, trial_id: str) -> dict:
        """Mark `node` running as Tune trial `trial_id`; returns the trial's config."""
        self.tree.start(node.id, trial_id)
        self.trial_nodes[trial_id] = node.id
        return {"part": node.part.to_dict(), "node_id": node.id}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.trial_nodes:
            self.tree.record(self.trial_nodes[trial_id], result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        node_id = self.trial_nodes.get(trial_id)
        if node_id is None or self.tree.node(node_id).status not in ("running", "pruned"):
            return
        if error:
            self.tree.fail(node_id, f"trial {trial_id} errored after Tune's retries (see its error file)")
        else:
            self.tree.complete(node_id, result or {})

    def node_for_trial(self, trial_id: str):
        """The tree node a Tune trial runs, or None for a trial this searcher did not suggest."""
        node_id = self.trial_nodes.get(trial_id)
        return self.tree.node(node_id) if node_id else None

    def save(self, checkpoint_path: str) -> None:
        state = {"tree": self.tree.to_dict(), "trial_nodes": self.trial_nodes}
        Path(checkpoint_path).write_text(json.dumps(state))

    def restore(self, checkpoint_path: str) -> None:
        state = json.loads(Path(checkpoint_path).read_text())
        self.tree = SearchTree.from_dict(state["tree"])
        self.trial_nodes = state["trial_nodes"]


def latest_saved_tree(experiment_dir: str | Path) -> SearchTree | None:
    """The tree in the newest searcher state Tune saved in an experiment directory, if any."""
    # One file per driver session, named by the session's start time; the newest session's state is
    # the current one. (Not by mtime: Tune rewrites every session's file when it syncs at the end.)
    states = sorted(Path(experiment_dir).glob("searcher-state-*.pkl"))
    if not states:
        return None
    return SearchTree.from_dict(json.loads(states[-1].read_text())["tree"])
