"""Instruction data: JSONL lines {instruction, input, output}, checked line by line and tokenised.

Optional `choices` (list of strings) and `answer` (index into choices, or one of them) make a line
a multiple-choice evaluation item. Every problem is reported as `file:line: what is wrong`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cofitune_ray.training.prompt import format_prompt

if TYPE_CHECKING:  # reading and checking data needs no torch: the CLI reports bad data before importing it
    import torch

IGNORE_INDEX = -100
REQUIRED_FIELDS = ("instruction", "output")


class DataError(ValueError):
    """A data file that cannot be used, with the file and line that say why."""


@dataclass(frozen=True)
class Example:
    """One validated instruction example."""

    instruction: str
    input: str
    output: str
    choices: tuple[str, ...] | None = None
    answer: int | None = None  # index into choices
    line: int = 0


def read_jsonl(path: str | Path) -> list[Example]:
    """Read and validate every line of a JSONL file; blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    examples = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                examples.append(_parse_line(line, path, number))
    if not examples:
        raise DataError(f"{path}: the file holds no examples")
    return examples


def _parse_line(line: str, path: Path, number: int) -> Example:
    where = f"{path}:{number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for name in REQUIRED_FIELDS:
        if name not in record:
            raise DataError(f"{where}: missing field '{name}' (each line needs instruction, input, output)")
    for name in ("instruction", "input", "output"):
        if name in record and not isinstance(record[name], str):
            raise DataError(f"{where}: field '{name}' must be a string, got {type(record[name]).__name__}")
    choices = record.get("choices")
    answer = record.get("answer")
    if choices is not None or answer is not None:
        if not (isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) for c in choices)):
            raise DataError(f"{where}: field 'choices' must be a list of at least two strings")
        if isinstance(answer, str) and answer in choices:
            answer = choices.index(answer)
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise DataError(f"{where}: field 'answer' must be an index into choices or one of the choices")
        choices = tuple(choices)
    return Example(
        instruction=record["instruction"],
        input=record.get("input", ""),
        output=record["output"],
        choices=choices,
        answer=answer,
        line=number,
    )


def fingerprint(paths: list[str]) -> str:
    """A short content hash of data files (what a cached computation was made from)."""
    digest = hashlib.sha256()
    for p in paths:
        digest.update(Path(p).read_bytes())
    return digest.hexdigest()[:16]


@dataclass
class TokenizedData:
    """Training sequences and how many had to be truncated to fit."""

    dataset: list[dict[str, list[int]]]  # rows {input_ids, labels}: a map-style dataset for DataLoader
    truncated: int
    lost_all_labels: int  # sequences whose response was cut away entirely


def encode_example(tokenizer, template: str, example: Example,
                   response: str | None = None) -> tuple[list[int], list[int]]:
    """Token ids of the prompt and of the response (closed by EOS), tokenised separately.

    Separate tokenisation gives an exact prompt/response boundary for response-only loss.
    """
    prompt = format_prompt(template, example.instruction, example.input)
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    text = example.output if response is None else response
    response_ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt_ids, response_ids


def tokenize_for_training(
    examples: list[Example], tokenizer, template: str, max_seq_length: int, loss_on: str = "response"
) -> TokenizedData:
    """Token ids and labels; labels mask the prompt unless loss_on == "sequence"."""
    rows = []
    truncated = lost = 0
    for example in examples:
        prompt_ids, response_ids = encode_example(tokenizer, template, example)
        ids = prompt_ids + response_ids
        prompt_labels = prompt_ids if loss_on == "sequence" else [IGNORE_INDEX] * len(prompt_ids)
        labels = prompt_labels + response_ids
        if len(ids) > max_seq_length:
            truncated += 1
            ids, labels = ids[:max_seq_length], labels[:max_seq_length]
            if all(label == IGNORE_INDEX for label in labels):
                lost += 1
                continue
        rows.append({"input_ids": ids, "labels": labels})
    return TokenizedData(rows, truncated, lost)


def collate(batch: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of {input_ids, labels} into tensors with an attention mask."""
    import torch

    width = max(len(row["input_ids"]) for row in batch)
    input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, row in enumerate(batch):
        n = len(row["input_ids"])
        input_ids[i, :n] = torch.tensor(row["input_ids"])
        labels[i, :n] = torch.tensor(row["labels"])
        attention_mask[i, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
