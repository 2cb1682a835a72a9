"""`TreeRefresh`: a Tune callback that acts on the search's tree when it may have changed, not at every step.

Tune begins a step about ten times a second; writing tree.json or reprinting at every one of them cost
the driver a good part of a core. A refresh runs when a trial ends (completed or errored), when the
experiment ends, and otherwise at most once per `REFRESH_INTERVAL_S`. The run directory's files
(`tuning/run_files.py`) and the terminal's lines (`tuning/progress.py`) each refresh this way.
"""

from __future__ import annotations

import time

from ray.tune import Callback

#: Between trial events, a refresh at most this often (seconds).
REFRESH_INTERVAL_S = 1.0


class TreeRefresh(Callback):
    """Calls `refresh()` at a trial's end, at the experiment's end, and at most once per interval otherwise."""

    def __init__(self):
        self._refreshed_at = float("-inf")  # time.monotonic() of the last refresh

    def refresh(self) -> None:
        """What a subclass does with the tree."""
        raise NotImplementedError

    def on_step_begin(self, iteration, trials, **info):
        if time.monotonic() - self._refreshed_at >= REFRESH_INTERVAL_S:
            self._refresh_now()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._refresh_now()

    def on_trial_error(self, iteration, trials, trial, **info):
        self._refresh_now()

    def on_experiment_end(self, trials, **info):
        self._refresh_now()

    def _refresh_now(self) -> None:
        self._refreshed_at = time.monotonic()
        self.refresh()
