"""Writing the toy world's JSONL files: one file per task and split, deterministic by seed.

Every line is {"instruction": task name, "input": ..., "output": ...}, the project's data format.
Within a task the splits are disjoint: no input occurs in two splits. General tasks get the splits
train, eval and importance (general data for the unit-importance pass); special tasks get train and eval.
Layout: `<data_dir>/<task>/<split>.jsonl`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from cofitune_ray.toyworld.tasks import GENERAL, SPECIAL, TASKS

#: Examples per split, by task kind (drawn in this order, so eval sets do not depend on train sizes).
SPLIT_SIZES: dict[str, dict[str, int]] = {
    GENERAL: {"eval": 200, "importance": 200, "train": 5000},
    SPECIAL: {"eval": 200, "train": 2000},
}


def draw_splits(task_name: str, seed: int, sizes: dict[str, int]) -> dict[str, list[dict[str, str]]]:
    """Examples of one task for each split, with distinct inputs across (and within) splits."""
    task = TASKS[task_name]
    rng = random.Random(f"toyworld:{seed}:{task_name}")
    seen: set[str] = set()
    splits = {}
    for split, size in sizes.items():
        rows = []
        for _ in range(100 * size):
            if len(rows) == size:
                break
            source, target = task.draw(rng)
            if source not in seen:
                seen.add(source)
                rows.append({"instruction": task_name, "input": source, "output": target})
        if len(rows) < size:
            raise ValueError(f"task {task_name!r} has too few distinct inputs for {size} {split} examples")
        splits[split] = rows
    return splits


def write_toy_data(data_dir: str | Path, seed: int) -> dict[str, dict[str, Path]]:
    """Write every task's splits as JSONL; returns {task: {split: path}}."""
    data_dir = Path(data_dir)
    files: dict[str, dict[str, Path]] = {}
    for name, task in TASKS.items():
        files[name] = {}
        for split, rows in draw_splits(name, seed, SPLIT_SIZES[task.kind]).items():
            path = data_dir / name / f"{split}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
            files[name][split] = path
    return files


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """The examples of one toy JSONL file."""
    with Path(path).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
