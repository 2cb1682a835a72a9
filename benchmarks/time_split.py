"""Where a search's wall time goes, from the run's own records (`cofitune_ray/core/timeline.py`).

    python benchmarks/time_split.py RUN_DIR

RUN_DIR is a finished search's run directory (`storage_path/name`). Two tables:

1. the driver's phases (preflight, Ray start, Spectrum, base evaluation, importance, the Tune search,
   results) as shares of the search's wall time (from the start of preflight to the results written);
2. the Tune search in slot-seconds (`search.max_concurrent_trials` slots for as long as the search ran):
   each trial's time split into waiting and trial process start (from Tune creating the trial until its process
   runs: the CPUs of an ended trial freed, a placement group made, a process started and the trainable's code
   imported), trial start (the trial's function until it starts its Ray Train run), importance (the job the
   first soft-masked run starts, when the search has no cached importance), worker-group start (until rank 0 runs),
   model load (model, tokenizer, evaluator, sharding, soft-mask), training steps (data loading included),
   evaluation, checkpoint save and report (the delta checkpoint, the training state, Ray Train's upload),
   waiting at the rung (for the node's verdict), teardown (from the last report until Tune saw the trial end or
   paused it), and the idle slot time (no trial at all). Paused at the rung (from Tune's pause until it resumed or
   stopped the trial) holds no slot: it is given beside the table, and left out of the summed trial time.

It ends with the ratios the project tracks: the share of the summed trial time (from each trial's start to
its end) that is not training, and the base evaluation's own split.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from cofitune_ray.core.layout import ATTEMPTS_FILE, CONFIG_FILE, NODES_DIR, SUMMARY_FILE, TIMELINE_FILE
from cofitune_ray.core.timeline import read_timeline

DRIVER_PHASES = ("preflight", "Ray start", "Spectrum", "base evaluation", "importance", "Tune search", "results")
#: The event that opens an interval names what the interval was spent on (`reported` before anything but
#: `eval_start` is teardown).
AFTER = {"suggested": "waiting, trial process start", "started": "trial start", "importance_start": "importance",
         "importance_end": "trial start", "attempt": "worker-group start",
         "worker_started": "model load", "model_ready": "training steps", "eval_start": "evaluation",
         "eval_end": "checkpoint save and report", "reported": "training steps", "kept": "training steps",
         "attempt_ended": "teardown"}
#: After `reported`, what the next event says the interval was (anything else, `paused` too: teardown, the trial's
#: processes stopped).
AFTER_REPORT = {"eval_start": "training steps", "kept": "waiting at the rung", "started": "paused at the rung"}
TRIAL_PARTS = ("waiting, trial process start", "trial start", "importance", "worker-group start", "model load",
               "training steps", "evaluation", "checkpoint save and report", "waiting at the rung",
               "paused at the rung", "teardown")
#: A paused trial holds no slot: Tune gives its CPUs to the next trial.
NO_SLOT = "paused at the rung"


def run_events(run_dir: Path) -> list[dict]:
    """The run's timeline, with its attempts' starts and ends (`attempts.jsonl`), in time order."""
    events = read_timeline(run_dir / TIMELINE_FILE)
    attempts = run_dir / ATTEMPTS_FILE
    if attempts.is_file():
        for line in attempts.read_text().splitlines():
            entry = json.loads(line)
            events.append({"event": "attempt", "t": entry["started"]})
            if "ended" in entry:
                events.append({"event": "attempt_ended", "t": entry["ended"]})
    return sorted(events, key=lambda e: e["t"])


def split_run(events: list[dict]) -> dict[str, float]:
    """Seconds per part of one run, from its first event to the driver's `ended` (or its last event).

    From Tune's pause to the trial's next start (or its end) the run is paused, whatever else is recorded meanwhile:
    the paused trial's attempt ends just after the pause (its process stopped) and writes its end then.
    """
    parts = dict.fromkeys(TRIAL_PARTS, 0.0)
    paused = False
    for here, after in zip(events, events[1:]):
        if here["event"] == "ended":
            break
        paused = here["event"] == "paused" or (paused and here["event"] != "started")
        part = NO_SLOT if paused else AFTER.get(here["event"])
        if here["event"] == "reported":
            part = AFTER_REPORT.get(after["event"], "teardown")
        if part:
            parts[part] += after["t"] - here["t"]
    return parts


def trial_time(events: list[dict]) -> float:
    """From Tune's start of the trial to its end (0 when either is missing)."""
    times = {e["event"]: e["t"] for e in reversed(events)}  # the first of each
    return times["ended"] - times["started"] if {"started", "ended"} <= times.keys() else 0.0


