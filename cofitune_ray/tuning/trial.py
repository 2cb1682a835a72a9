"""The Ray Tune function trainable: one tree node per trial.

It runs the node as a Ray Train job (`training.runner.run_node`), forwards every evaluation point to
Tune (so the scheduler can prune), and ends with one `final: true` result holding the best
evaluation point, the checkpoint and the cost. The base model is evaluated once before the
search; its trial reports that cached result instead of evaluating again.
"""

from __future__ import annotations

from dataclasses import dataclass

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from cofitune_ray.config import config_from_dict
from cofitune_ray.core.node import ModelPart
from cofitune_ray.training.runner import ImportanceRef, NodeResult, finished_result, run_node


@dataclass(frozen=True)
class RunContext:
    """What every trial of one search shares (passed with `tune.with_parameters`)."""

    config: dict  # Config.to_dict()
    nodes_dir: str  # where each node's Ray Train run is stored
    base_result: dict  # NodeResult.to_dict() of the base model
    importance: ImportanceRef | None = None


def final_result(result: NodeResult) -> dict:
    """The trial's last result: its best evaluation point, checkpoint and cost."""
    best = result.metrics
    return {
        "final": True,
        "spec": best["spec"],
        "vers": best["vers"],
        "uni": best["uni"],
        "best_spec": best["spec"],
        "best_vers": best["vers"],
        "best_uni": best["uni"],
        "best_eval_index": best["eval_index"],
        "checkpoint": result.checkpoint,
        "trained_params": result.trained_params,
        "train_steps": result.train_steps,
        "wall_time_s": result.wall_time_s,
    }


def replay(result: NodeResult) -> None:
    """Report a finished node's evaluation points and final result again, without training.

    Used when Tune restarts a trial whose node had already finished (the driver died between the
    node's end and Tune's next experiment checkpoint): finished nodes are never trained twice.
    The points carry `replayed: true`, so the scheduler does not judge them again.
    """
    for point in result.history:
        tune.report({**point, "replayed": True})
    tune.report({**result.metrics, **final_result(result), "replayed": True})


def node_trial(trial_config: dict, run: RunContext) -> None:
    """Tune trainable: train and score the node in `trial_config` (or replay its saved result)."""
    part = ModelPart.from_dict(trial_config["part"])
    name = f"node-{trial_config['node_id']}"
    if part.kind == "base":
        replay(NodeResult(**{**run.base_result, "part": part}))
        return
    done = finished_result(run.nodes_dir, name, part)
    if done is not None:
        replay(done)
        return
    result = run_node(
        config_from_dict(run.config),
        part,
        name=name,
        storage_dir=run.nodes_dir,
        importance=run.importance,
        base_metrics={"spec": run.base_result["metrics"]["spec"], "vers": run.base_result["metrics"]["vers"]},
        callbacks=[TuneReportCallback()],
    )
    tune.report(final_result(result))
