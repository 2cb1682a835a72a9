"""The training loop of one learning-rate run, paused at each evaluation point (no Ray).

`training_points` trains a model whose trainable parameters are already chosen, for one or more
data-parallel ranks (DDP or FSDP wrap the model outside; rank and world size only shard the data),
and yields a `TrainingPoint` at every evaluation point. The Ray Train worker (`worker.py`) and the
in-process executor (`local.py`) both train through it.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, NamedTuple

import torch
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, DistributedSampler

from cofitune_ray.config import Config
from cofitune_ray.training.data import collate
from cofitune_ray.training.sharding import is_fsdp
from cofitune_ray.training.tokenized import training_set
from cofitune_ray.training.train_state import Position, load_train_state, save_train_state


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


def learning_rate_schedule(name: str, optimizer: torch.optim.Optimizer, warmup_steps: int,
                           total_steps: int) -> LambdaLR:
    """`train.schedule` as factors of the learning rate at each step: `constant` (1, no warmup), or a linear
    warmup over `warmup_steps` and then a `linear` decay to 0 or a `cosine` half wave down to 0 at `total_steps`.

    The factors are those of transformers' `get_scheduler` (`tests/test_train_loop.py` compares them); they are
    computed here because importing that function costs every training worker seconds on a small machine (it
    imports the Trainer's utilities, and PEFT with them).
    """
    def factor(step: int) -> float:
        if name == "constant":
            return 1.0
        if step < warmup_steps:
            return float(step) / float(max(1, warmup_steps))
        if name == "linear":
            return max(0.0, float(total_steps - step) / float(max(1, total_steps - warmup_steps)))
        progress = float(step - warmup_steps) / float(max(1, total_steps - warmup_steps))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return LambdaLR(optimizer, factor)


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
    # The search's tokenised training set, memory-mapped: this worker reads only the rows its sampler gives it.
    data = training_set(config, tokenizer).load()
    sampler = DistributedSampler(data, num_replicas=world_size, rank=rank, shuffle=True, seed=config.seed)
    loader = DataLoader(data, batch_size=config.train.batch_size, sampler=sampler,
                        collate_fn=lambda rows: collate(rows, tokenizer.pad_token_id))
    t = config.train
    per_epoch, total_steps = optimizer_steps(config, len(loader))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
    schedule = learning_rate_schedule(t.schedule, optimizer, int(t.warmup_ratio * total_steps), total_steps)
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
