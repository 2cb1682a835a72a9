"""What the terminal shows during a search, and where everything else goes.

The terminal gets the search's own lines (`[cofitune] ...`, printed by this driver), Tune's status
table (`tuning/status_table.py`), the warnings and errors of this driver (Ray, Tune, the project)
and the summary. Everything else goes to log files:

- Ray's worker processes (Tune trials, Ray Train controllers and workers, Ray Train's helper
  actors): Ray writes their stdout and stderr to its session log directory (`worker-*.out|err`,
  Ray Train's own logs under `train/`). `ray.init(log_to_driver=False)` keeps them there instead
  of copying every line here: Ray Train's INFO lines (worker group start, each report with its
  metric dict), the core worker's note on `PreemptionWatcher`'s constructor arguments, library
  progress bars. (Ray Train's "Failed to query Ray Train Controller actor state" warnings are gone
  at their cause: `cluster.py`.) A trial that fails still reaches the terminal through the driver:
  Tune logs its error and the search's node line says `failed`.
- this driver's Ray and Tune log records at INFO and above: `<run dir>/logs/driver.log`.
- warnings about Ray's own pace, not the search's (`FILE_ONLY`): Tune's "The `callbacks.on_step_begin`
  operation took 0.503 s, which may be a performance bottleneck" (a busy 2-core machine, not a fault), and
  the raylet's "8 PYTHON worker processes have been started on node ... 4x the maximum expected startup
  concurrency", which every search passes (each trial starts its own Ray Train controller and workers).
  They go to `driver.log` only; the raylet's is also in its own log, `raylet.out`. Other raylet messages
  (a worker killed, memory running low) still reach the terminal.
- transformers' progress bars while the driver loads and saves the best model: switched off.

`verbose=True` keeps Ray's defaults on the terminal (every worker line, INFO records, progress
bars); the log files are written either way.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import ray._private.worker as ray_worker
from transformers.utils import logging as transformers_logging

from cofitune_ray.core.layout import DRIVER_LOG, LOG_DIR

# Tune's `progress_reporter` (our status table) is honoured by its legacy output engine only.
TUNE_OUTPUT_ENGINE = {"RAY_AIR_NEW_OUTPUT": "0"}
#: Warnings kept off the terminal of a default run (written to driver.log): text each one contains.
FILE_ONLY = ("which may be a performance bottleneck",  # Tune's `warn_if_slow`
             "worker processes have been started on node")  # the raylet's worker-pool size warning


def _file_only(text: str) -> bool:
    return any(part in text for part in FILE_ONLY)


class _TerminalFilter(logging.Filter):
    """Drops the `FILE_ONLY` records on the terminal's handler (the driver log's handler keeps them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _file_only(record.getMessage())


def _raylet_printer(print_to_stdstream, driver_log: logging.Handler):
    """Ray's printer of raylet messages (`ray._private.worker.print_to_stdstream`, which the driver's error
    listener calls), with the `FILE_ONLY` ones sent to `driver_log` instead."""

    def print_or_log(data: dict, ignore_prefix: bool) -> None:
        kept = [line for line in data["lines"] if not _file_only(line)]
        for line in data["lines"]:
            if line not in kept:
                driver_log.handle(logging.makeLogRecord({"name": f"ray.{data.get('pid')}", "msg": line,
                                                         "levelno": logging.WARNING, "levelname": "WARNING"}))
        if kept:
            print_to_stdstream({**data, "lines": kept}, ignore_prefix)

    return print_or_log


@contextmanager
def console_output(run_dir: Path, verbose: bool) -> Iterator[Path]:
    """Route this driver's output for one search, as the module docstring says; yields the log folder.

    Undone on exit (handler, levels, progress bars, environment), so a second search in the same
    process starts from Python's and Ray's defaults again.
    """
    log_dir = run_dir / LOG_DIR
    log_dir.mkdir(parents=True, exist_ok=True)
    ray_logger = logging.getLogger("ray")  # configured by `import ray`: one handler to stderr
    terminal_levels = {handler: handler.level for handler in ray_logger.handlers}
    driver_log = logging.FileHandler(log_dir / DRIVER_LOG)
    driver_log.setLevel(logging.INFO)  # ray.init gives it Ray's own format, as it does the terminal's handler
    bars = transformers_logging.is_progress_bar_enabled()
    saved_env = {key: os.environ.get(key) for key in TUNE_OUTPUT_ENGINE}
    os.environ.update(TUNE_OUTPUT_ENGINE)
    terminal_filter = _TerminalFilter()
    print_to_stdstream = ray_worker.print_to_stdstream
    if not verbose:
        for handler in terminal_levels:
            handler.setLevel(logging.WARNING)
            handler.addFilter(terminal_filter)
        transformers_logging.disable_progress_bar()
        ray_worker.print_to_stdstream = _raylet_printer(print_to_stdstream, driver_log)
    ray_logger.addHandler(driver_log)
    try:
        yield log_dir
    finally:
        ray_worker.print_to_stdstream = print_to_stdstream
        ray_logger.removeHandler(driver_log)
        driver_log.close()
        for handler, level in terminal_levels.items():
            handler.setLevel(level)
            handler.removeFilter(terminal_filter)
        if bars:
            transformers_logging.enable_progress_bar()
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def log_locations_line(log_dir: Path, ray_session_dir: str | None, verbose: bool) -> str:
    """The start-up line that says where the logs are."""
    ray_logs = f"{ray_session_dir}/logs" if ray_session_dir else "the Ray cluster's session log directory"
    shown = "also shown here (--verbose)" if verbose else "not shown here (--verbose shows them)"
    return (f"[cofitune] logs: Ray's workers and Ray Train in {ray_logs}, "
            f"this driver's in {log_dir / DRIVER_LOG}; {shown}")
