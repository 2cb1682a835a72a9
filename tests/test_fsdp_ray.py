"""FSDP node training on a real Ray cluster (2 gloo workers) equals DDP: trained rows, soft-mask, importance,
export, and a run whose worker is killed continues from its last evaluation point.

The tiny model's FFN has 47 intermediate units, so up_proj's rows split unevenly (24 + 23) across
the two workers' shards and down_proj's 32 rows evenly.
"""

import copy
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import ray.cloudpickle
import ray.train
import torch
from transformers import AutoModelForCausalLM

from cofitune_ray.config import config_from_dict
from cofitune_ray.core.node import ModelPart
from cofitune_ray.training.checkpoint import read_delta
from cofitune_ray.training.export import export_merged
from cofitune_ray.training.model import load_model
from cofitune_ray.training.runner import run_node
from cofitune_ray.training.softmask.importance import load_cached_importance
from cofitune_ray.training.softmask.job import ensure_importance
from cofitune_ray.training.train_state import POSITION_FILE
from ray_processes import train_worker_pids
from tiny import make_world

pytestmark = pytest.mark.ray
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
NODE = ModelPart(layer_range=(0.25, 0.75), modules=("q_proj", "up_proj", "down_proj"), softmask=True)
TRAINED = {f"model.layers.{i}.{m}.weight" for i in (1, 2) for m in ("self_attn.q_proj", "mlp.up_proj", "mlp.down_proj")}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"), layers=4, intermediate=47)


def _config(world, strategy, mode="update", activation_checkpointing=False):
    data = copy.deepcopy(world)
    data["scaling"].update(num_workers=2, strategy=strategy)
    data["train"].update(epochs=2, max_steps=6, softmask_mode=mode, activation_checkpointing=activation_checkpointing)
    data["eval"]["every_n_steps"] = 2
    return config_from_dict(data)


@pytest.fixture(scope="module")
def importance(ray_cluster, world, tmp_path_factory):
    """The importance job under each strategy (separate caches)."""
    return {s: ensure_importance(_config(world, s), tmp_path_factory.mktemp(f"imp-{s}"))[0] for s in ("ddp", "fsdp")}


@pytest.fixture(scope="module")
def runs(ray_cluster, world, importance, tmp_path_factory):
    """The node trained under ddp and fsdp, in both soft-mask modes (fsdp with activation checkpointing in `grad`).

    The fsdp `update` run loses a worker after its first evaluation point; Ray Train restarts the workers
    (max_failures=1) and they continue from the training state saved there.
    """
    storage = tmp_path_factory.mktemp("nodes")
    results = {}
    for mode in ("update", "grad"):
        for strategy in ("ddp", "fsdp"):
            config = _config(world, strategy, mode, activation_checkpointing=(strategy == "fsdp" and mode == "grad"))
            name = f"{strategy}-{mode}"
            if name == "fsdp-update":
                results[strategy, mode] = _run_with_a_worker_killed(ray_cluster, config, name, storage,
                                                                    importance["ddp"])
            else:
                results[strategy, mode] = run_node(config, NODE, name, storage, lr=config.train.lr,
                                                           importance=importance["ddp"])
    return results


# runs in the Train controller: pickled by value (tests/ is not on its path)
class _MarkRegistered(ray.train.UserCallback):
    """Touches `path` once Ray Train has registered a reported checkpoint: the state a restart gets back.

    (The checkpoint's directory appears while it is still being uploaded; a kill then restarts from scratch.)
    """

    def __init__(self, path: Path):
        self.path = path

    def after_report(self, run_context, metrics, checkpoint):
        if checkpoint is not None:
            self.path.touch()


