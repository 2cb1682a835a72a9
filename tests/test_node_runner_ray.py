"""One node on a real Ray cluster: 2 gloo DDP workers, importance from 1 and 2 workers, merge and export."""

import copy
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from cofitune_ray.config import config_from_dict
from cofitune_ray.core.layout import ATTEMPTS_FILE
from cofitune_ray.core.node import ModelPart
from cofitune_ray.training.checkpoint import read_delta
from cofitune_ray.training.export import MergeError, export_merged, merge_delta
from cofitune_ray.training.model import load_model
from cofitune_ray.training.runner import run_node
from cofitune_ray.training.softmask.importance import load_cached_importance
from cofitune_ray.training.softmask.job import ensure_importance
from ray_processes import actors_started
from tiny import make_model, make_world

pytestmark = pytest.mark.ray
NODE = ModelPart(layer_range=(0.25, 0.5), modules=("up_proj", "down_proj"), softmask=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"), layers=4)


def _config(world, workers):
    data = copy.deepcopy(world)
    data["scaling"]["num_workers"] = workers
    data["train"]["max_steps"] = 4
    data["eval"]["every_n_steps"] = 2
    return config_from_dict(data)


@pytest.fixture(scope="module")
def trained(ray_cluster, world, tmp_path_factory):
    storage = tmp_path_factory.mktemp("storage")
    config = _config(world, workers=2)
    importance, computed = ensure_importance(config, storage)
    result = run_node(config, NODE, "node-a", storage, lr=2e-3, importance=importance)
    return config, storage, importance, computed, result


def test_importance_from_one_and_two_workers_agree(trained, world, tmp_path):
    config, storage, importance, computed, _ = trained
    assert computed
    assert ensure_importance(config, storage) == (importance, False)  # cached: no second job
    single, _ = ensure_importance(_config(world, workers=1), tmp_path)
    two = load_cached_importance(Path(importance.directory), importance.key)
    one = load_cached_importance(Path(single.directory), single.key)
    for key in ("head", "intermediate", "output"):
        assert torch.allclose(getattr(one, key), getattr(two, key), atol=1e-4), key


def test_node_trains_only_its_parameters_on_both_ranks(trained, world):
    config, storage, _, _, result = trained
    assert [h["step"] for h in result.history] == [2, 4] and [h["eval_index"] for h in result.history] == [1, 2]
    assert result.lr == 2e-3 and result.total_steps == 4 and all(h["total_steps"] == 4 for h in result.history)
    assert result.train_steps == 4 and result.trained_params == 1 * 2 * 48 * 32  # layer 1 of 4: up and down
    assert all(h["rank_checksum_spread"] == 0.0 for h in result.history)  # DDP ranks identical
    # every evaluation point's delta checkpoint, in the run's points/ folder
    assert [h["checkpoint"] for h in result.history] == [str(storage / "node-a" / "points" / f"eval-{k}")
                                                         for k in (1, 2)]
    for point in result.history:
        delta = read_delta(point["checkpoint"])
        assert sorted(delta) == sorted(f"model.layers.{i}.mlp.{m}.weight"
                                       for i in (1,) for m in ("up_proj", "down_proj"))
    first, last = (read_delta(h["checkpoint"]) for h in result.history)
    assert not torch.equal(first["model.layers.1.mlp.up_proj.weight"], last["model.layers.1.mlp.up_proj.weight"])
    # one attempt, never resumed; its training state (for a retry) is gone once the run has finished
    assert all(h["resumed_from_step"] == 0 and h["peak_memory_gb"] is None for h in result.history)
    assert not [p for p in (storage / "node-a").glob("checkpoint_*") if p.is_dir()]
    (attempt,) = [json.loads(line) for line in (storage / "node-a" / ATTEMPTS_FILE).read_text().splitlines()]
    assert result.wall_time_s == pytest.approx(attempt["ended"] - attempt["started"]) and result.wall_time_s > 0


def test_merged_model_reproduces_the_trained_model(trained, tmp_path):
    config, _, _, _, result = trained
    checkpoint = result.history[-1]["checkpoint"]
    out = export_merged(config.model.path, checkpoint, tmp_path / "merged")  # verifies the fingerprint
    merged = AutoModelForCausalLM.from_pretrained(out)
    base = load_model(config.model.path)
    delta = read_delta(checkpoint)
    for name, value in merged.state_dict().items():
        expected = delta.get(name, base.state_dict()[name])
        assert torch.equal(value, expected), name
    assert (out / "tokenizer.json").is_file() and (out / "cofitune_node.json").is_file()


def test_merge_into_a_different_base_is_refused(trained, tmp_path):
    config, _, _, _, result = trained
    checkpoint = result.history[0]["checkpoint"]
    other = make_model(tmp_path / "other", layers=4, seed=123)
    merge_delta(other, checkpoint)
    with pytest.raises(MergeError, match="frozen_sum"):
        export_merged(str(tmp_path / "other"), checkpoint, tmp_path / "out", tokenizer_path=config.model.path)


def test_base_node_is_evaluated_not_trained(trained, ray_cluster):
    config, storage, _, _, _ = trained
    before = actors_started()
    result = run_node(config, ModelPart(kind="base"), "base", storage, lr=1e-3)
    started = actors_started() - before
    assert started["TrainController"] == 1 and started["DatasetManager"] == 0  # RunTrainer: no Ray Data
    assert result.trained_params == 0 and result.train_steps == 0 and result.lr is None
    (point,) = result.history
    assert point["checkpoint"] is None and not (storage / "base" / "points").exists()
    assert 0.0 <= point["spec"] <= 1.0 and 0.0 <= point["vers"] <= 1.0


def test_a_run_whose_state_was_discarded_starts_again_from_step_0(trained):
    """(Last in this module: it trains node-a again.) Tune restarts the trial of a run the scheduler had
    stopped (its state discarded) when the driver died before saving the stop."""
    config, storage, importance, _, first = trained
    assert not [p for p in (storage / "node-a").glob("checkpoint_*") if p.is_dir()]  # discarded when it finished
    again = run_node(config, NODE, "node-a", storage, lr=2e-3, importance=importance)
    assert [p["resumed_from_step"] for p in again.history] == [0, 0]
    assert [p["step"] for p in again.history] == [p["step"] for p in first.history] == [2, 4]
    assert [p["train_loss"] for p in again.history] == pytest.approx([p["train_loss"] for p in first.history])

