"""The importance computation as a Ray Train job, cached on storage and reused when nothing changed.

A search computes it only when a soft-masked node is about to run: the first such trial runs the job
(`compute_if_missing`), later ones find the cache. A search whose tree never reaches a soft-masked node
never pays for it.
"""

from __future__ import annotations

import fcntl
from pathlib import Path

import ray.train
import ray.train.torch

from cofitune_ray.config import Config
from cofitune_ray.training.model import Architecture, load_model, load_tokenizer
from cofitune_ray.training.runner import RunTrainer, scaling_config
from cofitune_ray.training.sharding import distribute
from cofitune_ray.training.softmask import ImportanceRef
from cofitune_ray.training.softmask.importance import (
    cache_dir,
    cache_key,
    compute_importance,
    importance_data,
    importance_settings,
    load_cached_importance,
    save_importance,
)


def importance_worker(loop_config: dict) -> None:
    """Ray Train worker: score this worker's share, all-reduce, rank 0 writes the cache entry.

    Under `scaling.strategy: fsdp` the (frozen) model is sharded as for training.
    """
    config = loop_config["config"]
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    model = load_model(config.model.path, config.model.dtype)
    model.requires_grad_(False)
    model = distribute(model, config.scaling.strategy, ray.train.torch.get_device())
    tokenizer = load_tokenizer(config.model.tokenizer or config.model.path)
    importance, raw_sets = compute_importance(model, Architecture.from_config(model.config), tokenizer,
                                              loop_config["data"], importance_settings(config), rank, world_size)
    if rank == 0:
        save_importance(Path(loop_config["directory"]), importance, loop_config["key"], raw_sets)
    ray.train.report({"layers": int(importance.head.shape[0])})


def importance_ref(config: Config, storage_dir: str | Path) -> ImportanceRef:
    """Where the run's importance is cached on storage, and the key it must match (nothing is computed)."""
    data = importance_data(config)
    key = cache_key(config.model.path, data, importance_settings(config))
    return ImportanceRef(str(cache_dir(str(Path(storage_dir).resolve()), key)), key)


def importance_state(ref: ImportanceRef) -> str:
    """The start-up line's words for the search's importance: cached, or computed when first needed."""
    if load_cached_importance(Path(ref.directory), ref.key) is not None:
        return f"reused from cache: {ref.directory}"
    return f"computed by the first soft-masked run, if one runs, and cached in {ref.directory}"


def compute_if_missing(config: Config, ref: ImportanceRef) -> bool:
    """Compute the importance `ref` names by a Ray Train job unless it is cached; True when it was computed now.

    One at a time: a lock file beside the cache entry makes a second caller (another trial of the search)
    wait for the first one's entry instead of computing it again.
    """
    directory = Path(ref.directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f"{directory.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if load_cached_importance(directory, ref.key) is not None:
            return False
        RunTrainer(
            importance_worker,
            train_loop_config={"config": config, "data": importance_data(config), "directory": str(directory),
                               "key": ref.key},
            scaling_config=scaling_config(config),
            run_config=ray.train.RunConfig(name=f"importance-{directory.name}", storage_path=str(directory.parent)),
        ).fit()
        if load_cached_importance(directory, ref.key) is None:
            raise RuntimeError(f"the importance job finished but wrote nothing usable to {directory}")
    return True


def ensure_importance(config: Config, storage_dir: str | Path) -> tuple[ImportanceRef, bool]:
    """The run's importance (computed by a Ray Train job unless cached); True when it was computed now."""
    ref = importance_ref(config, storage_dir)
    return ref, compute_if_missing(config, ref)