def _run_with_a_worker_killed(ray_module, config, name, storage, importance):
    """run_node, with one of its workers killed once a training state is registered and before the run ends."""
    registered = storage / f"{name}.registered"
    outcome = {}

    def run():
        try:
            outcome["result"] = run_node(config, NODE, name, storage, lr=config.train.lr, importance=importance,
                                         callbacks=[_MarkRegistered(registered)], max_failures=1)
        except Exception as exc:  # re-raised below, in the test
            outcome["error"] = exc

    runner = threading.Thread(target=run)
    runner.start()
    killed = False
    while runner.is_alive() and not killed:
        pids = train_worker_pids(ray_module)
        if registered.exists() and pids and not (storage / name / "result.json").exists():
            os.kill(pids[0], signal.SIGKILL)
            killed = True
        time.sleep(0.2)
    runner.join()
    if "error" in outcome:
        raise outcome["error"]
    assert killed, "the run finished before a worker could be killed"
    return outcome["result"]


def _last_delta(result):
    """The trained parameters at the run's last evaluation point."""
    return read_delta(result.history[-1]["checkpoint"])


def test_importance_under_fsdp_equals_ddp(importance):
    ddp, fsdp = (load_cached_importance(*_where(importance[s])) for s in ("ddp", "fsdp"))
    for key in ("head", "intermediate", "output"):
        assert torch.allclose(getattr(ddp, key), getattr(fsdp, key), atol=1e-5), key
    assert getattr(ddp, "intermediate").shape == (4, 47)


def _where(ref):
    from pathlib import Path

    return Path(ref.directory), ref.key


@pytest.mark.parametrize("mode", ["update", "grad"])
def test_fsdp_trains_the_same_rows_as_ddp(runs, world, mode):
    ddp, fsdp = _last_delta(runs["ddp", mode]), _last_delta(runs["fsdp", mode])
    base = load_model(world["model"]["path"]).state_dict()
    assert set(ddp) == set(fsdp) == TRAINED
    for name in TRAINED:
        assert not torch.equal(fsdp[name], base[name]), name  # it trained
        torch.testing.assert_close(fsdp[name], ddp[name], rtol=1e-5, atol=1e-6, msg=name)
    fsdp_points, ddp_points = runs["fsdp", mode].history, runs["ddp", mode].history
    assert [h["step"] for h in fsdp_points] == [h["step"] for h in ddp_points] == [2, 4, 6]
    for key in ("train_loss", "spec", "vers", "uni"):  # the sharded evaluation scores the same
        assert [h[key] for h in fsdp_points] == pytest.approx([h[key] for h in ddp_points], rel=1e-5), key


def test_the_killed_fsdp_run_continued_from_its_last_point(runs, world):
    points = runs["fsdp", "update"].history
    # the first point was computed by the first workers; the restarted ones resumed from a saved state
    assert points[0]["resumed_from_step"] == 0 and points[-1]["resumed_from_step"] in (2, 4)
    assert [h["step"] for h in points] == [2, 4, 6]  # no step trained twice, no point repeated
    assert not list(Path(points[-1]["checkpoint"]).parent.parent.glob(f"checkpoint_*/{POSITION_FILE}"))  # cleaned


def test_the_soft_mask_changed_the_update_in_both_strategies(runs):
    # `update` scales each row's step by its factor; `grad` is nearly cancelled by AdamW: they differ.
    for strategy in ("ddp", "fsdp"):
        update, grad = (_last_delta(runs[strategy, m]) for m in ("update", "grad"))
        assert not torch.allclose(update["model.layers.1.mlp.up_proj.weight"],
                                  grad["model.layers.1.mlp.up_proj.weight"])


def test_best_model_from_fsdp_matches_ddp_and_keeps_frozen_weights(runs, world, tmp_path):
    models = {}
    for strategy in ("ddp", "fsdp"):
        out = export_merged(world["model"]["path"], runs[strategy, "update"].history[-1]["checkpoint"],
                            tmp_path / strategy)
        models[strategy] = AutoModelForCausalLM.from_pretrained(out).state_dict()
    base = load_model(world["model"]["path"]).state_dict()
    for name, value in models["fsdp"].items():
        if name in TRAINED:
            torch.testing.assert_close(value, models["ddp"][name], rtol=1e-5, atol=1e-6, msg=name)
        else:
            assert torch.equal(value, base[name]) and torch.equal(models["ddp"][name], base[name]), name
