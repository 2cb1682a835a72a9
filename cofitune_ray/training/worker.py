"""What each Ray Train worker runs to fine-tune and score one learning-rate run of a search node.

`train_node(loop_config)` is the `train_loop_per_worker` of the run's TorchTrainer. It loads the
base model, trains exactly the node's parameters at the run's learning rate (DDP or FSDP over the
workers, `sharding.py`), soft-masks them when the node says so, and at every evaluation point
writes a delta checkpoint (only the trained parameters, safetensors; rank 0) to
`<run dir>/points/eval-<k>/` and reports Spec/Vers/Uni with that path (`checkpoint`) through
`ray.train.report`, together with the training state (`train_state.py`) as the run's Ray Train
checkpoint. A retried run (Tune restarts the trial after a worker died) gets that state back from
`ray.train.get_checkpoint()` and continues from its last evaluation point, which it first reports
again (so the search judges it even if the point never reached the search before).

A run whose node compares its runs at the rung (`waits_at_rung`) trains no further than its rung
point until the search has kept it there: the driver writes `kept.json` in the run directory
(`RUNG_KEPT_FILE`); meanwhile the scheduler pauses or stops the run's trial, which ends these
workers. So a run never trains past the rung on timing, and a run the rung stops has no point past it.
"""

from __future__ import annotations

import json
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import ray.train
import ray.train.torch
import torch

from cofitune_ray.core.layout import HISTORY_FILE, RUNG_KEPT_FILE, TIMELINE_FILE, point_dir
from cofitune_ray.core.node import ModelPart
from cofitune_ray.core.timeline import record_event
from cofitune_ray.core.tree import RUNG
from cofitune_ray.training.checkpoint import delta_state, model_fingerprint, write_checkpoint
from cofitune_ray.training.data import encode_example
from cofitune_ray.training.evaluate import Evaluator
from cofitune_ray.training.loop import TrainingPoint, training_points, use_bf16
from cofitune_ray.training.model import load_part, load_tokenizer
from cofitune_ray.training.sharding import distribute, unwrapped
from cofitune_ray.training.softmask.importance import load_cached_importance
from cofitune_ray.training.softmask.mask import SoftMask
from cofitune_ray.training.train_state import Position, read_position

RUNG_POLL_S = 0.5


class _Reporter:
    """Evaluates, writes the point's delta checkpoint and history line (rank 0), and reports to Ray Train
    with the training state as the run's checkpoint."""

    def __init__(self, evaluator, part, rank, world_size, base, run_dir, trained_names, trained_params, started,
                 waits_at_rung):
        self.evaluator, self.part, self.rank, self.world_size = evaluator, part, rank, world_size
        self.base, self.run_dir, self.started = base, Path(run_dir), started
        self.trained_names, self.trained_params = set(trained_names), trained_params
        self.waits_at_rung = waits_at_rung
        spec = evaluator.speciality.examples[0]
        self.probe_ids = encode_example(evaluator.tokenizer, evaluator.template, spec)[0]
        self.resumed_from_step = 0
        self.resumed_point: dict = {}  # rank 0: the history line of the point these workers continue from

    def start_from(self, position: Position) -> None:
        """These workers continue the run at `position` (the start: `Position()`).

        The history keeps only the points up to it: a point an earlier attempt wrote after the state it
        saved last is dropped, and written again when the run gets there.
        """
        self.resumed_from_step = position.step
        if self.rank != 0:
            return
        path = self.run_dir / HISTORY_FILE
        lines = path.read_text().splitlines() if path.is_file() else []
        kept = [line for line in lines if line.strip() and json.loads(line)["eval_index"] <= position.evaluations]
        path.write_text("".join(line + "\n" for line in kept))
        self.resumed_point = json.loads(kept[-1]) if kept and position.evaluations else {}

    def report_again(self, position: Position) -> None:
        """Report the point a continued run resumes from once more (rank 0's history line), then wait there if it
        is the rung: the search records it (again: the same point replaces itself) and judges it."""
        ray.train.report(self.resumed_point)
        self.wait_at_rung(position.evaluations)

    def wait_at_rung(self, eval_index: int) -> None:
        """At the rung point of a run compared there: wait until the search keeps the run (a run it stops or
        pauses has its trial, and these workers, ended meanwhile)."""
        if not self.waits_at_rung or eval_index != RUNG:
            return
        while not (self.run_dir / RUNG_KEPT_FILE).is_file():
            time.sleep(RUNG_POLL_S)
        self.event("kept")

    def event(self, name: str, t: float | None = None) -> None:
        """Rank 0 records `name` at `t` (default: now) in the run's timeline (`core/timeline.py`)."""
        if self.rank == 0:
            record_event(self.run_dir / TIMELINE_FILE, name, t)

    def __call__(self, model: torch.nn.Module, point: TrainingPoint) -> None:
        self.event("eval_start")
        metrics = self.evaluator.evaluate(model, self.rank, self.world_size, self.base)
        self.event("eval_end")
        hf_model = unwrapped(model)
        fingerprint = model_fingerprint(hf_model, self.trained_names, self.probe_ids)
        delta = delta_state(hf_model, keep=self.rank == 0)  # every worker: gathering shards is a collective
        directory = point_dir(self.run_dir, point.eval_index)
        metrics.update(
            eval_index=point.eval_index,
            step=point.step,
            epoch=point.epoch,
            train_loss=point.train_loss,
            trained_params=self.trained_params,
            train_steps=point.step,
            total_steps=point.total_steps,
            train_time_s=time.time() - self.started,
            resumed_from_step=self.resumed_from_step,  # where these workers started: 0, or a retried attempt's state
            peak_memory_gb=_peak_memory_gb(model),
            checkpoint=str(directory) if self.part.trains else None,
            # DDP keeps ranks identical, a non-zero spread means they diverged (FSDP's sums are global).
            rank_checksum_spread=_spread_across_ranks(fingerprint["trained_sum"], self.world_size),
        )
        if self.rank == 0:
            if self.part.trains:
                directory.mkdir(parents=True, exist_ok=True)
                write_checkpoint(directory, delta, self.part, metrics, fingerprint)
            with open(self.run_dir / HISTORY_FILE, "a") as handle:
                handle.write(json.dumps(metrics) + "\n")
        if point.save_state is None:
            ray.train.report(metrics)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                point.save_state(Path(tmp))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        self.event("reported")


