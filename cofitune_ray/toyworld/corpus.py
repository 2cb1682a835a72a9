"""Writing a toy world's JSONL files: one file per task and split, deterministic by seed.

Every line is {"instruction", "input", "output"}, the project's data format (read with
`cofitune_ray.data.read_examples`). Within a task the splits are disjoint: no input occurs in two
splits (or twice in one). Layout: `<data_dir>/<task>/<split>.jsonl`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from cofitune_ray.toyworld.tasks import SPECIAL, Task
from cofitune_ray.toyworld.worlds import WorldDefinition


def draw_splits(task: Task, seed: int, sizes: dict[str, int]) -> dict[str, list[dict[str, str]]]:
    """Examples of one task for each split, with distinct inputs across (and within) splits."""
    rng = random.Random(f"toyworld:{seed}:{task.name}")
    seen: set[str] = set()
    splits = {}
    for split, size in sizes.items():
        rows = []
        for _ in range(100 * size):
            if len(rows) == size:
                break
            row = task.draw(rng)
            if row["input"] not in seen:
                seen.add(row["input"])
                rows.append(row)
        if len(rows) < size:
            raise ValueError(f"task {task.name!r} has too few distinct inputs for {size} {split} examples")
        splits[split] = rows
    return splits


def split_files(data_dir: str | Path, world: WorldDefinition) -> dict[str, dict[str, Path]]:
    """Where each task's splits are: {task: {split: path}}."""
    return {task.name: {split: Path(data_dir) / task.name / f"{split}.jsonl" for split in world.split_sizes[task.kind]}
            for task in world.tasks}


def with_general_share(own: list[dict[str, str]], general: list[dict[str, str]], share: float,
                       rng: random.Random) -> list[dict[str, str]]:
    """A speciality's training rows as a domain corpus: `share` of them drawn from `general` (the general
    tasks' training rows), the rest its own first rows, shuffled; as many rows as `own`."""
    borrowed = round(share * len(own))
    rows = own[: len(own) - borrowed] + rng.sample(general, borrowed)
    rng.shuffle(rows)
    return rows


def write_toy_data(data_dir: str | Path, seed: int, world: WorldDefinition) -> dict[str, dict[str, Path]]:
    """Write every task's splits as JSONL; returns {task: {split: path}}.

    With `world.general_share`, each special task's train split also holds that share of examples of
    the general tasks, drawn from their train splits (never from the eval or importance splits).
    """
    files = split_files(data_dir, world)
    drawn = {task.name: draw_splits(task, seed, world.split_sizes[task.kind]) for task in world.tasks}
    general = [row for name in world.general_tasks for row in drawn[name]["train"]]
    for task in world.tasks:
        for split, rows in drawn[task.name].items():
            if task.kind == SPECIAL and split == "train" and world.general_share:
                rows = with_general_share(rows, general, world.general_share,
                                          random.Random(f"toyworld:{seed}:{task.name}:general-share"))
            path = files[task.name][split]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return files
