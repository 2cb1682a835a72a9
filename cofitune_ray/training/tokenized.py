"""The training and evaluation sets, tokenised once per search into an Arrow cache on the run's storage.

`training_set(config, tokenizer)` returns the cache entry of the config's training data, building it on a
miss: the examples are tokenised with `datasets.Dataset.map` (batched, `data.tokenize_rows`) and written
as one Arrow file. Preflight builds it before any Ray start; every worker of every trial then opens the
same file memory-mapped (`TrainingSet.load`) and reads only the rows its sampler gives it, so no worker
holds a copy of the corpus. `eval_tokens` does the same for an evaluation set (`data.encode_eval_rows`:
each example's prompt, output and choices); evaluation sets are small, and a worker holds theirs in
memory. An entry lives in `<storage_path>/tokenized/<key digest>/`, so `--resume` and later searches on
the same data reuse it.

The key is what the tokens depend on: the data's content and field names, the tokenizer, the prompt
template, and for the training set `data.max_seq_length` and `data.loss_on` (for an evaluation set, how
many of its examples are scored). An entry is written in a temporary directory and
renamed into place whole, `meta.json` included, so a half-written entry is never read. Each build adds a
line to `<storage_path>/tokenized/builds.jsonl`: one line per tokenisation, for the user and the tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from cofitune_ray.config import Config
from cofitune_ray.training.data import (
    DataError,
    Example,
    encode_eval_rows,
    example_columns,
    fingerprint,
    read_examples,
    tokenize_rows,
)
from cofitune_ray.training.prompt import CHAT

CACHE_DIR = "tokenized"  # under storage_path
BUILDS_FILE = "builds.jsonl"  # in CACHE_DIR: one line per build
TOKENS_FILE = "tokens.arrow"
META_FILE = "meta.json"
FORMAT = 1  # the entry's layout and tokenize_rows' output; a change makes new keys


@dataclass(frozen=True)
class TrainingSet:
    """A cache entry: where its tokens are and what building it counted."""

    directory: Path
    examples: int  # records read
    rows: int  # training sequences kept
    truncated: int  # sequences longer than max_seq_length (kept truncated, or left out)
    lost_all_labels: int  # of those, sequences with no response token left (left out)
    built: bool  # this call tokenised (False: the entry was there)

    def load(self):
        """The tokens as a `datasets.Dataset` of rows {input_ids, labels, truncated}, memory-mapped from disk."""
        import datasets

        return datasets.Dataset.from_file(str(self.directory / TOKENS_FILE))


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what tokenisation depends on: the tokenizer's model, specials and chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocabulary = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    parts = [type(tokenizer).__name__, vocabulary, str(tokenizer.bos_token_id), str(tokenizer.eos_token_id),
             str(getattr(tokenizer, "chat_template", None))]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def cache_key(config: Config, tokenizer) -> dict:
    """What the training set's tokens depend on; equal keys mean the cached tokens can be reused."""
    d = config.data
    return {"format": FORMAT, "data": fingerprint([d.speciality_train]), "columns": asdict(d.columns),
            "tokenizer": tokenizer_fingerprint(tokenizer), "prompt_template": d.prompt_template,
            "max_seq_length": d.max_seq_length, "loss_on": d.loss_on}


