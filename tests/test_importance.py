"""Importance vectors without Ray: shapes, range, determinism, independence from sharding, caching."""

from pathlib import Path

import pytest
import torch

from cofitune_ray.training.model import Architecture, load_model, load_tokenizer
from cofitune_ray.training.softmask.importance import (
    ImportanceSettings,
    accumulate_importance,
    cache_dir,
    cache_key,
    compute_importance,
    importance_batches,
    importance_data,
    importance_settings,
    load_cached_importance,
    save_importance,
)
from tiny import make_world

SETTINGS = ImportanceSettings(prompt_template="compact", max_seq_length=32, max_examples=8, batch_size=3,
                              temperature=0.1, dropout=0.1, seed=0)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    data = make_world(tmp_path_factory.mktemp("world"), layers=4)
    model = load_model(data["model"]["path"])
    return data, model, Architecture.from_config(model.config), load_tokenizer(data["model"]["path"])


@pytest.mark.slow
def test_normalised_importance_shapes_and_range(world):
    data, model, arch, tokenizer = world
    importance, raw = compute_importance(model, arch, tokenizer, [data["data"]["versatility"][0]["path"]], SETTINGS)
    assert importance.head.shape == (4, 4) and importance.intermediate.shape == (4, 48)
    assert importance.output.shape == (4, 32)
    for tensor in importance.as_dict().values():
        assert tensor.min() >= 0 and tensor.max() < 1 and tensor.max() > 0.5  # z-scores reach beyond 0.55
    assert raw[0]["head"].abs().sum() > 0  # the KL between two dropout passes gives a real signal
    assert all(not p.requires_grad for p in model.parameters())  # only the virtual masks got gradients


@pytest.mark.slow
def test_deterministic_and_independent_of_sharding(world):
    data, model, arch, tokenizer = world
    path = data["data"]["versatility"][0]["path"]
    whole, tokens = accumulate_importance(model, arch, importance_batches(path, tokenizer, SETTINGS), SETTINGS)
    again, _ = accumulate_importance(model, arch, importance_batches(path, tokenizer, SETTINGS), SETTINGS)
    shards = [accumulate_importance(model, arch, importance_batches(path, tokenizer, SETTINGS, r, 2), SETTINGS)
              for r in range(2)]
    assert shards[0][1] + shards[1][1] == tokens
    for key in whole:
        assert torch.equal(whole[key], again[key])
        assert torch.allclose(shards[0][0][key] + shards[1][0][key], whole[key], rtol=1e-4, atol=1e-7)


@pytest.mark.slow
def test_cache_reused_only_when_everything_matches(world, tmp_path):
    data, model, arch, tokenizer = world
    paths = [data["data"]["versatility"][0]["path"]]
    importance, raw = compute_importance(model, arch, tokenizer, paths, SETTINGS)
    key = cache_key(data["model"]["path"], paths, SETTINGS)
    directory = cache_dir(str(tmp_path), key)
    save_importance(directory, importance, key, raw)
    loaded = load_cached_importance(directory, key)
    assert torch.equal(loaded.intermediate, importance.intermediate)
    other = cache_key(data["model"]["path"], paths, ImportanceSettings(**{**SETTINGS.__dict__, "dropout": 0.2}))
    assert cache_dir(str(tmp_path), other) != directory
    assert load_cached_importance(directory, other) is None


@pytest.mark.slow
def test_a_search_names_its_importance_and_a_cached_one_starts_no_job(world, tmp_path, monkeypatch):
    """The CLI only names where the importance is cached; the first soft-masked trial computes it
    (`compute_if_missing`), and once it is cached no Ray Train job starts (none can here: no Ray)."""
    from cofitune_ray.config import config_from_dict
    from cofitune_ray.training.softmask import job

    data, model, arch, tokenizer = world
    config = config_from_dict(data)
    ref = job.importance_ref(config, tmp_path)
    assert Path(ref.directory).parent == tmp_path / "importance" and not Path(ref.directory).exists()
    assert job.importance_state(ref) == ("computed by the first soft-masked run, if one runs, and cached in "
                                         f"{ref.directory}")
    importance, raw = compute_importance(model, arch, tokenizer, importance_data(config), importance_settings(config))
    save_importance(Path(ref.directory), importance, ref.key, raw)
    monkeypatch.setattr(job, "RunTrainer", None)  # a job would fail: calling None
    assert job.compute_if_missing(config, ref) is False
    assert job.importance_state(ref) == f"reused from cache: {ref.directory}"
    assert job.ensure_importance(config, tmp_path) == (ref, False)
