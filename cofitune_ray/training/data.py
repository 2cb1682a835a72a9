"""Instruction data as users have it, read record by record into checked examples, and tokenised.

A data entry of the config is one of:
- a JSONL file (one record per line) or a JSON file (a list of records; a `.json` file of JSON lines is read
  as JSONL);
- a Parquet file (one record per row);
- a directory written by `datasets.Dataset.save_to_disk` (one record per row).

A record is an instruction record, `{instruction, input, output}`, or a chat record, `{messages: [{role,
content}, ...]}` (ShareGPT's `{from, value}` with roles human and gpt is read too). Optional `choices` (a
list of strings) and `answer` (an index into choices, or one of them) make a record a multiple-choice
evaluation item. `data.columns` maps these names to the data's own. Every problem is reported as
`where: what is wrong`, where is `file:line` (JSONL) or `file: record n` / `file: row n` (JSON, Parquet,
directories), and names the field.

Under an instruction template (`compact`, `alpaca`, ...), a chat record must be one user turn and one
assistant turn: the user turn is the instruction, the assistant turn the output.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from cofitune_ray.config import ColumnsConfig
from cofitune_ray.training.prompt import CHAT, encode_chat, format_prompt, instruction_turns

if TYPE_CHECKING:  # reading and checking data needs no torch: the CLI reports bad data before importing it
    import torch

IGNORE_INDEX = -100
ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}


class DataError(ValueError):
    """A data file that cannot be used, with the file, record and field that say why."""


@dataclass(frozen=True)
class Example:
    """One validated example."""

    instruction: str
    input: str
    output: str
    choices: tuple[str, ...] | None = None
    answer: int | None = None  # index into choices
    where: str = ""  # `file:line` or `file: row n`, for messages about this example
    # A chat record read for the `chat` template: its turns ((role, content), ...), ending with the assistant's
    # (`output`); instruction is then the last user turn, for messages about it.
    messages: tuple[tuple[str, str], ...] | None = None


def read_examples(path: str | Path, columns: ColumnsConfig | None = None, chat: bool = False) -> list[Example]:
    """Read and check every record of a data file or `save_to_disk` directory (blank JSONL lines are skipped).

    chat: the records are for the `chat` template, which formats any conversation that ends with an assistant
    turn (else a chat record must be one user turn and one assistant turn).
    """
    path, columns = Path(path), columns or ColumnsConfig()
    examples = [_example(record, where, columns, chat) for where, record in _records(path, columns)]
    if not examples:
        raise DataError(f"{path}: the file holds no examples")
    return examples


def _records(path: Path, columns: ColumnsConfig) -> Iterator[tuple[str, object]]:
    """(where, record) for every record of the file or directory, in order."""
    if path.is_dir():
        yield from _table_rows(path, _saved_dataset_batches(path), columns)
    elif not path.is_file():
        raise DataError(f"{path}: data file not found")
    elif path.suffix == ".parquet":
        yield from _table_rows(path, _parquet_batches(path), columns)
    elif path.suffix == ".json":
        yield from _json_records(path)
    else:
        yield from _jsonl_records(path)


def _jsonl_records(path: Path) -> Iterator[tuple[str, object]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{number}", json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno})") from None


def _json_records(path: Path) -> Iterator[tuple[str, object]]:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # one record per line under a .json name
            yield from _jsonl_records(path)
            return
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records (or one record per line), got {type(data).__name__}")
    for number, record in enumerate(data, start=1):
        yield f"{path}: record {number}", record


def _parquet_batches(path: Path):
    import pyarrow
    import pyarrow.parquet

    try:
        parquet = pyarrow.parquet.ParquetFile(path)
    except (pyarrow.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a Parquet file ({exc})") from None
    return parquet.schema_arrow.names, parquet.iter_batches(batch_size=1024)


def _saved_dataset_batches(path: Path):
    """The column names and record batches of a `save_to_disk` directory (memory-mapped, read in batches)."""
    import datasets

    if (path / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in path.iterdir() if (p / "state.json").is_file())
        raise DataError(f"{path}: a DatasetDict with splits {', '.join(splits)}: give the directory of one split, "
                        f"e.g. {path / (splits[0] if splits else 'train')}")
    if not (path / "state.json").is_file():
        raise DataError(f"{path}: a directory, but not one written by datasets' save_to_disk (no state.json)")
    try:
        dataset = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises many types for files it cannot read (format, version, JSON)
        raise DataError(f"{path}: datasets {datasets.__version__} cannot read this directory (written by another "
                        f"version of datasets?): {type(exc).__name__}: {exc}") from None
    table = dataset.with_format("arrow")
    return dataset.column_names, (table[start:start + 1024] for start in range(0, len(dataset), 1024))


def _table_rows(path: Path, source, columns: ColumnsConfig) -> Iterator[tuple[str, object]]:
    """Rows of a table (Parquet, datasets) as records, after checking that the needed columns are there."""
    names, batches = source
    if columns.messages not in names:
        for key in ("instruction", "output"):
            column = getattr(columns, key)
            if column not in names:
                raise DataError(f"{path}: no column {_field(column, key, columns)} nor {columns.messages!r} "
                                f"(its columns: {', '.join(names)})")
    number = 0
    for batch in batches:
        for record in batch.to_pylist():
            number += 1
            yield f"{path}: row {number}", record


def _field(name: str, key: str, columns: ColumnsConfig) -> str:
    """A field's name in messages: the data's name, and the config key that gave it when it is mapped."""
    return repr(name) if name == key else f"{name!r} (data.columns.{key})"


def _text(record: dict, key: str, columns: ColumnsConfig, where: str, required: bool) -> str:
    name = getattr(columns, key)
    value = record.get(name)
    if value is None:
        if required:
            raise DataError(f"{where}: missing field {_field(name, key, columns)}")
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: field {_field(name, key, columns)} must be a string, got {type(value).__name__}")
    return value


def _example(record: object, where: str, columns: ColumnsConfig, chat: bool) -> Example:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    messages = None
    if record.get(columns.messages) is not None and chat:
        messages = _conversation(record[columns.messages], where, columns)
        instruction = next((content for role, content in reversed(messages) if role == "user"), "")
        input_text, output = "", messages[-1][1]
        output_name = f"field {_field(columns.messages, 'messages', columns)}: the last assistant turn"
    elif record.get(columns.messages) is not None:
        instruction, input_text, output = _single_turn(record[columns.messages], where, columns)
        output_name = f"field {_field(columns.messages, 'messages', columns)}: the assistant turn"
    else:
        instruction = _text(record, "instruction", columns, where, required=True)
        input_text = _text(record, "input", columns, where, required=False)
        output = _text(record, "output", columns, where, required=True)
        output_name = f"field {_field(columns.output, 'output', columns)}"
    if not output.strip():
        raise DataError(f"{where}: {output_name} is empty (nothing to learn or score)")
    choices, answer = record.get(columns.choices), record.get(columns.answer)
    if choices is not None or answer is not None:
        if not (isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) for c in choices)):
            raise DataError(f"{where}: field {_field(columns.choices, 'choices', columns)} must be a list of at "
                            f"least two strings")
        if isinstance(answer, str) and answer in choices:
            answer = choices.index(answer)
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise DataError(f"{where}: field {_field(columns.answer, 'answer', columns)} must be an index into "
                            f"choices or one of the choices")
        choices = tuple(choices)
    return Example(instruction, input_text, output, choices, answer, where, messages)


def _turns(messages: object, where: str, columns: ColumnsConfig) -> list[tuple[str, str]]:
    """(role, content) of every turn, roles as system | user | assistant."""
    name = _field(columns.messages, "messages", columns)
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: field {name} must be a non-empty list of turns")
    turns = []
    for i, turn in enumerate(messages):
        if not isinstance(turn, dict):
            raise DataError(f"{where}: field {name}[{i}]: expected an object with role and content")
        role = turn.get("role") if turn.get("role") is not None else turn.get("from")
        content = turn.get("content") if turn.get("content") is not None else turn.get("value")
        if role not in ROLES:
            raise DataError(f"{where}: field {name}[{i}].role: {role!r} is not one of system, user, assistant "
                            f"(ShareGPT: human, gpt)")
        if not isinstance(content, str):
            raise DataError(f"{where}: field {name}[{i}].content must be a string, got {type(content).__name__}")
        turns.append((ROLES[role], content))
    if not any(role == "assistant" for role, _ in turns):
        raise DataError(f"{where}: field {name} has no assistant turn (nothing to learn or score)")
    return turns


def _conversation(messages: object, where: str, columns: ColumnsConfig) -> tuple[tuple[str, str], ...]:
    """The turns of a chat record for the `chat` template, up to its last assistant turn (the response)."""
    turns = _turns(messages, where, columns)
    last = max(i for i, (role, _) in enumerate(turns) if role == "assistant")
    if last < len(turns) - 1:
        raise DataError(f"{where}: field {_field(columns.messages, 'messages', columns)} ends with a "
                        f"{turns[-1][0]} turn: a conversation ends with the assistant turn the model learns")
    return tuple(turns)


def _single_turn(messages: object, where: str, columns: ColumnsConfig) -> tuple[str, str, str]:
    """(instruction, input, output) of a chat record of one user turn and one assistant turn."""
    turns = _turns(messages, where, columns)
    if [role for role, _ in turns] != ["user", "assistant"]:
        raise DataError(f"{where}: field {_field(columns.messages, 'messages', columns)} has turns "
                        f"{', '.join(role for role, _ in turns)}: an instruction prompt template formats one user "
                        f"turn and one assistant turn")
    return turns[0][1], "", turns[1][1]


def fingerprint(paths: list[str | Path]) -> str:
    """A short content hash of data files or directories (what a cached computation was made from)."""
    digest = hashlib.sha256()
    for p in map(Path, paths):
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            digest.update(str(f.relative_to(p)).encode() if p.is_dir() else b"")
            with f.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
    return digest.hexdigest()[:16]


@dataclass
class TokenizedData:
    """Training sequences and how many had to be truncated to fit."""

    dataset: list[dict[str, list[int]]]  # rows {input_ids, labels}: a map-style dataset for DataLoader
    truncated: int
    lost_all_labels: int  # sequences whose response was cut away entirely


def chat_turns(instruction: str, input: str, response: str,
               messages: tuple[tuple[str, str], ...] | None = None) -> list[dict[str, str]]:
    """The conversation the `chat` template formats: a chat record's turns (its last, the assistant's, answered
    by `response`), or an instruction record as one user turn and the assistant's `response`."""
    if messages:
        turns = [{"role": role, "content": content} for role, content in messages[:-1]]
        return turns + [{"role": "assistant", "content": response}]
    return instruction_turns(instruction, input, response)


