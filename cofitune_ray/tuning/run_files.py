"""`RunFiles`: the run directory kept in step with the search's tree while the search runs.

At every refresh (`tuning/refresh.py`) it marks the runs the search stopped (before any line reports
the stop, so a stopped run is never trained again even if the driver dies now; at every refresh, not
once, because a stopped trial's worker can still upload a checkpoint after the first discard), lets the
runs the rung kept train past their rung point (`training.runner.keep_at_rung`), deletes checkpoints no
ranking can need any more once a level has ended, and writes tree.json. It also records each trial's
start and end in its run's timeline (`core/timeline.py`). Pass it before `SearchProgress` in Tune's
callbacks: Tune calls them in order, so the files are written before the lines say so.
"""

from __future__ import annotations

from pathlib import Path

from cofitune_ray.core.layout import NODES_DIR, TIMELINE_FILE, TREE_FILE, run_dir_name
from cofitune_ray.core.timeline import record_event
from cofitune_ray.core.tree import STOPPED_EARLY
from cofitune_ray.training.checkpoint import delete_checkpoints
from cofitune_ray.training.runner import end_stopped_run, keep_at_rung
from cofitune_ray.tuning.refresh import TreeRefresh
from cofitune_ray.tuning.searcher import TreeSearcher


class RunFiles(TreeRefresh):
    """Stopped marks, the rung's keep marks, checkpoint clean-up, tree.json and the trials' timeline events."""

    def __init__(self, searcher: TreeSearcher, run_dir: str):
        super().__init__()
        self.searcher = searcher
        self.run_dir = run_dir
        self._paused: set[str] = set()  # trials whose current pause is recorded

    def on_trial_start(self, iteration, trials, trial, **info):
        suggested = self.searcher.suggested_at.get(trial.trial_id)
        if suggested is not None:
            self._record(trial, "suggested", suggested)
        self._paused.discard(trial.trial_id)
        self._record(trial, "started")

    def on_step_end(self, iteration, trials, **info):
        """A trial Tune has paused (at the rung: it holds no CPUs until resumed or stopped) records `paused`; Tune
        has no callback for a pause, and its loop ends a step about ten times a second."""
        for trial in trials:
            if trial.status == "PAUSED" and trial.trial_id not in self._paused:
                self._paused.add(trial.trial_id)
                self._record(trial, "paused")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._record(trial, "ended")
        super().on_trial_complete(iteration, trials, trial, **info)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._record(trial, "ended")
        super().on_trial_error(iteration, trials, trial, **info)

    def _run_dir(self, run_id: str) -> Path:
        return Path(self.run_dir) / NODES_DIR / run_dir_name(run_id)

    def _record(self, trial, event: str, t: float | None = None) -> None:
        """The trial's run records `event` in its timeline (`core/timeline.py`)."""
        run = self.searcher.run_for_trial(trial.trial_id)
        if run is not None:
            self._run_dir(run.id).mkdir(parents=True, exist_ok=True)
            record_event(self._run_dir(run.id) / TIMELINE_FILE, event, t)

    def refresh(self) -> None:
        tree = self.searcher.tree
        for run in (r for n in tree.nodes.values() for r in n.runs if r.status in STOPPED_EARLY):
            end_stopped_run(self._run_dir(run.id), run.stop_reason or run.status)
        for run in tree.in_flight():  # the rung kept it: its workers may train past the rung
            if run.rung_point() and tree.compared_at_rung(tree.node_of_run(run.id)) and not tree.waits_at_rung(run.id):
                keep_at_rung(self._run_dir(run.id))
        disposable = tree.disposable_checkpoints()
        if disposable:
            tree.forget_checkpoints(delete_checkpoints(disposable))
        tree.save(Path(self.run_dir) / TREE_FILE)
