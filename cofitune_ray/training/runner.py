"""One call that trains and scores one learning-rate run of a node as a Ray Train job.

Works from a driver script or from inside a Ray Tune function trainable (Train V2 rules:
the TorchTrainer is built and fitted inside the trial; pass Tune's report callback to forward
every evaluation point to Tune).

A run's directory `storage_dir/name/` holds `history.jsonl` (one line per evaluation point),
`points/eval-<k>/` (each point's delta checkpoint), `attempts.jsonl` (one line per start, with its
end when the attempt ended in this process), `kept.json` (the search kept the run at the rung: it
trains on past its rung point), Ray Train's `checkpoint_*/` (the training state of
the latest evaluation point, which a retried attempt continues from; deleted when the run
finishes) and, written last, `result.json` (the run finished; a restarted trial replays it instead
of training).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray.train
from ray.train.torch import TorchTrainer
from ray.train.v2._internal.callbacks.datasets import DatasetsCallback

from cofitune_ray.config import Config
from cofitune_ray.core.files import write_whole
from cofitune_ray.core.layout import (
    ATTEMPTS_FILE,
    HISTORY_FILE,
    RAY_TRAIN_CHECKPOINTS,
    RAY_TRAIN_SNAPSHOT,
    RESULT_FILE,
    RUNG_KEPT_FILE,
    STOPPED_FILE,
)
from cofitune_ray.core.node import ModelPart
from cofitune_ray.training.softmask import ImportanceRef


@dataclass
class RunResult:
    """A finished run: its evaluation points and what it cost."""

    part: ModelPart
    lr: float | None  # None for the base model (evaluated, not trained)
    history: list[dict] = field(default_factory=list)
    train_steps: int = 0
    total_steps: int = 0
    wall_time_s: float = 0.0
    trained_params: int = 0

    def to_dict(self) -> dict:
        return {
            "part": self.part.to_dict(),
            "lr": self.lr,
            "history": self.history,
            "train_steps": self.train_steps,
            "total_steps": self.total_steps,
            "wall_time_s": self.wall_time_s,
            "trained_params": self.trained_params,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "RunResult":
        return cls(**{**data, "part": ModelPart.from_dict(data["part"])})


def finished_result(storage_dir: str | Path, name: str, part: ModelPart, lr: float | None) -> RunResult | None:
    """The saved result of a run that already finished under `storage_dir/name`, if any."""
    path = Path(storage_dir) / name / RESULT_FILE
    if not path.is_file():
        return None
    result = RunResult.from_dict(json.loads(path.read_text()))
    return result if result.part == part and result.lr == lr else None


class RunTrainer(TorchTrainer):
    """The TorchTrainer of every Ray Train run of a search (a node's run, the importance job), without Ray Data.

    Ray Train starts a `DatasetManager` actor for each run, datasets or not: one more process per run (about
    1.4 CPU-seconds on a 2-core machine, docs/benchmarks.md). The runs read their data themselves and pass no
    datasets, so it is left out. `_create_default_callbacks` is Ray Train's own (ray 2.60, pinned in pyproject.toml);
    `tests/test_node_runner_ray.py` checks that a run starts no such actor.
    """

    def __init__(self, *args, **kwargs):
        if kwargs.get("datasets"):
            raise ValueError("RunTrainer runs without Ray Data: pass no datasets")
        super().__init__(*args, **kwargs)

    def _create_default_callbacks(self) -> list:
        return [callback for callback in super()._create_default_callbacks()
                if not isinstance(callback, DatasetsCallback)]


def scaling_config(config: Config) -> ray.train.ScalingConfig:
    """Ray Train workers as the config asks (fractional CPUs allowed, e.g. 0.5 on a 2-core machine)."""
    s = config.scaling
    resources = {"CPU": s.cpus_per_worker}
    if s.use_gpu:
        resources["GPU"] = s.gpus_per_worker
    return ray.train.ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=resources)


def _train_node(loop_config: dict) -> None:
    """The workers' entry point (`training/worker.py`'s `train_node`), imported where it runs: a trial's own
    process, which only builds the TorchTrainer, then never imports transformers and the training code."""
    from cofitune_ray.training.worker import train_node

    train_node(loop_config)


def run_node(
    config: Config,
    part: ModelPart,
    name: str,
    storage_dir: str | Path,
    lr: float | None = None,
    importance: ImportanceRef | None = None,
    base_metrics: dict | None = None,
    callbacks: list | None = None,
    max_failures: int = 0,
    waits_at_rung: bool = False,
) -> RunResult:
    """Train `part` at learning rate `lr` (required for a part that trains: the search decides it,
    `LearningRates.for_node`), or only evaluate it for the base model; return the run's evaluation points
    and cost.

    `waits_at_rung`: the run's node compares its runs at the rung, so the workers train past the rung
    point only once the search has kept the run there (`keep_at_rung`).

    `storage_dir` must be reachable by every worker (a local path on one machine, shared storage
    on a cluster); the run's Ray Train run, history and checkpoints are stored under `storage_dir/name`.
    """
    if part.softmask and importance is None:
        raise ValueError(f"node {part.key()} uses soft-masking but no importance was given")
    if part.trains and lr is None:
        raise ValueError(f"node {part.key()} trains: give the learning rate of its run")
    lr = lr if part.trains else None
    storage_dir = Path(storage_dir).resolve()
    run_dir = storage_dir / name
    run_dir.mkdir(parents=True, exist_ok=True)
    history_path = run_dir / HISTORY_FILE  # a retried attempt's workers keep the points before their state
    attempt = _start_attempt(run_dir, {"node": part.key(), "lr": lr, "started": time.time()})
    trainer = RunTrainer(
        _train_node,
        train_loop_config={
            "config": config,  # a validated Config travels as itself (pickled), never as text to re-validate
            "part": part.to_dict(),
            "lr": lr,
            "importance_dir": importance.directory if importance else None,
            "importance_key": importance.key if importance else None,
            "base_metrics": base_metrics,
            "run_dir": str(run_dir),
            "waits_at_rung": waits_at_rung,
        },
        scaling_config=scaling_config(config),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=str(storage_dir),
            callbacks=callbacks or [],
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            # the training state of the latest evaluation point: what a retried attempt continues from
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
        ),
    )
    try:
        trainer.fit()
    finally:
        _end_attempt(run_dir, attempt)
    history = [json.loads(line) for line in history_path.read_text().splitlines() if line.strip()] \
        if history_path.is_file() else []
    if not history:
        raise RuntimeError(f"node {part.key()} at lr {lr} reported no evaluation (see the Ray Train logs in {run_dir})")
    last = history[-1]
    result = RunResult(part=part, lr=lr, history=history, train_steps=last["train_steps"],
                       total_steps=last["total_steps"], wall_time_s=attempts_wall_time(run_dir),
                       trained_params=last["trained_params"])
    write_whole(run_dir / RESULT_FILE, json.dumps(result.to_dict(), indent=2))
    discard_train_state(run_dir)  # a finished run is replayed, never resumed
    return result


def keep_at_rung(run_dir: Path) -> None:
    """The search kept this run at the rung: its workers (waiting there now, or resumed there later) train on."""
    mark = Path(run_dir) / RUNG_KEPT_FILE
    if not mark.is_file():
        write_whole(mark, json.dumps({"kept": True}))


def end_stopped_run(run_dir: Path, reason: str) -> None:
    """A run the search stopped: mark it, then discard its training state.

    Tune restarts the trials that were running when the driver died, a stopped run's among them when
    the driver died before Tune saved the stop; with the mark, such a trial replays the run's points
    (`stopped_history`) instead of training it again.
    """
    mark = Path(run_dir) / STOPPED_FILE
    if not mark.is_file():
        write_whole(mark, json.dumps({"reason": reason}))
    discard_train_state(run_dir)


def stopped_history(run_dir: Path) -> list[dict] | None:
    """The evaluation points of a run the search stopped (`end_stopped_run`), or None if it was not stopped."""
    if not (Path(run_dir) / STOPPED_FILE).is_file():
        return None
    path = Path(run_dir) / HISTORY_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def discard_train_state(run_dir: Path) -> None:
    """Delete the training state a retry would resume from (trained parameters and optimizer state: large).

    For a run that should not be resumed again: a finished one, or one the scheduler stopped. Ray
    Train's record of the run's checkpoints goes first, so that an attempt that does come later under
    the same name starts the run from step 0 instead of failing on a checkpoint that is gone: Tune
    restarts a stopped run's trial when the driver died before it saved the stop.
    """
    (Path(run_dir) / RAY_TRAIN_SNAPSHOT).unlink(missing_ok=True)
    for state in Path(run_dir).glob(RAY_TRAIN_CHECKPOINTS):  # also the part an attempt killed mid-upload left behind
        if state.is_dir():
            shutil.rmtree(state, ignore_errors=True)


def _start_attempt(run_dir: Path, entry: dict) -> int:
    """Append an attempt to the run's attempts file; return its number (1, 2, ...).

    An earlier attempt without an end had its process ended from outside (its trial paused at the rung,
    or the search's driver killed): it is given an end at its last evaluation point (when the run's
    history was last written), marked `"ended_at": "last point"`.
    """
    path = run_dir / ATTEMPTS_FILE
    entries = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    history = run_dir / HISTORY_FILE
    last_point = history.stat().st_mtime if history.is_file() else None
    for earlier in entries:
        if "ended" not in earlier and last_point is not None and last_point > earlier["started"]:
            earlier.update(ended=last_point, ended_at="last point")
    write_whole(path, "".join(json.dumps(e) + "\n" for e in [*entries, entry]))
    return len(entries) + 1


def _end_attempt(run_dir: Path, attempt: int) -> None:
    """Record when attempt number `attempt` ended (it finished or its Ray Train run failed)."""
    path = run_dir / ATTEMPTS_FILE
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    entries[attempt - 1]["ended"] = time.time()
    write_whole(path, "".join(json.dumps(e) + "\n" for e in entries))


def attempts_wall_time(run_dir: Path) -> float:
    """The run's cost in seconds: every attempt from its start to its end (for an attempt ended from outside,
    to its last evaluation point; one that reported none is not counted).
    """
    entries = [json.loads(line) for line in (run_dir / ATTEMPTS_FILE).read_text().splitlines()]
    return sum(e["ended"] - e["started"] for e in entries if "ended" in e)