def encode_example(tokenizer, template: str, example: Example,
                   response: str | None = None) -> tuple[list[int], list[int]]:
    """Token ids of the prompt and of the response (closed by EOS), tokenised separately.

    Separate tokenisation gives an exact prompt/response boundary for response-only loss. The `chat`
    template formats through the tokenizer's chat template (`prompt.encode_chat`).
    """
    text = example.output if response is None else response
    if template == CHAT:
        return encode_chat(tokenizer, chat_turns(example.instruction, example.input, text, example.messages))
    prompt = format_prompt(template, example.instruction, example.input)
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    response_ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt_ids, response_ids


def tokenize_rows(batch: dict[str, list], tokenizer, template: str, max_seq_length: int,
                  loss_on: str = "response") -> dict[str, list]:
    """Training rows of a batch of examples (columns instruction, input, output, messages), as `encode_example`
    tokenises them: {input_ids, labels, truncated}. Labels mask the prompt unless loss_on == "sequence".

    A sequence truncated to `max_seq_length` keeps `truncated: True`; one left with no response token is
    dropped (the caller counts it as the difference in rows). A plain function of its arguments, for
    `datasets.Dataset.map(batched=True)`.
    """
    if template == CHAT:
        pairs = [encode_chat(tokenizer, chat_turns(i, x, o, [tuple(t) for t in json.loads(m)] if m else None))
                 for i, x, o, m in zip(batch["instruction"], batch["input"], batch["output"], batch["messages"])]
    else:
        prompts = [format_prompt(template, i, x) for i, x in zip(batch["instruction"], batch["input"])]
        prompt_ids = tokenizer(prompts, add_special_tokens=True)["input_ids"]
        response_ids = tokenizer(list(batch["output"]), add_special_tokens=False)["input_ids"]
        pairs = [(prompt, response + [tokenizer.eos_token_id]) for prompt, response in zip(prompt_ids, response_ids)]
    rows = {"input_ids": [], "labels": [], "truncated": []}
    for prompt, response in pairs:
        ids = prompt + response
        labels = (prompt if loss_on == "sequence" else [IGNORE_INDEX] * len(prompt)) + response
        truncated = len(ids) > max_seq_length
        ids, labels = ids[:max_seq_length], labels[:max_seq_length]
        if truncated and all(label == IGNORE_INDEX for label in labels):
            continue
        rows["input_ids"].append(ids)
        rows["labels"].append(labels)
        rows["truncated"].append(truncated)
    return rows


