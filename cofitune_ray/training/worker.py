"""What each Ray Train worker runs to fine-tune and score one search node.

`train_node(loop_config)` is the `train_loop_per_worker` of the node's TorchTrainer. It loads the
base model, trains exactly the node's parameters (DDP over the workers), soft-masks them when the
node says so, and at every evaluation point reports Spec/Vers/Uni with a delta checkpoint
(only the trained parameters, safetensors) through `ray.train.report`.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import ray.train
import ray.train.torch
import torch
from torch.utils.data import DataLoader, DistributedSampler
from transformers import get_scheduler

from cofitune_ray.training.checkpoint import model_fingerprint, write_checkpoint
from cofitune_ray.config import Config, config_from_dict
from cofitune_ray.training.data import collate, encode_example, read_jsonl, tokenize_for_training
from cofitune_ray.training.evaluate import Evaluator
from cofitune_ray.training.importance import load_cached_importance
from cofitune_ray.training.model import Architecture, freeze_all_but, load_model, load_tokenizer, trainable_parameter_names
from cofitune_ray.core.node import ModelPart
from cofitune_ray.training.softmask import SoftMask

def optimizer_steps(config: Config, micro_batches_per_epoch: int) -> tuple[int, int]:
    """(steps per epoch, total steps): epochs of accumulated micro-batches, capped by max_steps."""
    per_epoch = max(1, math.ceil(micro_batches_per_epoch / config.train.grad_accum_steps))
    steps = per_epoch * config.train.epochs
    return per_epoch, min(steps, config.train.max_steps) if config.train.max_steps else steps


class _Reporter:
    """Evaluates, appends to the history file and reports to Ray Train (checkpoint from rank 0)."""

    def __init__(self, evaluator, part, rank, world_size, base, history_path, trained_names, trained_params, started):
        self.evaluator, self.part, self.rank, self.world_size = evaluator, part, rank, world_size
        self.base, self.history_path, self.started = base, history_path, started
        self.trained_names, self.trained_params = set(trained_names), trained_params
        spec = evaluator.speciality.examples[0]
        self.probe_ids = encode_example(evaluator.tokenizer, evaluator.template, spec)[0]
        self.count = 0

    def __call__(self, model: torch.nn.Module, step: int, epoch: float, train_loss: float | None) -> None:
        self.count += 1
        metrics = self.evaluator.evaluate(model, self.rank, self.world_size, self.base)
        unwrapped = model.module if hasattr(model, "module") else model
        fingerprint = model_fingerprint(unwrapped, self.trained_names, self.probe_ids)
        metrics.update(
            eval_index=self.count,
            step=step,
            epoch=epoch,
            train_loss=train_loss,
            trained_params=self.trained_params,
            train_steps=step,
            train_time_s=time.time() - self.started,
            # DDP keeps ranks identical; a non-zero spread means they diverged.
            rank_checksum_spread=_spread_across_ranks(fingerprint["trained_sum"], self.world_size),
        )
        if self.rank != 0:
            ray.train.report(metrics)
            return
        if self.history_path:
            with open(self.history_path, "a") as handle:
                handle.write(json.dumps(metrics) + "\n")
        with tempfile.TemporaryDirectory() as tmp:
            write_checkpoint(Path(tmp), unwrapped, self.part, metrics, fingerprint)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _spread_across_ranks(value: float, world_size: int) -> float:
    if world_size == 1:
        return 0.0
    gathered = [None] * world_size
    torch.distributed.all_gather_object(gathered, value)
    return max(gathered) - min(gathered)


def train_node(loop_config: dict) -> None:
    """Ray Train worker entry point. loop_config: config, node, importance_dir, base_metrics, history_path."""
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
                       loop_config.get("history_path"), names, trained_params, started)
    if not part.trains:
        report(model.to(device), step=0, epoch=0.0, train_loss=None)
        return

    softmask = None
    if part.softmask:
        importance = load_cached_importance(Path(loop_config["importance_dir"]), loop_config["importance_key"])
        if importance is None:
            raise RuntimeError(f"no importance matching this run in {loop_config['importance_dir']}")
        softmask = SoftMask.for_model(model, arch, importance, config.train.softmask_mode)
    model = ray.train.torch.prepare_model(model)
    run_training(config, part, model, tokenizer, softmask, report, rank, world_size, device)


def run_training(config, part, model, tokenizer, softmask, report, rank, world_size, device) -> None:
    """The training loop of one node; `report(model, step, epoch, train_loss)` is called at each evaluation point."""
    data = tokenize_for_training(read_jsonl(config.data.speciality_train), tokenizer, config.data.prompt_template,
                                 config.data.max_seq_length, config.data.loss_on)
    if rank == 0 and data.truncated:
        print(f"[cofitune] {data.truncated} training sequences truncated to {config.data.max_seq_length} tokens"
              f" ({data.lost_all_labels} dropped: no response token left)")
    sampler = DistributedSampler(data.dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=config.seed)
    loader = DataLoader(data.dataset, batch_size=config.train.batch_size, sampler=sampler,
                        collate_fn=lambda rows: collate(rows, tokenizer.pad_token_id))
    t = config.train
    per_epoch, total_steps = optimizer_steps(config, len(loader))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=part.lr or t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
    schedule = get_scheduler(t.schedule, optimizer, num_warmup_steps=int(t.warmup_ratio * total_steps),
                             num_training_steps=total_steps)
    use_bf16 = t.bf16 == "on" or (t.bf16 == "auto" and device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()
    every = config.eval.every_n_steps
    step, running_loss, loss_count = 0, 0.0, 0
    model.train()
    for epoch in range(t.epochs):
        sampler.set_epoch(epoch)
        for index, batch in enumerate(loader, start=1):
            last_micro = index % t.grad_accum_steps == 0 or index == len(loader)
            # DDP all-reduces gradients only on the micro-batch that ends an optimizer step.
            sync = nullcontext() if last_micro or not hasattr(model, "no_sync") else model.no_sync()
            with sync, autocast:
                loss = model(**{k: v.to(device) for k, v in batch.items()}).loss / t.grad_accum_steps
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
                report(model, step, step / per_epoch, running_loss / max(loss_count, 1))
                running_loss, loss_count = 0.0, 0
            if finished:
                return
