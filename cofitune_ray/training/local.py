"""Training and scoring runs in this process, without Ray: the executor of `core.drive` for benchmarks.

`LocalExecutor.run(node, run)` trains the node's parameters at the run's learning rate with the
product's own training loop (`training.loop.training_points`) and evaluator, yielding one result per
evaluation point and then a final result, the shape Ray Train workers report. Ray start-up (seconds per
trial) would dominate small benchmark runs, so benchmarks drive searches through this executor;
their cost is counted in trials and optimizer steps, which is what Ray spreads over workers.

Training is lazy: when the search stops a run, the loop closes the iterator and training stops there.
With a `RunCache`, the results so far are kept, so other searches of the same benchmark reuse them; a
search that needs more points of a run stopped earlier trains it again from the start (the same
weights: the seed, data order and schedule do not depend on where a run was stopped) and evaluates
only the points not cached yet.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

import torch

from cofitune_ray.config import Config
from cofitune_ray.core.files import write_whole
from cofitune_ray.core.node import ModelPart
from cofitune_ray.core.tree import Run, TreeNode
from cofitune_ray.training.evaluate import Evaluator
from cofitune_ray.training.loop import training_points
from cofitune_ray.training.model import load_model, load_part, load_tokenizer
from cofitune_ray.training.softmask.mask import Importance, SoftMask


class RunCache:
    """Run results in a JSON file, keyed by node, learning rate and soft-mask mode; discarded when `settings` change."""

    def __init__(self, path: str | Path, settings: dict):
        self.path, self.settings = Path(path), settings
        data = json.loads(self.path.read_text()) if self.path.is_file() else {}
        if data.get("settings") != json.loads(json.dumps(settings)):
            data = {"settings": settings, "results": {}}
        self.results: dict[str, list[dict]] = data["results"]

    def get(self, key: str) -> list[dict] | None:
        return self.results.get(key)

    def put(self, key: str, results: list[dict]) -> None:
        self.results[key] = results
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_whole(self.path, json.dumps({"settings": self.settings, "results": self.results}))


class LocalExecutor:
    """Runs a search's runs in this process (a `core.drive.Executor`), on the CPU or one GPU.

    importance: unit importance for soft-masked nodes (required when a node soft-masks).
    cache: reuse results across searches and invocations.
    device: where models train and are evaluated ("cpu", "cuda"); `train.bf16: auto` means bf16 on a GPU.
    """

    def __init__(self, config: Config, importance: Importance | None = None, cache: RunCache | None = None,
                 device: str | torch.device = "cpu"):
        self.config, self.importance, self.cache = config, importance, cache
        self.device = torch.device(device)
        self.tokenizer = load_tokenizer(config.model.tokenizer or config.model.path)
        self.evaluator = Evaluator.from_config(config, self.tokenizer)
        self.trained_steps = 0  # optimizer steps this executor actually trained (cache misses)

    def run(self, node: TreeNode, run: Run) -> Iterator[dict]:
        yield from self.results(node.part, run.lr)

    def results(self, part: ModelPart, lr: float | None, key_prefix: str = "", model_hook=None) -> Iterator[dict]:
        """The results of one run (evaluation points, then the final result): cached ones first, then trained.

        model_hook: applied to the model after the part's parameters are selected (a benchmark's LoRA
        wrapper, which then decides what trains); key_prefix tells its cache entries apart.
        """
        mode = self.config.train.softmask_mode if part.softmask else None
        key = "|".join(filter(None, [key_prefix, part.key(), f"lr={lr:g}" if lr is not None else "",
                                     f"mode={mode}" if mode else ""]))
        done = list(self.cache.get(key) or []) if self.cache else []
        yield from done
        if done and done[-1].get("final"):
            return
        fresh = self._evaluate_base() if not part.trains else self._train(part, lr, mode, len(done), model_hook)
        for result in fresh:
            done.append(result)
            if self.cache:
                self.cache.put(key, done)
            yield result

    def trained_model(self, part: ModelPart, lr: float) -> torch.nn.Module:
        """The model at the end of a run (trained again, not evaluated): for baselines built from weights."""
        model, loop = self._loop(part, lr, self.config.train.softmask_mode if part.softmask else None)
        for _ in loop:
            pass
        return model

    def _evaluate_base(self) -> Iterator[dict]:
        started = time.time()
        point = self._point(load_model(self.config.model.path).to(self.device), 1, 0, None, 0, 0, started)
        yield point
        yield _final(point, started)

    def _train(self, part: ModelPart, lr: float, mode: str | None, skip: int, model_hook=None) -> Iterator[dict]:
        started = time.time()
        model, loop = self._loop(part, lr, mode, model_hook)
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        point = None
        for at in loop:
            self.trained_steps = self.trained_steps + (at.step - (point or {}).get("step", 0))
            point = {"step": at.step}
            if at.eval_index <= skip:
                continue  # cached: the weights are the same, the evaluation is not repeated
            point = self._point(model, at.eval_index, at.step, at.train_loss, at.total_steps, trained, started)
            yield point
        yield _final(point, started)

    def _loop(self, part: ModelPart, lr: float, mode: str | None, model_hook=None):
        torch.manual_seed(self.config.seed)
        loaded = load_part(self.config.model.path, part)
        model, arch = loaded.model.to(self.device), loaded.architecture
        if model_hook:
            model = model_hook(model)
        if mode and self.importance is None:
            raise ValueError(f"node {part.key()} soft-masks but the executor has no importance")
        softmask = SoftMask.for_model(model, arch, self.importance, mode) if mode else None
        return model, training_points(self.config, lr, model, self.tokenizer, softmask, 0, 1, self.device)

    def _point(self, model, eval_index, step, train_loss, total_steps, trained, started) -> dict:
        evaluated = time.time()
        metrics = self.evaluator.evaluate(model)
        return {**metrics, "eval_seconds": time.time() - evaluated, "eval_index": eval_index, "step": step,
                "train_steps": step, "total_steps": total_steps,
                "train_loss": train_loss, "trained_params": trained, "train_time_s": time.time() - started}


def _final(last: dict, started: float) -> dict:
    return {"final": True, "train_steps": last["step"], "total_steps": last["total_steps"],
            "trained_params": last["trained_params"], "wall_time_s": time.time() - started}
