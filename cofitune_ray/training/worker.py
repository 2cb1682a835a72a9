"""What each Ray Train worker runs to fine-tune and score one learning-rate run of a search node.

`train_node(loop_config)` is the `train_loop_per_worker` of the run's TorchTrainer. It loads the
base model, trains exactly the node's parameters at the run's learning rate (DDP or FSDP over the
workers, `sharding.py`), soft-masks them when the node says so, and at every evaluation point
writes a delta checkpoint (only the trained parameters, safetensors; rank 0) to
`<run dir>/points/eval-<k>/` and reports Spec/Vers/Uni with that path (`checkpoint`) through
`ray.train.report`, together with the training state (`train_state.py`) as the run's Ray Train
checkpoint. A retried run (Tune restarts the trial after a worker died) gets that state back from
`ray.train.get_checkpoint()` and continues from its last evaluation point.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, NamedTuple

import ray.train
import ray.train.torch
import torch
from torch.utils.data import DataLoader, DistributedSampler
from transformers import get_scheduler

from cofitune_ray.config import Config, config_from_dict
from cofitune_ray.core.node import ModelPart
from cofitune_ray.training.checkpoint import delta_state, model_fingerprint, write_checkpoint
from cofitune_ray.training.data import collate, encode_example, read_jsonl, tokenize_for_training
from cofitune_ray.training.evaluate import Evaluator
from cofitune_ray.training.importance import load_cached_importance
from cofitune_ray.training.model import (
    Architecture,
    freeze_all_but,
    load_model,
    load_tokenizer,
    trainable_parameter_names,
)
from cofitune_ray.training.sharding import distribute, is_fsdp, unwrapped
from cofitune_ray.training.softmask import SoftMask
from cofitune_ray.training.train_state import Position, load_train_state, read_position, save_train_state

HISTORY_FILE = "history.jsonl"  # one line per evaluation point, in the run directory
POINTS_DIR = "points"  # <run dir>/points/eval-<k>/: the delta checkpoint of evaluation point k


class TrainingPoint(NamedTuple):
    """An evaluation point of a run: the training loop is paused with the model at `step`."""

    eval_index: int  # 1, 2, ... across attempts of the run
    step: int
    epoch: float
    train_loss: float | None
    total_steps: int
    save_state: Callable[[Path], None] | None  # writes the state to resume from here (every worker calls it)


def optimizer_steps(config: Config, micro_batches_per_epoch: int) -> tuple[int, int]:
    """(steps per epoch, total steps): epochs of accumulated micro-batches, capped by max_steps."""
    per_epoch = max(1, math.ceil(micro_batches_per_epoch / config.train.grad_accum_steps))
    steps = per_epoch * config.train.epochs
    return per_epoch, min(steps, config.train.max_steps) if config.train.max_steps else steps


class _Reporter:
    """Evaluates, writes the point's delta checkpoint and history line (rank 0), and reports to Ray Train
    with the training state as the run's checkpoint."""

    def __init__(self, evaluator, part, rank, world_size, base, run_dir, trained_names, trained_params, started):
        self.evaluator, self.part, self.rank, self.world_size = evaluator, part, rank, world_size
        self.base, self.run_dir, self.started = base, Path(run_dir), started
        self.trained_names, self.trained_params = set(trained_names), trained_params
        spec = evaluator.speciality.examples[0]
        self.probe_ids = encode_example(evaluator.tokenizer, evaluator.template, spec)[0]
        self.resumed_from_step = 0

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

    def __call__(self, model: torch.nn.Module, point: TrainingPoint) -> None:
        metrics = self.evaluator.evaluate(model, self.rank, self.world_size, self.base)
        hf_model = unwrapped(model)
        fingerprint = model_fingerprint(hf_model, self.trained_names, self.probe_ids)
        delta = delta_state(hf_model, keep=self.rank == 0)  # every worker: gathering shards is a collective
        point_dir = self.run_dir / POINTS_DIR / f"eval-{point.eval_index}"
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
            checkpoint=str(point_dir) if self.part.trains else None,
            # DDP keeps ranks identical, a non-zero spread means they diverged (FSDP's sums are global).
            rank_checksum_spread=_spread_across_ranks(fingerprint["trained_sum"], self.world_size),
        )
        if self.rank == 0:
            if self.part.trains:
                point_dir.mkdir(parents=True, exist_ok=True)
                write_checkpoint(point_dir, delta, self.part, metrics, fingerprint)
            with open(self.run_dir / HISTORY_FILE, "a") as handle:
                handle.write(json.dumps(metrics) + "\n")
        if point.save_state is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            point.save_state(Path(tmp))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


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
    run_dir."""
    started = time.time()
    config = config_from_dict(loop_config["config"])
    part = ModelPart.from_dict(loop_config["part"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(config.seed)
    device = ray.train.torch.get_device()

    tokenizer = load_tokenizer(config.model.tokenizer or config.model.path)
    model = load_model(config.model.path, config.model.dtype)
    arch = Architecture.from_config(model.config)
    names = trainable_parameter_names(arch, part, [n for n, _ in model.named_parameters()]) if part.trains else []
    trained_params = freeze_all_but(model, names)
    evaluator = Evaluator.from_config(config, tokenizer)
    report = _Reporter(evaluator, part, rank, world_size, loop_config.get("base_metrics"),
                       loop_config["run_dir"], names, trained_params, started)
    model = distribute(model, config.scaling.strategy, device, bf16=use_bf16(config, device),
                       activation_checkpointing=config.train.activation_checkpointing and part.trains)
    if not part.trains:
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
        report.start_from(read_position(Path(resume)) if resume else Position())
        for point in training_points(config, loop_config["lr"], model, tokenizer, softmask, rank, world_size, device,
                                     resume=Path(resume) if resume else None):
            report(model, point)


def use_bf16(config: Config, device: torch.device) -> bool:
    """Whether training computes in bf16: `train.bf16` on, or auto on a GPU."""
    return config.train.bf16 == "on" or (config.train.bf16 == "auto" and device.type == "cuda")


def training_points(config, lr: float, model, tokenizer, softmask, rank, world_size, device,
                    resume: Path | None = None):
    """The training loop of one run at learning rate `lr`, paused at each evaluation point.

    Yields a `TrainingPoint` at every evaluation point, with `model` holding the weights of that
    step; the caller evaluates it there. Closing the generator stops the training. `resume`: a
    training state saved at an earlier point of this run (`TrainingPoint.save_state`); the loop
    continues after it with the same weights, optimizer, schedule and data order.
    """
    data = tokenize_for_training(read_jsonl(config.data.speciality_train), tokenizer, config.data.prompt_template,
                                 config.data.max_seq_length, config.data.loss_on)
    sampler = DistributedSampler(data.dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=config.seed)
    loader = DataLoader(data.dataset, batch_size=config.train.batch_size, sampler=sampler,
                        collate_fn=lambda rows: collate(rows, tokenizer.pad_token_id))
    t = config.train
    per_epoch, total_steps = optimizer_steps(config, len(loader))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
    schedule = get_scheduler(t.schedule, optimizer, num_warmup_steps=int(t.warmup_ratio * total_steps),
                             num_training_steps=total_steps)
    start = load_train_state(resume, model, optimizer, schedule, rank, world_size) if resume else Position()
    # Under FSDP bf16 is its mixed-precision policy (set by `distribute`), not autocast.
    bf16_autocast = use_bf16(config, device) and not is_fsdp(model)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16_autocast else nullcontext()
    every = config.eval.every_n_steps
    step, evaluations, running_loss, loss_count = start.step, start.evaluations, 0.0, 0
    model.train()
    for epoch in range(start.epoch, t.epochs):
        sampler.set_epoch(epoch)
        for index, batch in enumerate(loader, start=1):
            if epoch == start.epoch and index <= start.batches:
                continue  # trained on before the state this run resumed from
            last_micro = index % t.grad_accum_steps == 0 or index == len(loader)
            # DDP all-reduces gradients only on the micro-batch that ends an optimizer step.
            sync = nullcontext() if last_micro or not hasattr(model, "no_sync") else model.no_sync()
            with sync, autocast:
                # use_cache=False: a KV cache would hold every layer's keys and values to the end of the forward.
                loss = model(**{k: v.to(device) for k, v in batch.items()}, use_cache=False).loss / t.grad_accum_steps
                loss.backward()
            running_loss += loss.item() * t.grad_accum_steps
            loss_count += 1
            if not last_micro:
                continue
            if softmask:
                softmask.before_step()
            if t.grad_clip:
                torch.nn.utils.clip_grad_norm_(trainable, t.grad_clip)
            optimizer.step()
            if softmask:
                softmask.after_step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            finished = step >= total_steps
            epoch_end = index == len(loader)
            if finished or (every and step % every == 0) or (epoch_end and config.eval.at_epoch_end):
                evaluations += 1
                here = Position(step, epoch, index, evaluations)
                yield TrainingPoint(evaluations, step, step / per_epoch, running_loss / max(loss_count, 1), total_steps,
                                    lambda directory, here=here: save_train_state(directory, model, optimizer, schedule,
                                                                                  here, rank, world_size))
                running_loss, loss_count = 0.0, 0
            if finished:
                return
