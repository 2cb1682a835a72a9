"""Preparing the toy world once and reusing it: data, tokenizer and pretrained base model, cached.

    python -m cofitune_ray.toyworld.prepare [--cache DIR] [--seed S]

Cache layout, per seed: `<cache>/seed-<S>/` holds `data/<task>/<split>.jsonl`, `tokenizer/`,
`model/` (HF directory with its tokenizer and `toyworld.json`) and `COMPLETE.json`, the marker
written last with the settings the world was made from and the model's held-out accuracy. A world
is reused only when its marker exists and its settings match; otherwise it is rebuilt from scratch.
A lock file keeps two processes from building the same world at once.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cofitune_ray.toyworld.data import SPLIT_SIZES, write_toy_data
from cofitune_ray.toyworld.pretrain import TEMPLATE, PretrainSettings, pretrain
from cofitune_ray.toyworld.tasks import GENERAL_TASKS, SPECIAL_TASKS, TASKS
from cofitune_ray.toyworld.tokenizer import ALPHABET, save_tokenizer

MARKER = "COMPLETE.json"
FORMAT_VERSION = 1
#: Pretraining settings that change how a run goes, not what it makes; a cached world ignores them.
RUNTIME_ONLY = ("threads", "log_every")


@dataclass(frozen=True)
class ToyWorld:
    """A prepared toy world: where its model, tokenizer and data files are, and how good the model is."""

    root: Path
    seed: int
    model_dir: Path
    tokenizer_dir: Path
    data_dir: Path
    files: dict[str, dict[str, Path]]  # task -> split -> JSONL path
    accuracy: dict[str, float]  # held-out exact match of the base model per general task
    template: str = TEMPLATE
    general_tasks: tuple[str, ...] = GENERAL_TASKS
    special_tasks: tuple[str, ...] = SPECIAL_TASKS
    settings: dict = field(default_factory=dict)

    @property
    def mean_accuracy(self) -> float:
        """The base model's mean held-out accuracy over the general tasks."""
        return sum(self.accuracy.values()) / len(self.accuracy)


def default_cache_dir() -> Path:
    """`$COFITUNE_CACHE/toyworld`, or `~/.cache/cofitune-ray/toyworld`."""
    root = os.environ.get("COFITUNE_CACHE")
    return Path(root) / "toyworld" if root else Path.home() / ".cache" / "cofitune-ray" / "toyworld"


def world_settings(seed: int, pretrain_settings: PretrainSettings) -> dict:
    """Everything a cached world depends on; a marker with other settings means rebuild."""
    return {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "template": TEMPLATE,
        "alphabet": ALPHABET,
        "tasks": {name: task.kind for name, task in TASKS.items()},
        "split_sizes": SPLIT_SIZES,
        "pretrain": {k: v for k, v in asdict(pretrain_settings).items() if k not in RUNTIME_ONLY},
    }


def _files(data_dir: Path) -> dict[str, dict[str, Path]]:
    return {
        name: {split: data_dir / name / f"{split}.jsonl" for split in SPLIT_SIZES[task.kind]}
        for name, task in TASKS.items()
    }


def _world(root: Path, marker: dict) -> ToyWorld:
    return ToyWorld(
        root=root,
        seed=marker["settings"]["seed"],
        model_dir=root / "model",
        tokenizer_dir=root / "tokenizer",
        data_dir=root / "data",
        files=_files(root / "data"),
        accuracy=marker["accuracy"],
        settings=marker["settings"],
    )


def _read_marker(root: Path, settings: dict) -> dict | None:
    path = root / MARKER
    if not path.is_file():
        return None
    marker = json.loads(path.read_text(encoding="utf-8"))
    return marker if marker.get("settings") == json.loads(json.dumps(settings)) else None


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"[toyworld] another process holds {path}; waiting for it to finish", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_toy_world(cache_dir: str | Path | None = None, seed: int = 0,
                     pretrain_settings: PretrainSettings = PretrainSettings()) -> ToyWorld:
    """The toy world for `seed`: reused from the cache when complete, otherwise built (minutes)."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = cache_dir / f"seed-{seed}"
    settings = world_settings(seed, pretrain_settings)
    with _locked(cache_dir / f"seed-{seed}.lock"):
        marker = _read_marker(root, settings)
        if marker is not None:
            print(f"[toyworld] reusing the prepared world in {root}", flush=True)
            return _world(root, marker)
        if root.exists():
            print(f"[toyworld] {root} is incomplete or from other settings; rebuilding it", flush=True)
            shutil.rmtree(root)
        print(f"[toyworld] preparing the toy world (seed {seed}) in {root}", flush=True)
        write_toy_data(root / "data", seed)
        print(f"[toyworld] wrote data for {len(TASKS)} tasks to {root / 'data'}", flush=True)
        save_tokenizer(root / "tokenizer")
        print(f"[toyworld] pretraining the base model ({pretrain_settings.steps} steps, a few minutes)", flush=True)
        info = pretrain(root / "model", seed, root / "data", pretrain_settings)
        marker = {"settings": settings, "accuracy": info["eval_accuracy"], "train_seconds": info["train_seconds"]}
        (root / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        print(f"[toyworld] done: mean held-out general accuracy {info['mean_eval_accuracy']:.3f}", flush=True)
        return _world(root, marker)


def main(argv: list[str] | None = None) -> None:
    """The CLI: prepare (or reuse) a toy world and print its paths and base-model accuracy."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", help=f"cache directory (default: {default_cache_dir()})")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    world = ensure_toy_world(args.cache, args.seed)
    print(f"model:     {world.model_dir}")
    print(f"tokenizer: {world.tokenizer_dir}")
    print(f"data:      {world.data_dir}/<task>/<split>.jsonl")
    print(f"general tasks: {', '.join(world.general_tasks)}")
    print(f"special tasks: {', '.join(world.special_tasks)}")
    print("held-out exact match of the base model:")
    for task, accuracy in world.accuracy.items():
        print(f"  {task:>10}: {accuracy:.3f}")
    print(f"  {'mean':>10}: {world.mean_accuracy:.3f}")


if __name__ == "__main__":
    main()