def _peak_memory_gb(model: torch.nn.Module) -> float | None:
    """The most GPU memory this worker's tensors have held so far (None on CPU)."""
    device = next(model.parameters()).device
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None


def _spread_across_ranks(value: float, world_size: int) -> float:
    if world_size == 1:
        return 0.0
    gathered = [None] * world_size
    torch.distributed.all_gather_object(gathered, value)
    return max(gathered) - min(gathered)


def train_node(loop_config: dict) -> None:
    """Ray Train worker entry point. loop_config: config, part, lr, importance_dir, importance_key, base_metrics,
    run_dir, waits_at_rung."""
    started = time.time()
    config = loop_config["config"]  # the validated Config itself: no second validation in a worker
    part = ModelPart.from_dict(loop_config["part"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(config.seed)
    device = ray.train.torch.get_device()

    tokenizer = load_tokenizer(config.model.tokenizer or config.model.path)
    loaded = load_part(config.model.path, part, config.model.dtype)
    model, arch, names, trained_params = loaded.model, loaded.architecture, loaded.trained_names, loaded.trained_params
    evaluator = Evaluator.from_config(config, tokenizer)
    report = _Reporter(evaluator, part, rank, world_size, loop_config.get("base_metrics"),
                       loop_config["run_dir"], names, trained_params, started, loop_config.get("waits_at_rung", False))
    report.event("worker_started", started)
    model = distribute(model, config.scaling.strategy, device, bf16=use_bf16(config, device),
                       activation_checkpointing=config.train.activation_checkpointing and part.trains)
    if not part.trains:
        report.event("model_ready")
        report.start_from(Position())
        report(model, TrainingPoint(1, 0, 0.0, None, 0, save_state=None))
        return

    softmask = None
    if part.softmask:
        importance = load_cached_importance(Path(loop_config["importance_dir"]), loop_config["importance_key"])
        if importance is None:
            raise RuntimeError(f"no importance matching this run in {loop_config['importance_dir']}")
        softmask = SoftMask.for_model(unwrapped(model), arch, importance, config.train.softmask_mode)
    saved = ray.train.get_checkpoint()  # the latest state of this run, when an earlier attempt left one
    # For local storage the directory is the checkpoint itself; remote storage is downloaded for the run.
    with saved.as_directory() if saved else nullcontext() as resume:
        position = read_position(Path(resume)) if resume else Position()
        report.start_from(position)
        report.event("model_ready")
        if position.evaluations:
            report.report_again(position)
        for point in training_points(config, loop_config["lr"], model, tokenizer, softmask, rank, world_size, device,
                                     resume=Path(resume) if resume else None):
            report(model, point)
            report.wait_at_rung(point.eval_index)
