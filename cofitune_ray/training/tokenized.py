"""The training set, tokenised once per search into an Arrow cache on the run's storage.

`training_set(config, tokenizer)` returns the cache entry of the config's training data, building it on a
miss: the examples are tokenised with `datasets.Dataset.map` (batched, `data.tokenize_rows`) and written
as one Arrow file. Preflight builds it before any Ray start; every worker of every trial then opens the
same file memory-mapped (`TrainingSet.load`) and reads only the rows its sampler gives it, so no worker
holds a copy of the corpus. The entry lives in `<storage_path>/tokenized/<key digest>/`, so `--resume`
and later searches on the same data reuse it.

The key is what the tokens depend on: the data's content and field names, the tokenizer, the prompt
template, `data.max_seq_length` and `data.loss_on`. An entry is written in a temporary directory and
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
from cofitune_ray.training.data import DataError, Example, example_columns, fingerprint, read_examples, tokenize_rows

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
    key = cache_key(config, tokenizer)
    directory = cache_directory(config, key)
    cached = _read_entry(directory, key)
    if cached is not None:
        return cached
    if examples is None:
        examples = read_examples(config.data.speciality_train, config.data.columns)
    return _build(config, tokenizer, examples, key, directory)


def _read_entry(directory: Path, key: dict) -> TrainingSet | None:
    meta = directory / META_FILE
    if not meta.is_file():
        return None
    data = json.loads(meta.read_text())
    if data["key"] != json.loads(json.dumps(key)):
        return None
    return TrainingSet(directory, data["examples"], data["rows"], data["truncated"], data["lost_all_labels"],
                       built=False)


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


def _build(config: Config, tokenizer, examples: list[Example], key: dict, directory: Path) -> TrainingSet:
    import datasets

    started = time.time()
    d = config.data
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        raw = datasets.Dataset.from_dict(example_columns(examples))
        with _quiet_datasets():
            # An explicit fingerprint: datasets then hashes neither the function nor the tokenizer (no dill).
            tokens = raw.map(tokenize_rows, batched=True, batch_size=1000, remove_columns=raw.column_names,
                             fn_kwargs={"tokenizer": tokenizer, "template": d.prompt_template,
                                        "max_seq_length": d.max_seq_length, "loss_on": d.loss_on},
                             cache_file_name=str(staging / TOKENS_FILE), new_fingerprint=directory.name)
        rows = len(tokens)
        lost = len(examples) - rows
        if rows == 0:
            raise DataError(f"{d.speciality_train}: no training sequence keeps a response token within "
                            f"data.max_seq_length ({d.max_seq_length} tokens): every prompt fills it")
        truncated = sum(tokens.with_format("arrow")["truncated"].to_pylist()) + lost
        meta = {"key": key, "examples": len(examples), "rows": rows, "truncated": truncated, "lost_all_labels": lost}
        (staging / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        del tokens
        try:
            staging.rename(directory)
        except OSError:  # another process built the same entry first: its tokens are the same
            shutil.rmtree(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    seconds = time.time() - started
    with open(directory.parent / BUILDS_FILE, "a") as handle:
        handle.write(json.dumps({"entry": directory.name, "data": config.data.speciality_train,
                                 "examples": len(examples), "seconds": round(seconds, 3), "pid": os.getpid(),
                                 "time": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
    return TrainingSet(directory, len(examples), rows, truncated, lost, built=True)