def cache_directory(config: Config, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(config.storage_path).resolve() / CACHE_DIR / digest


def training_set(config: Config, tokenizer, examples: list[Example] | None = None) -> TrainingSet:
    """The config's training set, tokenised: the cached entry, or built now (from `examples` when the caller has
    already read them)."""
    d = config.data

    def build(staging: Path) -> dict:
        chat = d.prompt_template == CHAT
        read = examples if examples is not None else read_examples(d.speciality_train, d.columns, chat)
        import datasets

        raw = datasets.Dataset.from_dict(example_columns(read))
        tokens = _map(raw, tokenize_rows, staging, {"tokenizer": tokenizer, "template": d.prompt_template,
                                                     "max_seq_length": d.max_seq_length, "loss_on": d.loss_on})
        lost = len(read) - len(tokens)
        if not len(tokens):
            raise DataError(f"{d.speciality_train}: no training sequence keeps a response token within "
                            f"data.max_seq_length ({d.max_seq_length} tokens): every prompt fills it")
        truncated = sum(tokens.with_format("arrow")["truncated"].to_pylist()) + lost
        return {"examples": len(read), "rows": len(tokens), "truncated": truncated, "lost_all_labels": lost}

    directory, meta, built = _entry(config, cache_key(config, tokenizer), d.speciality_train, build)
    return TrainingSet(directory, meta["examples"], meta["rows"], meta["truncated"], meta["lost_all_labels"], built)


class EvalTokens:
    """An evaluation set's token ids, tokenised once per search: (prompt, response) of each example with its
    output and with each of its choices, as `data.encode_example` gives them."""

    def __init__(self, directory: Path, examples: list[Example], built: bool):
        import datasets

        self.directory, self.built = directory, built
        columns = datasets.Dataset.from_file(str(directory / TOKENS_FILE)).with_format("arrow")[:].to_pydict()
        self._pairs: dict[tuple[Example, str], tuple[list[int], list[int]]] = {}
        for i, example in enumerate(examples):
            prompt = columns["prompt_ids"][i]
            self._pairs[(example, example.output)] = (prompt, columns["output_ids"][i])
            for choice, ids in zip(example.choices or (), columns["choice_ids"][i]):
                self._pairs.setdefault((example, choice), (prompt, ids))

    def encode(self, example: Example, response: str | None = None) -> tuple[list[int], list[int]]:
        """The prompt's and the response's ids (response: the example's output unless given, else one of its
        choices)."""
        return self._pairs[(example, example.output if response is None else response)]


def eval_tokens(config: Config, tokenizer, path: str, examples: list[Example]) -> EvalTokens:
    """The evaluation set read from `path` (its `examples`, as `EvalSet.load` read them), tokenised: the cached
    entry, or built now."""
    d = config.data
    key = {"format": FORMAT, "eval": fingerprint([path]), "columns": asdict(d.columns),
           "examples": len(examples), "tokenizer": tokenizer_fingerprint(tokenizer),
           "prompt_template": d.prompt_template}

    def build(staging: Path) -> dict:
        import datasets

        raw = datasets.Dataset.from_dict({"index": list(range(len(examples)))})
        _map(raw, encode_eval_rows, staging, {"tokenizer": tokenizer, "template": d.prompt_template,
                                               "examples": examples})
        return {"examples": len(examples)}

    directory, _, built = _entry(config, key, path, build)
    return EvalTokens(directory, examples, built)


def _map(raw, function, staging: Path, kwargs: dict):
    """`raw.map(function)`, batched, into the staging directory's Arrow file, quietly."""
    with _quiet_datasets():
        # An explicit fingerprint: datasets then hashes neither the function nor its arguments (no dill).
        return raw.map(function, batched=True, batch_size=1000, remove_columns=raw.column_names, fn_kwargs=kwargs,
                       cache_file_name=str(staging / TOKENS_FILE), new_fingerprint=staging.name.split(".")[0])


def _entry(config: Config, key: dict, source: str, build) -> tuple[Path, dict, bool]:
    """(directory, meta, built) of the cache entry for `key`: read, or made by `build(staging)` (which writes
    TOKENS_FILE and returns the counts for meta.json) and renamed into place whole."""
    directory = cache_directory(config, key)
    meta_file = directory / META_FILE
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        if meta["key"] == json.loads(json.dumps(key)):
            return directory, meta, False
    started = time.time()
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        meta = {"key": key, **build(staging)}
        (staging / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        try:
            staging.rename(directory)
        except OSError:  # another process built the same entry first: its tokens are the same
            shutil.rmtree(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    with open(directory.parent / BUILDS_FILE, "a") as handle:
        handle.write(json.dumps({"entry": directory.name, "data": str(source), "examples": meta["examples"],
                                 "seconds": round(time.time() - started, 3), "pid": os.getpid(),
                                 "time": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
    return directory, meta, True


@contextmanager
def _quiet_datasets():
    """No progress bars from datasets while it works for us (the CLI's output is the search's)."""
    from datasets.utils import logging as datasets_logging

    was_enabled = datasets_logging.is_progress_bar_enabled()
    datasets_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            datasets_logging.enable_progress_bar()
