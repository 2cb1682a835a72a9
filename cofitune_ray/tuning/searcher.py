"""`TreeSearcher`: Ray Tune's search algorithm for a `SearchTree` (tree, grid or Optuna order).

Tune asks for trials; the searcher hands out the next learning-rate run of the tree's current level
(`order.next_run`, the same call `core/drive.py` makes) as the trial config
`{"part": ModelPart.to_dict(), "node_id": "n3", "run_id": "n3-lr0.0001", "lr": 1e-4, "waits_at_rung": True}`
(`waits_at_rung`: the node's runs are compared at the rung, so the run waits there for the verdict),
returns None while the level's results are still in flight, and `Searcher.FINISHED` once the tree
has ended. Results and completions go into the tree, which expands the next level.

Use as `TuneConfig(search_alg=RunLimiter(searcher, N), scheduler=PromisingChildScheduler(searcher, rules),
num_samples=-1)`: `RunLimiter` is `max_concurrent_trials=N`. `save`/`restore` write and read the tree as JSON, so
`Tuner.restore` continues the search exactly where it stopped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ray.tune.search import ConcurrencyLimiter, Searcher

from cofitune_ray.core.order import NodeOrder, TreeOrder
from cofitune_ray.core.tree import Run, SearchTree, Status


class TreeSearcher(Searcher):
    """Suggests each run of a `SearchTree` once, level by level, in `order`."""

    def __init__(self, tree: SearchTree, order: NodeOrder | None = None):
        super().__init__()  # no single metric: the tree ranks runs itself (core/objective.py)
        self.tree = tree
        self.order = order or TreeOrder()
        self.trial_runs: dict[str, str] = {}  # Tune trial id -> run id
        self.suggested_at: dict[str, float] = {}  # Tune trial id -> when Tune created it (time.time())

    def suggest(self, trial_id: str):
        if self.tree.finished:
            return Searcher.FINISHED
        pick = self.order.next_run(self.tree)
        if pick is None:
            return None  # the next level depends on results still in flight
        node, run = pick
        self.tree.start(run.id, trial_id)
        self.trial_runs[trial_id] = run.id
        self.suggested_at[trial_id] = time.time()
        return {"part": node.part.to_dict(), "node_id": node.id, "run_id": run.id, "lr": run.lr,
                "waits_at_rung": self.tree.compared_at_rung(node)}

    def run_for_trial(self, trial_id: str) -> Run | None:
        """The run a Tune trial runs, or None for a trial this searcher did not suggest."""
        run_id = self.trial_runs.get(trial_id)
        return self.tree.run(run_id) if run_id else None

    def waits_at_rung(self, trial_id: str) -> bool:
        """Whether the trial's run waits at the rung for its node's verdict (`SearchTree.waits_at_rung`)."""
        run = self.run_for_trial(trial_id)
        return run is not None and self.tree.waits_at_rung(run.id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.trial_runs:
            self.tree.record(self.trial_runs[trial_id], result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        run = self.run_for_trial(trial_id)
        if run is None or run.status not in (Status.RUNNING, Status.STOPPED, Status.PRUNED):
            return
        if error:
            self.tree.fail(run.id, f"trial {trial_id} errored after Tune's retries (see its error file)")
        else:
            self.tree.complete(run.id, result or {})

    def save(self, checkpoint_path: str) -> None:
        state = {"tree": self.tree.to_dict(), "trial_runs": self.trial_runs}
        Path(checkpoint_path).write_text(json.dumps(state))

    def restore(self, checkpoint_path: str) -> None:
        state = json.loads(Path(checkpoint_path).read_text())
        self.tree = SearchTree.from_dict(state["tree"])
        self.trial_runs = state["trial_runs"]


class RunLimiter(ConcurrencyLimiter):
    """Tune's `ConcurrencyLimiter` for a `TreeSearcher`, where a trial waiting at the rung does not count.

    The scheduler pauses such a trial until its node's verdict is known; its place goes to the next
    run, a sibling the verdict waits for among them (with one place the sibling could never start
    otherwise). A paused run the verdict keeps counts again, and resumes when a place is free.
    """

    def __init__(self, searcher: TreeSearcher, max_concurrent: int):
        super().__init__(searcher, max_concurrent)

    def suggest(self, trial_id: str):
        waiting = sum(self.searcher.waits_at_rung(t) for t in self.live_trials)
        if len(self.live_trials) - waiting >= self.max_concurrent:
            return None
        suggestion = self.searcher.suggest(trial_id)
        if suggestion not in (None, Searcher.FINISHED):
            self.live_trials.add(trial_id)
            self.num_unfinished_live_trials += 1
        return suggestion


def latest_saved_tree(experiment_dir: str | Path, wait_s: float = 60.0) -> SearchTree | None:
    """The tree in the newest searcher state Tune saved in an experiment directory, if any.

    Tune saves the state in the driver's staging directory and copies it to storage afterwards, not
    atomically: a file read while its copy is in flight is empty or cut short. Such a file is read
    again until it is whole, for up to `wait_s` seconds.
    """
    # One file per driver session, named by the session's start time; the newest session's state is
    # the current one. (Not by mtime: Tune rewrites every session's file when it syncs at the end.)
    states = sorted(Path(experiment_dir).glob("searcher-state-*.pkl"))
    if not states:
        return None
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return SearchTree.from_dict(json.loads(states[-1].read_text())["tree"])
        except json.JSONDecodeError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{states[-1]}: not a whole searcher state after {wait_s:g} s") from None
            time.sleep(0.5)
