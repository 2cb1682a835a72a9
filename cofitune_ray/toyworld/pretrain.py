"""Pretraining the toy base model (LLaMA architecture) on the general tasks.

    python -m cofitune_ray.toyworld.pretrain --out DIR [--seed S] [--data DATA_DIR] [--steps N]

Without --data the toy data for the seed is written to DIR/data first. The result is a standard
Hugging Face directory: config + safetensors weights + tokenizer, plus `toyworld.json` with the
settings, the data directory and the held-out exact-match accuracy per general task.
Training: AdamW, linear warmup then cosine decay, loss on response tokens only, the compact prompt,
batches drawn from a task mixture that leans towards the tasks not learned yet.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cofitune_ray.training.prompt import format_prompt
from cofitune_ray.toyworld.data import read_rows, write_toy_data
from cofitune_ray.toyworld.tasks import GENERAL_TASKS
from cofitune_ray.toyworld.tokenizer import build_tokenizer

TEMPLATE = "compact"
IGNORE_INDEX = -100
INFO_FILE = "toyworld.json"


@dataclass(frozen=True)
class PretrainSettings:
    """Model shape and training schedule of the toy base model."""

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


def encode(tokenizer, rows: list[dict[str, str]]) -> list[tuple[list[int], list[int]]]:
    """Prompt ids (with <bos>) and response ids (closed by <eos>) of each row, the project's convention."""
    prompts = tokenizer([format_prompt(TEMPLATE, row["instruction"], row["input"]) for row in rows])["input_ids"]
    responses = tokenizer([row["output"] for row in rows], add_special_tokens=False)["input_ids"]
    return [(prompt, response + [tokenizer.eos_token_id]) for prompt, response in zip(prompts, responses)]


def training_tensors(tokenizer, rows: list[dict[str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input ids and response-only labels for all rows."""
    encoded = encode(tokenizer, rows)
    width = max(len(p) + len(r) for p, r in encoded)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, (prompt, response) in enumerate(encoded):
        ids[i, : len(prompt) + len(response)] = torch.tensor(prompt + response)
        labels[i, len(prompt) : len(prompt) + len(response)] = torch.tensor(response)
    return ids, labels


def lr_factor(step: int, settings: PretrainSettings) -> float:
    """Linear warmup to 1, then cosine decay to min_lr_ratio."""
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return settings.min_lr_ratio + (1 - settings.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def greedy_accuracy(model, tokenizer, rows: list[dict[str, str]], batch_size: int = 256) -> float:
    """Exact match of greedy generation; prompts of equal length are batched without padding."""
    model.eval()
    by_length: dict[int, list[tuple[list[int], str, int]]] = {}  # prompt length -> (prompt, target, response length)
    for row, (prompt, response) in zip(rows, encode(tokenizer, rows)):
        by_length.setdefault(len(prompt), []).append((prompt, row["output"], len(response)))
    correct = 0
    for group in by_length.values():
        for start in range(0, len(group), batch_size):
            chunk = group[start : start + batch_size]
            generated = model.generate(
                input_ids=torch.tensor([prompt for prompt, _, _ in chunk]),
                max_new_tokens=max(n for _, _, n in chunk) + 1,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            width = len(chunk[0][0])
            for (_, target, _), row_ids in zip(chunk, generated[:, width:].tolist()):
                if tokenizer.eos_token_id in row_ids:
                    row_ids = row_ids[: row_ids.index(tokenizer.eos_token_id)]
                correct += tokenizer.decode(row_ids, skip_special_tokens=True) == target
    return correct / len(rows)


def evaluate_tasks(model, tokenizer, eval_files: dict[str, Path]) -> dict[str, float]:
    """Held-out exact-match accuracy per task."""
    return {task: greedy_accuracy(model, tokenizer, read_rows(path)) for task, path in eval_files.items()}


def pretrain(out_dir: str | Path, seed: int, data_dir: str | Path | None = None,
             settings: PretrainSettings = PretrainSettings()) -> dict:
    """Pretrain on the general tasks' train splits, save the model directory, return its info."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if data_dir is None:
        data_dir = out_dir / "data"
        write_toy_data(data_dir, seed)
    data_dir = Path(data_dir)
    torch.set_num_threads(settings.threads)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    train_rows = {task: read_rows(data_dir / task / "train.jsonl") for task in GENERAL_TASKS}
    model = LlamaForCausalLM(model_config(tokenizer, settings))
    probe_rows = {task: rows[: settings.probe_size] for task, rows in train_rows.items()}

    def probe() -> dict[str, float]:
        return {task: greedy_accuracy(model, tokenizer, rows) for task, rows in probe_rows.items()}

    train(model, tokenizer, train_rows, settings, seed, probe)
    train_seconds = time.perf_counter() - started
    accuracy = evaluate_tasks(model, tokenizer, {task: data_dir / task / "eval.jsonl" for task in GENERAL_TASKS})
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    info = {
        "seed": seed,
        "settings": asdict(settings),
        "template": TEMPLATE,
        "data_dir": str(data_dir.resolve()),
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


def train(model, tokenizer, train_rows: dict[str, list[dict[str, str]]], settings: PretrainSettings, seed: int,
          probe: Callable[[], dict[str, float]]) -> None:
    """AdamW with warmup + cosine and gradient clipping at 1, on batches drawn from a task mixture.

    The mixture starts uniform over tasks; every `probe_every` steps `probe()` measures each task's
    accuracy (on a few training examples), which is printed and reweights the mixture towards the
    tasks not learned yet (`mixture_weights`), so that one slow task does not stay stuck.
    """
    started = time.perf_counter()
    ids, labels = training_tensors(tokenizer, [row for rows in train_rows.values() for row in rows])
    sizes = torch.tensor([len(rows) for rows in train_rows.values()])
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
        batch = torch.multinomial(row_weights, settings.batch_size, replacement=True, generator=generator)
        mask = ids[batch] != tokenizer.pad_token_id
        width = int(mask.sum(dim=1).max())
        loss = model(input_ids=ids[batch, :width], attention_mask=mask[:, :width].long(),
                     labels=labels[batch, :width]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(mask.sum())
        if (step + 1) % settings.log_every == 0 or step + 1 == settings.steps:
            elapsed = time.perf_counter() - started
            print(f"[pretrain] step {step + 1}/{settings.steps} loss {loss.item():.4f} "
                  f"lr {schedule.get_last_lr()[0]:.2e} {tokens / elapsed:.0f} tok/s {elapsed:.0f}s", flush=True)
        if (step + 1) % settings.probe_every == 0 and step + 1 < settings.steps:
            accuracy = probe()
            weights = mixture_weights(accuracy, settings.mixture_floor)
            print(f"[pretrain] step {step + 1} accuracy on training examples: "
                  + " ".join(f"{task} {acc:.2f}" for task, acc in accuracy.items()), flush=True)
            model.train()


def main(argv: list[str] | None = None) -> None:
    """The CLI: pretrain one toy base model and print its held-out accuracy per task."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output model directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", help="toy data directory (default: write it to OUT/data)")
    parser.add_argument("--steps", type=int, default=PretrainSettings.steps)
    parser.add_argument("--threads", type=int, default=PretrainSettings.threads)
    args = parser.parse_args(argv)
    info = pretrain(args.out, args.seed, args.data, PretrainSettings(steps=args.steps, threads=args.threads))
    for task, accuracy in info["eval_accuracy"].items():
        print(f"{task:>10}: {accuracy:.3f}")
    print(f"{'mean':>10}: {info['mean_eval_accuracy']:.3f}  ({info['train_seconds']}s training)")


if __name__ == "__main__":
    main()
