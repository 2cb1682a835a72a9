"""One call that trains and scores one node as a Ray Train job.

Works from a driver script or from inside a Ray Tune function trainable (Train V2 rules:
the TorchTrainer is built and fitted inside the trial; pass Tune's report callback to forward
every evaluation point to Tune).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray.train
from ray.train.torch import TorchTrainer

from cofitune_ray.config import Config
from cofitune_ray.core.node import ModelPart
from cofitune_ray.training.worker import train_node

HISTORY_FILE = "history.jsonl"
ATTEMPTS_FILE = "attempts.jsonl"  # one line per time the node's training was started
RESULT_FILE = "result.json"  # written last: the node finished


def finished_result(storage_dir: str | Path, name: str, part: ModelPart) -> "NodeResult | None":
    """The saved result of a node that already finished under `storage_dir/name`, if any."""
    path = Path(storage_dir) / name / RESULT_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if data["part"] != part.to_dict():
        return None
    return NodeResult(**{**data, "part": part})


@dataclass
class NodeResult:
    """A trained node: its best evaluation point, its history and what it cost."""

    part: ModelPart
    metrics: dict  # the best evaluation point (by Uni)
    history: list[dict] = field(default_factory=list)
    checkpoint: str | None = None  # the best delta checkpoint directory
    train_steps: int = 0
    wall_time_s: float = 0.0
    trained_params: int = 0

    def to_dict(self) -> dict:
        return {
            "part": self.part.to_dict(),
            "metrics": self.metrics,
            "history": self.history,
            "checkpoint": self.checkpoint,
            "train_steps": self.train_steps,
            "wall_time_s": self.wall_time_s,
            "trained_params": self.trained_params,
        }


@dataclass(frozen=True)
class ImportanceRef:
    """Where a run's cached importance lives and the key it must match."""

    directory: str
    key: dict


def scaling_config(config: Config) -> ray.train.ScalingConfig:
    """Ray Train workers as the config asks (fractional CPUs allowed, e.g. 0.5 on a 2-core machine)."""
    s = config.scaling
    resources = {"CPU": s.cpus_per_worker}
    if s.use_gpu:
        resources["GPU"] = s.gpus_per_worker
    return ray.train.ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=resources)


def run_node(
    config: Config,
    part: ModelPart,
    name: str,
    storage_dir: str | Path,
    importance: ImportanceRef | None = None,
    base_metrics: dict | None = None,
    callbacks: list | None = None,
    max_failures: int = 0,
) -> NodeResult:
    """Train (or, for the base node, only evaluate) `node`; return its best result.

    `storage_dir` must be reachable by every worker (a local path on one machine, shared storage
    on a cluster); the node's Ray Train run and history are stored under `storage_dir/name`.
    """
    if part.softmask and importance is None:
        raise ValueError(f"node {part.key()} uses soft-masking but no importance was given")
    storage_dir = Path(storage_dir).resolve()
    run_dir = storage_dir / name
    run_dir.mkdir(parents=True, exist_ok=True)
    history_path = run_dir / HISTORY_FILE
    history_path.unlink(missing_ok=True)  # a retried node trains from the start again
    started = time.time()
    with open(run_dir / ATTEMPTS_FILE, "a") as handle:
        handle.write(json.dumps({"node": part.key(), "started": started}) + "\n")
    trainer = TorchTrainer(
        train_node,
        train_loop_config={
            "config": config.to_dict(),
            "part": part.to_dict(),
            "importance_dir": importance.directory if importance else None,
            "importance_key": importance.key if importance else None,
            "base_metrics": base_metrics,
            "history_path": str(history_path),
        },
        scaling_config=scaling_config(config),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=str(storage_dir),
            callbacks=callbacks or [],
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute="uni", checkpoint_score_order="max"
            ),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
        ),
    )
    result = trainer.fit()
    history = [json.loads(line) for line in history_path.read_text().splitlines() if line.strip()]
    checkpoint, metrics = result.best_checkpoints[0] if result.best_checkpoints else (None, {})
    if not metrics:
        raise RuntimeError(f"node {part.key()} reported no evaluation (see the Ray Train logs in {run_dir})")
    node_result = NodeResult(
        part=part,
        metrics=metrics,
        history=history,
        checkpoint=checkpoint.path if checkpoint else None,
        train_steps=max((h["train_steps"] for h in history), default=0),
        wall_time_s=time.time() - started,
        trained_params=metrics["trained_params"],
    )
    tmp = run_dir / (RESULT_FILE + ".tmp")
    tmp.write_text(json.dumps(node_result.to_dict(), indent=2))
    os.replace(tmp, run_dir / RESULT_FILE)
    return node_result
