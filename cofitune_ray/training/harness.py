"""lm-evaluation-harness tasks as versatility sets: benchmarks users already trust join Vers.

A `data.versatility` entry `{name, lm_eval: {task, include_path, limit, metric}}` names a task or
group that lm-eval knows: a registered one (`arc_easy`, `hellaswag`, `mmlu`; its data comes from the
Hugging Face hub) or one defined by a task YAML in `include_path` (local data through
`dataset_path: json`). Each evaluation point runs it on the in-memory model through lm-eval's HF
wrapper (`HFLM(pretrained=<model object>)`), zero-shot unless the task says otherwise, with the
task's own prompts (`data.prompt_template` does not apply). The set's score is `metric` (default:
the task's first), which must be higher-is-better and in [0, 1].

Under DDP only rank 0 runs lm-eval (its wrapper of an in-memory model is single-process) and
broadcasts the result: exact for every metric and aggregation; the other ranks wait meanwhile,
so give big benchmarks a `limit`. lm-eval is an optional dependency (`cofitune-ray[lmeval]`),
imported only here and only when such a set exists.
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from cofitune_ray.config import LmEvalTaskConfig
from cofitune_ray.training.data import DataError


@dataclass
class HarnessTask:
    """One lm-eval task (or group) scored as a versatility set."""

    name: str
    config: LmEvalTaskConfig
    tokenizer_path: str
    limit: int | None  # documents per task
    key: str = "lm_eval"  # the config key, for error messages
    # Set by load(): lm-eval's TaskManager (indexed once), the built Task or Group, the metric, the documents scored.
    _manager: object = field(default=None, init=False, repr=False)
    _built: object = field(default=None, init=False, repr=False)
    _metric: str = field(default="", init=False)
    _documents: int = field(default=0, init=False)

    @classmethod
    def from_config(cls, name: str, config: LmEvalTaskConfig, tokenizer_path: str, default_limit: int | None,
                    key: str) -> "HarnessTask":
        """The set a config entry names; `default_limit` (data.max_eval_examples) applies when it gives no limit."""
        return cls(name, config, tokenizer_path, config.limit or default_limit, key)

    def load(self) -> int:
        """Index and build the task with its data, check the metric; return how many documents are scored.

        Raises DataError naming the config key when the task, its data or the metric cannot be used.
        """
        if self._built is not None:
            return self._documents
        from lm_eval.tasks import TaskManager

        task, include = self.config.task, self.config.include_path
        with _quiet():
            # Indexing lm-eval's own task folders takes long: a task in include_path is found without them.
            manager = TaskManager(include_path=include, include_defaults=False) if include else None
            if manager is None or task not in manager.all_tasks:
                manager = TaskManager(include_path=include)
            if task not in manager.all_tasks:
                where = f" or in {include}" if include else ""
                raise DataError(f"{self.key}.task: {task!r} is not a task lm-evaluation-harness knows{where}")
            try:
                loaded = manager.load([task])
            except Exception as exc:  # lm-eval and datasets raise many kinds; the message names the cause
                raise DataError(f"{self.key}.task: cannot load lm-eval task {task!r}: {exc}") from None
        built = loaded.get("groups", {}).get(task)
        built = loaded["tasks"].get(task) if built is None else built
        if built is None:
            raise DataError(f"{self.key}.task: {task!r} is a tag of several tasks; name one task or group")
        leaves = list(loaded["tasks"].values())
        higher_is_better: dict[str, bool] = {}
        for leaf in leaves:
            for metric, better in leaf.higher_is_better().items():
                higher_is_better.setdefault(metric, better)
        if task not in loaded["tasks"]:  # a group: its score is one of the metrics it aggregates
            aggregated = [a.metric for a in built.aggregate_metric_list or []]
            if not aggregated:
                raise DataError(f"{self.key}.task: group {task!r} reports no aggregate score; name one of its tasks")
            higher_is_better = {m: higher_is_better.get(m, True) for m in aggregated}
        metric = (self.config.metric or next(iter(higher_is_better))).split(",")[0]
        if metric not in higher_is_better:
            raise DataError(f"{self.key}.metric: {metric!r} is not a metric of task {task!r} "
                            f"(it has {', '.join(higher_is_better)})")
        if not higher_is_better[metric]:
            raise DataError(f"{self.key}.metric: {metric!r} is lower-is-better; a versatility score must be "
                            f"higher-is-better, in [0, 1]")
        self._manager, self._built, self._metric = manager, built, metric
        self._documents = sum(min(len(leaf.eval_docs), self.limit or math.inf) for leaf in leaves)
        return self._documents

    def score(self, model: torch.nn.Module, batch_size: int, rank: int = 0, world_size: int = 1) -> dict[str, float]:
        """The task's metrics on `model` (an unwrapped HF model): `score` plus the chosen metric's own key."""
        result = self._evaluate(model, batch_size) if rank == 0 else None
        if world_size > 1:
            box = [result]
            dist.broadcast_object_list(box, src=0)
            result = box[0]
        return result

    def _evaluate(self, model: torch.nn.Module, batch_size: int) -> dict[str, float]:
        import lm_eval
        from lm_eval.models.huggingface import HFLM

        self.load()
        was_training = model.training
        with _quiet():
            wrapped = HFLM(pretrained=model, tokenizer=self.tokenizer_path, batch_size=batch_size)
            # No global seeds: the training loop's random state stays untouched (greedy decoding needs none).
            output = lm_eval.simple_evaluate(model=wrapped, tasks=[self._built], task_manager=self._manager,
                                             limit=self.limit, bootstrap_iters=0, log_samples=False,
                                             random_seed=None, numpy_random_seed=None, torch_random_seed=None)
        model.train(was_training)
        metrics = output["results"][self.config.task]
        key = self._result_key(metrics)
        score = float(metrics[key])
        if not 0.0 <= score <= 1.0:
            raise ValueError(f"{self.key}.metric: {key} of task {self.config.task!r} is {score}, outside [0, 1]")
        return {"score": score, key: score, "documents": float(self._documents)}

    def _result_key(self, metrics: dict) -> str:
        """The results key of the chosen metric: `metric,filter` as given, else its `none` filter, else its only one."""
        wanted = self.config.metric or self._metric
        if "," in wanted:
            keys = [wanted] if wanted in metrics else []
        elif f"{wanted},none" in metrics:
            keys = [f"{wanted},none"]
        else:
            keys = [k for k in metrics if k.startswith(f"{wanted},")]
        if len(keys) != 1:
            available = sorted(k for k in metrics if "," in k and "_stderr" not in k)
            raise ValueError(f"{self.key}.metric: {wanted!r} names {len(keys)} results of task {self.config.task!r}; "
                             f"name one of {', '.join(available)}")
        return keys[0]


@contextmanager
def _quiet():
    """lm-eval's info and warnings (e.g. about an in-memory model) silenced while it runs."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
