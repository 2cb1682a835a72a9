"""Tune's status table as the console shows it: the trials in flight, named after their node.

Replaces Tune's default reporter, whose table carries every reported metric (about 60 per-set
columns here) and whose header counts `num_samples=-1` as 9223372036854775807 trials. This table
shows a trial's name (its run of a node, see `tuning.trial.trial_name`), status, training step
and the scores of its latest evaluation point that the objective ranks by: Spec and Vers, and Uni
under `search.objective: uni`. Ended trials leave the table: the search's own progress
line says how each node ended, and the level line which trials start. Tune polls `should_report`
after every event; the table is printed when a trial in flight reported a new evaluation point, at
most once per `interval_s`: never more tables than evaluation points, and fewer on a long run.
"""

from __future__ import annotations

import time

from ray import tune
from ray.tune.experiment import Trial

IN_FLIGHT = (Trial.RUNNING, Trial.PAUSED)


def table_columns(objective: str) -> dict[str, str]:
    """Result key -> header: the step, Spec and Vers, and Uni when the objective is `uni`."""
    return {"step": "step", "spec": "Spec", "vers": "Vers", **({"uni": "Uni"} if objective == "uni" else {})}


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def table_rows(trials: list[Trial], columns: dict[str, str]) -> list[list[str]]:
    """One row per trial in flight: name, status, then the `columns` of its latest result."""
    return [[str(t), t.status] + [_cell(t.run_metadata.last_result.get(key)) for key in columns]
            for t in trials if t.status in IN_FLIGHT]


def status_counts(trials: list[Trial]) -> str:
    """`Tune: 2 running, 1 pending, 3 terminated` (statuses with no trial left out)."""
    counts = [(status, sum(t.status == status for t in trials))
              for status in (Trial.RUNNING, Trial.PAUSED, Trial.PENDING, Trial.TERMINATED, Trial.ERROR)]
    return "Tune: " + ", ".join(f"{n} {status.lower()}" for status, n in counts if n)


def render(trials: list[Trial], columns: dict[str, str], elapsed_s: float) -> str:
    """The status block: the counts and elapsed time, then the table of trials in flight (if any)."""
    minutes, seconds = divmod(int(elapsed_s), 60)
    lines = [f"{status_counts(trials)} ({minutes}m{seconds:02d}s)"]
    rows = table_rows(trials, columns)
    if rows:
        table = [["trial", "status", *columns.values()], *rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        lines += ["  " + "  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in
                                   enumerate(zip(row, widths))) for row in table]
    return "\n".join(lines)


def evaluation_progress(trials: list[Trial]) -> tuple[tuple[str, int], ...]:
    """(name, step) of every trial in flight that reported an evaluation point: what a new table would add."""
    return tuple((str(t), t.run_metadata.last_result["step"]) for t in trials
                 if t.status in IN_FLIGHT and "step" in t.run_metadata.last_result)


def errored_lines(trials: list[Trial]) -> list[str]:
    """One line per errored trial with its directory (Tune keeps the traceback there, in error.txt)."""
    return [f"Tune: trial {t} errored; its error file is in {t.path}" for t in trials if t.status == Trial.ERROR]


class TrialStatusTable(tune.ProgressReporter):
    """The console's Tune reporter (`tune.RunConfig(progress_reporter=...)`, legacy output engine)."""

    def __init__(self, objective: str, interval_s: float = 60.0):
        self.columns = table_columns(objective)
        self.interval_s = interval_s
        self._start = time.time()
        self._shown: tuple[tuple[str, int], ...] = ()  # the evaluation progress last printed
        self._shown_at = float("-inf")

    def setup(self, start_time: float | None = None, **kwargs) -> None:
        self._start = start_time or time.time()

    def should_report(self, trials: list[Trial], done: bool = False) -> bool:
        if done:
            return True
        progress = evaluation_progress(trials)
        return bool(progress) and progress != self._shown and time.monotonic() - self._shown_at >= self.interval_s

    def report(self, trials: list[Trial], done: bool, *sys_info: str) -> None:
        if done:  # the search's summary follows; only errors need saying here
            lines = errored_lines(trials)
        else:
            lines = [render(trials, self.columns, time.time() - self._start)]
            self._shown, self._shown_at = evaluation_progress(trials), time.monotonic()
        if lines:
            print("\n".join(lines), flush=True)
