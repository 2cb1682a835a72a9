"""Preparing a toy world once and reusing it: data, tokenizer and pretrained base model, cached.

    python -m cofitune_ray.toyworld.prepare [--world calibrated|cliff] [--seed S] [--cache DIR]

Cache layout, per world and seed: `<cache>/<world>/seed-<S>/` holds `data/<task>/<split>.jsonl`,
`tokenizer/`, `model/` (HF directory with its tokenizer and `toyworld.json`) and `COMPLETE.json`,
the marker written last with the settings the world was made from and the base model's held-out
accuracy per general task. A world is reused only when its marker exists and its settings match;
otherwise it is rebuilt from scratch. A lock file keeps two processes from building it at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import os
import random
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cofitune_ray.config import Config, config_from_dict
from cofitune_ray.toyworld.corpus import split_files, write_toy_data
from cofitune_ray.toyworld.pretrain import TEMPLATE, PretrainSettings, pretrain
from cofitune_ray.toyworld.tokenizer import ALPHABET, save_tokenizer
from cofitune_ray.toyworld.worlds import DEFAULT_WORLD, WORLDS, WorldDefinition, get_world

MARKER = "COMPLETE.json"
FORMAT_VERSION = 2  # 2: named worlds; pretraining scored by the project's evaluator
#: Pretraining settings that change how a run goes, not what it makes; a cached world ignores them.
RUNTIME_ONLY = ("threads", "log_every")
SAMPLES_PER_TASK = 2  # examples drawn with a fixed generator and kept in the marker: a change of a rule shows


class ToyWorldError(ValueError):
    """A path that should belong to a prepared toy world but does not."""


@dataclass(frozen=True)
class ToyWorld:
    """A prepared toy world: where its model, tokenizer and data files are, and how good the model is."""

    root: Path
    world: str
    seed: int
    model_dir: Path
    tokenizer_dir: Path
    data_dir: Path
    files: dict[str, dict[str, Path]]  # task -> split -> JSONL path
    accuracy: dict[str, float]  # held-out exact match of the base model per general task
    general_tasks: tuple[str, ...]
    special_tasks: tuple[str, ...]
    speciality: str
    template: str = TEMPLATE
    settings: dict = field(default_factory=dict)

    @property
    def mean_accuracy(self) -> float:
        """The base model's mean held-out accuracy over the general tasks."""
        return sum(self.accuracy.values()) / len(self.accuracy)


def default_cache_dir() -> Path:
    """`$COFITUNE_CACHE/toyworld`, or `~/.cache/cofitune-ray/toyworld`."""
    root = os.environ.get("COFITUNE_CACHE")
    return Path(root) / "toyworld" if root else Path.home() / ".cache" / "cofitune-ray" / "toyworld"


def world_settings(definition: WorldDefinition, seed: int, pretrain_settings: PretrainSettings) -> dict:
    """Everything a cached world depends on; a marker with other settings means rebuild."""
    tasks = {}
    for task in definition.tasks:
        rng = random.Random(f"sample:{task.name}")
        tasks[task.name] = {"kind": task.kind, "instructions": list(task.instructions),
                            "samples": [task.draw(rng) for _ in range(SAMPLES_PER_TASK)]}
    return {
        "format_version": FORMAT_VERSION,
        "world": definition.name,
        "seed": seed,
        "template": TEMPLATE,
        "alphabet": ALPHABET,
        "tasks": tasks,
        "speciality": definition.speciality,
        "general_share": definition.general_share,
        "split_sizes": definition.split_sizes,
        "pretrain": {k: v for k, v in asdict(pretrain_settings).items() if k not in RUNTIME_ONLY},
    }


