"""Preparing the SmolLM2 world: the converted model and the world's data, in the cache.

    python -m cofitune_ray.realworld.prepare [--cache DIR] [--seed S]

Converts the model when it is not converted yet (`realworld.convert`), then writes the world's sets
(`realworld.world`) to `<cache>/world/seed-<S>/`: `data/*.jsonl` and `lm_eval_tasks/opposites.yaml`.
The data is a function of the seed: writing it again gives the same files. configs/smollm2.yaml
points at seed 0 in the default cache.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cofitune_ray.realworld.convert import ConversionError, default_cache_dir, ensure_smollm2
from cofitune_ray.realworld.world import WorldFiles, write_world


def world_root(cache_dir: str | Path | None, seed: int) -> Path:
    """Where seed `seed` of the world's data lives."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return cache / "world" / f"seed-{seed}"


def main(argv: list[str] | None = None) -> None:
    """The CLI: convert (or reuse) the model, write the data, print the paths."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", help=f"cache directory (default: {default_cache_dir()})")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        converted = ensure_smollm2(args.cache)
    except ConversionError as exc:
        raise SystemExit(f"error: {exc}") from None
    files: WorldFiles = write_world(world_root(args.cache, args.seed), args.seed)
    print(f"model:      {converted.model_dir}")
    print(f"speciality: {files.speciality_train} (train), {files.speciality_eval} (held out)")
    for name, path in files.versatility.items():
        print(f"versatility {name}: {path}")
    print(f"versatility opposites: lm-eval task in {files.lm_eval_tasks}")
    print(f"importance: {files.importance}")


if __name__ == "__main__":
    main()