def encode_eval_rows(batch: dict[str, list], tokenizer, template: str, examples: list[Example]) -> dict[str, list]:
    """Token ids of a batch of evaluation examples (column `index` into `examples`), by `encode_example`: the
    prompt, the output, and each choice as the response. A plain function, for `datasets.Dataset.map`."""
    rows = {"prompt_ids": [], "output_ids": [], "choice_ids": []}
    for index in batch["index"]:
        example = examples[index]
        prompt_ids, output_ids = encode_example(tokenizer, template, example)
        rows["prompt_ids"].append(prompt_ids)
        rows["output_ids"].append(output_ids)
        rows["choice_ids"].append([encode_example(tokenizer, template, example, c)[1] for c in example.choices or ()])
    return rows


def example_columns(examples: list[Example]) -> dict[str, list[str]]:
    """The columns `tokenize_rows` reads, from examples (a chat record's turns as JSON, else "")."""
    return {"instruction": [e.instruction for e in examples], "input": [e.input for e in examples],
            "output": [e.output for e in examples],
            "messages": [json.dumps(e.messages) if e.messages else "" for e in examples]}


def tokenize_for_training(
    examples: list[Example], tokenizer, template: str, max_seq_length: int, loss_on: str = "response"
) -> TokenizedData:
    """Token ids and labels of examples, in memory (`training/tokenized.py` keeps a search's on storage)."""
    rows = tokenize_rows(example_columns(examples), tokenizer, template, max_seq_length, loss_on)
    kept = len(rows["input_ids"])
    dataset = [{"input_ids": ids, "labels": labels} for ids, labels in zip(rows["input_ids"], rows["labels"])]
    return TokenizedData(dataset, sum(rows["truncated"]) + len(examples) - kept, len(examples) - kept)


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
