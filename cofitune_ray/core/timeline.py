"""Where a search spends its time: timestamped records, one JSON line each (`benchmarks/time_split.py` reads them).

The driver records its phases as spans (`{"span": name, "start": t, "end": t}`) in `<run dir>/timeline.jsonl`:
preflight, Ray start, Spectrum, base evaluation, importance, the Tune search, results. Each learning-rate
run records events (`{"event": name, "t": t}`) in `<run dir>/nodes/<run>/timeline.jsonl`:

- the driver (`tuning/progress.py`): `suggested` (Tune created the trial), `started` (Tune started it: its
  resources were free), `ended` (Tune saw it end, stopped or not);
- rank 0 of the run's Ray Train workers (`training/worker.py`): `worker_started`, `model_ready` (model,
  tokenizer, evaluator, sharding and soft-mask in place), and at each evaluation point `eval_start`
  (training paused), `eval_end` (scores in) and `reported` (delta checkpoint, history line and training
  state saved, reported to Ray Train).

The run's `attempts.jsonl` (`training/runner.py`) adds when the trial started its Ray Train run. Times are
`time.time()` seconds; records are appended, so a reader sees every line written so far.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def record_event(path: str | Path, event: str, t: float | None = None) -> None:
    """Append `{"event": event, "t": t}` (t: now when None) to the timeline file `path`."""
    with open(path, "a") as handle:
        handle.write(json.dumps({"event": event, "t": time.time() if t is None else t}) + "\n")


def read_timeline(path: str | Path) -> list[dict]:
    """Every record of a timeline file (none when it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Spans:
    """The driver's phases; kept in memory until `write_to` names the file, then appended as they end."""

    def __init__(self) -> None:
        self.records: list[dict] = []
        self.path: Path | None = None

    def write_to(self, path: str | Path) -> None:
        """From now on the spans go to `path` (the ones already ended first)."""
        self.path = Path(path)
        with open(self.path, "a") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in self.records)

    @contextmanager
    def span(self, name: str) -> Iterator[None]:
        """Record the time the `with` block takes as the phase `name`."""
        start = time.time()
        try:
            yield
        finally:
            self.add(name, start, time.time())

    def add(self, name: str, start: float, end: float) -> None:
        """Record the phase `name` from `start` to `end`."""
        entry = {"span": name, "start": start, "end": end}
        self.records.append(entry)
        if self.path is not None:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(entry) + "\n")
