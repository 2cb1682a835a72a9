"""The Ray Tune function trainable: one learning-rate run of a tree node per trial.

It runs the node at the trial's learning rate as a Ray Train job (`training.runner.run_node`),
forwards every evaluation point to Tune (so the scheduler can stop or pause it), and ends with one
`final: true` result holding the run's cost. The base model is evaluated once before the search;
its trial reports that cached result instead of evaluating again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from cofitune_ray.config import Config
from cofitune_ray.core.layout import TIMELINE_FILE, run_dir_name
from cofitune_ray.core.node import ModelPart
from cofitune_ray.core.timeline import record_event
from cofitune_ray.training.runner import RunResult, finished_result, run_node, stopped_history
from cofitune_ray.training.softmask import ImportanceRef


@dataclass(frozen=True)
class RunContext:
    """What every trial of one search shares (passed with `tune.with_parameters`)."""

    config: Config  # validated once, by the CLI
    nodes_dir: str  # where each run's Ray Train run is stored
    base_result: dict  # RunResult.to_dict() of the base model
    importance: ImportanceRef | None = None  # where soft-masked runs find it (the first one computes it)


def final_result(result: RunResult) -> dict:
    """The trial's last result: the run's cost."""
    return {
        "final": True,
        "trained_params": result.trained_params,
        "train_steps": result.train_steps,
        "total_steps": result.total_steps,
        "wall_time_s": result.wall_time_s,
    }


def replay(result: RunResult) -> None:
    """Report a finished run's evaluation points and final result again, without training.

    Used when Tune restarts a trial whose run had already finished (the driver died between the
    run's end and Tune's next experiment checkpoint): finished runs are never trained twice.
    The points carry `replayed: true`, so the scheduler does not judge them again.
    """
    for point in result.history:
        tune.report({**point, "replayed": True})
    tune.report({**final_result(result), "replayed": True})


def trial_name(trial) -> str:
    """A Tune trial's name and directory (`TuneConfig(trial_name_creator=..., trial_dirname_creator=...)`).

    The trial's run of a node (`run_id`, once a node runs several learning rates), or the node, e.g. `n3`:
    unique within a search, so `tune/n3/` is that trial's directory.
    """
    return trial.config.get("run_id") or trial.config["node_id"]


def node_trial(trial_config: dict, run: RunContext) -> None:
    """Tune trainable: train and score the run in `trial_config` (or replay its saved result)."""
    part = ModelPart.from_dict(trial_config["part"])
    lr = trial_config.get("lr")
    name = run_dir_name(trial_config.get("run_id") or trial_config["node_id"])
    if part.kind == "base":
        replay(RunResult.from_dict(run.base_result))
        return
    done = finished_result(run.nodes_dir, name, part, lr)
    if done is not None:
        replay(done)
        return
    stopped = stopped_history(Path(run.nodes_dir) / name)
    if stopped is not None:  # the search stopped this run before the driver died: report, do not train
        for point in stopped:
            tune.report({**point, "replayed": True})
        return
    if part.softmask and run.importance is not None:
        # the search's first soft-masked run computes the importance; the others find it cached
        from cofitune_ray.training.softmask.job import compute_if_missing  # (the model's code: here only)

        run_dir = Path(run.nodes_dir) / name
        run_dir.mkdir(parents=True, exist_ok=True)
        record_event(run_dir / TIMELINE_FILE, "importance_start")
        compute_if_missing(run.config, run.importance)
        record_event(run_dir / TIMELINE_FILE, "importance_end")
    base = run.base_result["history"][0]
    result = run_node(
        run.config,
        part,
        name=name,
        storage_dir=run.nodes_dir,
        lr=lr,
        importance=run.importance,
        base_metrics={"spec": base["spec"], "vers": base["vers"]},
        callbacks=[TuneReportCallback()],
        waits_at_rung=trial_config.get("waits_at_rung", False),
    )
    tune.report(final_result(result))