def _world(root: Path, definition: WorldDefinition, marker: dict) -> ToyWorld:
    return ToyWorld(
        root=root,
        world=definition.name,
        seed=marker["settings"]["seed"],
        model_dir=root / "model",
        tokenizer_dir=root / "tokenizer",
        data_dir=root / "data",
        files=split_files(root / "data", definition),
        accuracy=marker["accuracy"],
        general_tasks=definition.general_tasks,
        special_tasks=definition.special_tasks,
        speciality=definition.speciality,
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


def ensure_toy_world(cache_dir: str | Path | None = None, seed: int = 0, world: str | WorldDefinition = DEFAULT_WORLD,
                     pretrain_settings: PretrainSettings | None = None) -> ToyWorld:
    """Seed `seed` of the toy world `world` (a name in WORLDS, or a definition): reused from the
    cache when complete, otherwise built (minutes). `pretrain_settings` replaces the world's own."""
    definition = get_world(world) if isinstance(world, str) else world
    pretrain_settings = pretrain_settings or definition.pretrain
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = cache_dir / definition.name / f"seed-{seed}"
    settings = world_settings(definition, seed, pretrain_settings)
    with _locked(root.with_name(f"seed-{seed}.lock")):
        marker = _read_marker(root, settings)
        if marker is not None:
            print(f"[toyworld] reusing the prepared world in {root}", flush=True)
            return _world(root, definition, marker)
        if root.exists():
            print(f"[toyworld] {root} is incomplete or from other settings; rebuilding it", flush=True)
            shutil.rmtree(root)
        print(f"[toyworld] preparing the toy world {definition.name!r} (seed {seed}) in {root}", flush=True)
        write_toy_data(root / "data", seed, definition)
        print(f"[toyworld] wrote data for {len(definition.tasks)} tasks to {root / 'data'}", flush=True)
        save_tokenizer(root / "tokenizer")
        print(f"[toyworld] pretraining the base model ({pretrain_settings.steps} steps, minutes)", flush=True)
        info = pretrain(root / "model", seed, root / "data", definition.general_tasks, pretrain_settings)
        marker = {"settings": settings, "accuracy": info["eval_accuracy"], "train_seconds": info["train_seconds"]}
        (root / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        print(f"[toyworld] done: mean held-out general accuracy {info['mean_eval_accuracy']:.3f}", flush=True)
        return _world(root, definition, marker)


def config_for_seed(config: Config, seed: int, cache_dir: str | Path | None = None) -> Config:
    """`config`, pointed at seed `seed` of the toy world its model belongs to (prepared when missing),
    with `seed` as its training seed too: one number names a whole replicate.

    The world and its pretraining settings are read from the marker next to the model directory
    (`<world root>/model`), so the other seed is made the same way; every path under that world's
    root is moved to the other seed's root.
    """
    root = Path(config.model.path).parent
    if not (root / MARKER).is_file():
        raise ToyWorldError(f"model.path {config.model.path!r} is not the model of a prepared toy world "
                            f"(no {MARKER} in {root})")
    own = json.loads((root / MARKER).read_text(encoding="utf-8"))["settings"]
    if seed == own["seed"]:
        return dataclasses.replace(config, seed=seed)
    world = ensure_toy_world(cache_dir, seed, own["world"], PretrainSettings(**own["pretrain"]))
    data = json.loads(json.dumps(config.to_dict()).replace(f"{root}/", f"{world.root}/"))
    return config_from_dict({**data, "seed": seed}, source=f"{config.source} (toy world {world.world!r}, seed {seed})")


def main(argv: list[str] | None = None) -> None:
    """The CLI: prepare (or reuse) a toy world and print its paths and base-model accuracy."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", default=DEFAULT_WORLD, choices=list(WORLDS), help=f"default: {DEFAULT_WORLD}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", help=f"cache directory (default: {default_cache_dir()})")
    args = parser.parse_args(argv)
    world = ensure_toy_world(args.cache, args.seed, args.world)
    print(f"world:     {world.world}, seed {world.seed}")
    print(f"model:     {world.model_dir}")
    print(f"tokenizer: {world.tokenizer_dir}")
    print(f"data:      {world.data_dir}/<task>/<split>.jsonl")
    print(f"general tasks: {', '.join(world.general_tasks)}")
    print(f"special tasks: {', '.join(world.special_tasks)} (the configs' speciality: {world.speciality})")
    print("held-out exact match of the base model:")
    for task, accuracy in world.accuracy.items():
        print(f"  {task:>12}: {accuracy:.3f}")
    print(f"  {'mean':>12}: {world.mean_accuracy:.3f}")


if __name__ == "__main__":
    main()
