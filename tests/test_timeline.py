"""The search's timeline records and `benchmarks/time_split.py`'s split of them (no Ray: records written here)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from cofitune_ray.core.layout import ATTEMPTS_FILE, CONFIG_FILE, TIMELINE_FILE
from cofitune_ray.core.timeline import Spans, read_timeline, record_event

REPO = Path(__file__).resolve().parent.parent


def test_spans_kept_until_the_file_is_named_then_appended(tmp_path):
    spans = Spans()
    spans.add("preflight", 10.0, 12.0)
    path = tmp_path / TIMELINE_FILE
    spans.write_to(path)
    with spans.span("Ray start"):
        pass
    record_event(path, "suggested", 13.0)
    records = read_timeline(path)
    assert records[0] == {"span": "preflight", "start": 10.0, "end": 12.0}
    assert records[1]["span"] == "Ray start" and records[1]["end"] >= records[1]["start"] > 12.0
    assert records[2] == {"event": "suggested", "t": 13.0}
    assert read_timeline(tmp_path / "none.jsonl") == []


def write_run(run_dir: Path, name: str, events: dict, attempt: tuple) -> None:
    directory = run_dir / "nodes" / name
    directory.mkdir(parents=True)
    for event, t in events:
        record_event(directory / TIMELINE_FILE, event, t)
    entry = {"started": attempt[0]} if attempt[1] is None else {"started": attempt[0], "ended": attempt[1]}
    (directory / ATTEMPTS_FILE).write_text(json.dumps(entry) + "\n")


def test_time_split_of_a_recorded_search(tmp_path):
    spans = Spans()
    for name, start, end in (("preflight", 0, 2), ("Ray start", 2, 10), ("base evaluation", 10, 20),
                             ("Tune search", 20, 120), ("results", 120, 125)):
        spans.add(name, start, end)
    spans.write_to(tmp_path / TIMELINE_FILE)
    (tmp_path / CONFIG_FILE).write_text(yaml.safe_dump({"search": {"max_concurrent_trials": 2}}))
    # base evaluation: attempt at 10, workers at 13, model at 15, evaluated 15-18, reported 18.5, attempt ends 19
    write_run(tmp_path, "base", [("worker_started", 13), ("model_ready", 15), ("eval_start", 15), ("eval_end", 18),
                                 ("reported", 18.5)], (10, 19))
    # one trial: created at 20, started 25, Ray Train run at 26, workers 30, model 32, two points, ended 100
    write_run(tmp_path, "node-n1-lr0.001", [
        ("suggested", 20), ("started", 25), ("worker_started", 30), ("model_ready", 32),
        ("eval_start", 52), ("eval_end", 57), ("reported", 58), ("kept", 60), ("eval_start", 88), ("eval_end", 93),
        ("reported", 95), ("ended", 100)], (26, 99))
    # a trial paused at the rung at 44 (its attempt, stopped with it, ends at 44.5) and stopped there at 70: paused
    # from 44 to 70, holding no slot
    write_run(tmp_path, "node-n2-lr0.0003", [
        ("suggested", 30), ("started", 31), ("worker_started", 34), ("model_ready", 35), ("eval_start", 40),
        ("eval_end", 42), ("reported", 43), ("paused", 44), ("ended", 70)], (32, 44.5))
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "time_split.py"), str(tmp_path)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    rows = {cells[0]: cells[1:] for line in done.stdout.splitlines() for cells in [re.split(r"\s{2,}", line.strip())]}
    assert rows["Tune search"] == ["100.0", "80.0%"] and rows["wall"] == ["125.0", "100.0%"]
    assert rows["between phases"] == ["0.0", "0.0%"]
    assert rows["waiting, trial process start"][0] == "6.0" and rows["trial start"][0] == "2.0"
    assert rows["worker-group start"][0] == "6.0" and rows["model load"][0] == "3.0"
    assert rows["training steps"][0] == "53.0" and rows["evaluation"][0] == "12.0"
    assert rows["waiting at the rung"][0] == "2.0" and "paused at the rung" not in rows
    assert rows["checkpoint save and report"][0] == "4.0" and rows["teardown"][0] == "6.0"  # 95 -> 99 -> 100, 43 -> 44
    assert rows["idle slots"][0] == "106.0" and rows["slot time"][0] == "200.0"
    assert "paused at the rung, holding no slot: 26.0 s" in done.stdout
    assert "summed trial time (Tune's start to end of each trial, paused time left out): 88.0 s; training steps " \
           "53.0 s; everything else 35.0 s = 39.8% of it" in done.stdout
    assert ("base evaluation (a Ray Train run): worker-group start 3.0 s, model load 2.0 s, evaluation 3.0 s, "
            "checkpoint save and report 0.5 s, teardown 0.5 s") in done.stdout