def table(rows: list[tuple], header: tuple) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in
                               enumerate(zip(row, widths))) for row in [header, *rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args()
    run_dir = args.run_dir.resolve()
    spans = [r for r in read_timeline(run_dir / TIMELINE_FILE) if "span" in r]
    if not spans:
        raise SystemExit(f"{run_dir / TIMELINE_FILE}: no phases recorded (a search from before the timeline?)")
    start, end = min(s["start"] for s in spans), max(s["end"] for s in spans)
    wall = end - start
    config = yaml.safe_load((run_dir / CONFIG_FILE).read_text())
    summary = json.loads((run_dir / SUMMARY_FILE).read_text()) if (run_dir / SUMMARY_FILE).is_file() else {}

    phase_s = {name: sum(s["end"] - s["start"] for s in spans if s["span"] == name) for name in DRIVER_PHASES}
    rows = [(name, f"{phase_s[name]:.1f}", f"{phase_s[name] / wall:.1%}") for name in DRIVER_PHASES if phase_s[name]]
    rows.append(("between phases", f"{wall - sum(phase_s.values()):.1f}", f"{1 - sum(phase_s.values()) / wall:.1%}"))
    rows.append(("wall", f"{wall:.1f}", "100.0%"))
    print(f"== {run_dir}: {summary.get('trials', '?')} trials, {summary.get('train_steps', '?')} optimizer steps")
    print(table(rows, ("driver phase", "s", "share")))

    slots = config["search"]["max_concurrent_trials"]
    tune_s = phase_s["Tune search"]
    runs = {p.name: run_events(p) for p in sorted((run_dir / NODES_DIR).iterdir())
            if p.is_dir() and p.name != "base"}
    trials = {name: events for name, events in runs.items() if any(e["event"] == "started" for e in events)}
    parts = dict.fromkeys(TRIAL_PARTS, 0.0)
    for events in trials.values():
        for part, seconds in split_run(events).items():
            parts[part] += seconds
    slot_total = slots * tune_s
    paused = parts.pop(NO_SLOT)
    idle = slot_total - sum(parts.values())
    rows = [(part, f"{s:.1f}", f"{s / slot_total:.1%}", f"{s / len(trials):.1f}") for part, s in parts.items()]
    rows.append(("idle slots", f"{idle:.1f}", f"{idle / slot_total:.1%}", ""))
    rows.append(("slot time", f"{slot_total:.1f}", "100.0%", ""))
    print()
    print(f"Tune search: {tune_s:.1f} s x {slots} slots, {len(trials)} trials")
    print(table(rows, ("slot time", "slot-s", "share", "per trial")))
    print(f"{NO_SLOT}, holding no slot: {paused:.1f} s")

    summed = sum(trial_time(events) for events in trials.values()) - paused
    training = parts["training steps"]
    print()
    print(f"summed trial time (Tune's start to end of each trial, paused time left out): {summed:.1f} s; training "
          f"steps {training:.1f} s; everything else {summed - training:.1f} s = {(summed - training) / summed:.1%} "
          "of it")
    base = split_run(run_events(run_dir / NODES_DIR / "base"))
    base_parts = {k: v for k, v in base.items() if v >= 0.05}
    print("base evaluation (a Ray Train run): " + ", ".join(f"{k} {v:.1f} s" for k, v in base_parts.items()))
    if summary.get("wall_time_s") is not None:
        print(f"{SUMMARY_FILE}: wall_time_s {summary['wall_time_s']:.1f}, run_time_s {summary['run_time_s']:.1f}")


if __name__ == "__main__":
    main()
