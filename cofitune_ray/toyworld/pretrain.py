"""Pretraining a toy base model (LLaMA architecture) on a world's general tasks.

Encoding, collation and accuracy are the product's own (`cofitune_ray.data`: `read_examples`,
`tokenize_for_training`, `collate`; `cofitune_ray.evaluate`: `EvalSet`, `score_set`), so the accuracy
recorded for a base model is the Vers metric a search measures. What is pretraining's own: the
model shape, the schedule (warmup then cosine to a floor) and the batches, drawn from a task mixture
that leans towards the tasks not learned yet. Loss on response tokens only, the compact prompt.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cofitune_ray.toyworld.tokenizer import build_tokenizer, save_tokenizer
from cofitune_ray.training.data import Example, collate, read_examples, tokenize_for_training
from cofitune_ray.training.evaluate import EvalSet, score_set

TEMPLATE = "compact"
MAX_SEQ_LENGTH = 64  # the longest toy example (<bos>, a phrasing, 8 symbols, the output, <eos>) is under 40
INFO_FILE = "toyworld.json"


@dataclass(frozen=True)
class PretrainSettings:
    """Model shape and training schedule of a toy base model."""

    layers: int = 8
    hidden: int = 128
    intermediate: int = 384
    heads: int = 4
    steps: int = 1200
    batch_size: int = 64
    lr: float = 1.5e-3  # 3e-3 stalled the letter-copying tasks (copy, successor) at 0 in one seed
    min_lr_ratio: float = 0.05
    warmup_steps: int = 60
    weight_decay: float = 0.01
    threads: int = 1  # 2 threads thrash when other processes share the 2 cores (measured 10x slower)
    log_every: int = 100
    probe_every: int = 200  # accuracy on a few training examples per task, printed and used to reweight tasks
    probe_size: int = 40
    mixture_floor: float = 0.2  # task weight = floor + error rate (see mixture_weights)


def model_config(tokenizer, settings: PretrainSettings) -> LlamaConfig:
    """A small LLaMA configuration for the character vocabulary."""
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden,
        intermediate_size=settings.intermediate,
        num_hidden_layers=settings.layers,
        num_attention_heads=settings.heads,
        num_key_value_heads=settings.heads,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def save_random_model(directory: str | Path, size: dict, seed: int = 0) -> LlamaForCausalLM:
    """An untrained LLaMA of `size` (layers, hidden, intermediate, heads, kv_heads, vocab) with the character
    tokenizer, saved in `directory`: the model the memory benchmark and the GPU check measure (untied head; the
    vocabulary is at least the tokenizer's)."""
    tokenizer = save_tokenizer(directory)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=max(size["vocab"], len(tokenizer)), hidden_size=size["hidden"],
                         intermediate_size=size["intermediate"], num_hidden_layers=size["layers"],
                         num_attention_heads=size["heads"], num_key_value_heads=size["kv_heads"],
                         max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    return model


def lr_factor(step: int, settings: PretrainSettings) -> float:
    """Linear warmup to 1, then cosine decay to min_lr_ratio."""
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return settings.min_lr_ratio + (1 - settings.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def exact_match(model, tokenizer, eval_set: EvalSet, batch_size: int = 256) -> float:
    """Greedy exact match on one set, scored by the project's evaluator (`score_set`)."""
    longest = max(len(tokenizer(e.output, add_special_tokens=False)["input_ids"]) for e in eval_set.examples)
    return score_set(model, tokenizer, TEMPLATE, eval_set, batch_size, max_new_tokens=longest + 1)["score"]


def pretrain(out_dir: str | Path, seed: int, data_dir: str | Path, tasks: tuple[str, ...],
             settings: PretrainSettings) -> dict:
    """Pretrain on the `tasks`' train splits in `data_dir`, save the model directory, return its info.

    The info (also written to `out_dir/toyworld.json`) holds the held-out exact match per task,
    measured on each task's eval split.
    """
    started = time.perf_counter()
    out_dir, data_dir = Path(out_dir), Path(data_dir)
    torch.set_num_threads(settings.threads)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    train_sets = {task: read_examples(data_dir / task / "train.jsonl") for task in tasks}
    model = LlamaForCausalLM(model_config(tokenizer, settings))
    probes = [EvalSet(task, examples[: settings.probe_size], "exact_match") for task, examples in train_sets.items()]

    def probe() -> dict[str, float]:
        return {probe.name: exact_match(model, tokenizer, probe) for probe in probes}

    train(model, tokenizer, train_sets, settings, seed, probe)
    train_seconds = time.perf_counter() - started
    accuracy = {task: exact_match(model, tokenizer,
                                  EvalSet.load(task, str(data_dir / task / "eval.jsonl"), "exact_match"))
                for task in tasks}
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    info = {
        "seed": seed,
        "settings": asdict(settings),
        "template": TEMPLATE,
        "tasks": list(tasks),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(train_seconds, 1),
        "eval_accuracy": accuracy,
        "mean_eval_accuracy": sum(accuracy.values()) / len(accuracy),
    }
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def mixture_weights(accuracy: dict[str, float], floor: float) -> torch.Tensor:
    """Task sampling weights: `floor` plus the task's error rate (uniform when all tasks are equal)."""
    return torch.tensor([floor + 1.0 - acc for acc in accuracy.values()])


def train(model, tokenizer, train_sets: dict[str, list[Example]], settings: PretrainSettings, seed: int,
          probe: Callable[[], dict[str, float]]) -> None:
    """AdamW with warmup + cosine and gradient clipping at 1, on batches drawn from a task mixture.

    The mixture starts uniform over tasks; every `probe_every` steps `probe()` measures each task's
    accuracy (on a few training examples), which is printed and reweights the mixture towards the
    tasks not learned yet (`mixture_weights`), so that one slow task does not stay stuck.
    """
    started = time.perf_counter()
    data = tokenize_for_training([e for examples in train_sets.values() for e in examples], tokenizer, TEMPLATE,
                                 MAX_SEQ_LENGTH)
    if data.truncated:
        raise ValueError(f"{data.truncated} pretraining sequences are longer than {MAX_SEQ_LENGTH} tokens")
    sequences = data.dataset
    sizes = torch.tensor([len(examples) for examples in train_sets.values()])
    task_of_row = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
    weights = torch.ones(len(sizes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, betas=(0.9, 0.95),
                                  weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, settings))
    generator = torch.Generator().manual_seed(seed)
    tokens = 0
    model.train()
    for step in range(settings.steps):
        row_weights = (weights / sizes)[task_of_row]
        rows = torch.multinomial(row_weights, settings.batch_size, replacement=True, generator=generator)
        batch = collate([sequences[i] for i in rows.tolist()], tokenizer.pad_token_id)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(batch["attention_mask"].sum())
        if (step + 1) % settings.log_every == 0 or step + 1 == settings.steps:
            elapsed = time.perf_counter() - started
            print(f"[pretrain] step {step + 1}/{settings.steps} loss {loss.item():.4f} "
                  f"lr {schedule.get_last_lr()[0]:.2e} {tokens / elapsed:.0f} tok/s {elapsed:.0f}s", flush=True)
        if (step + 1) % settings.probe_every == 0 and step + 1 < settings.steps:
            accuracy = probe()
            weights = mixture_weights(accuracy, settings.mixture_floor)
            print(f"[pretrain] step {step + 1} accuracy on training examples: "
                  + " ".join(f"{task} {acc:.2f}" for task, acc in accuracy.items()), flush=True)
