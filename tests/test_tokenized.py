"""Training and evaluation sets are tokenised once per search: a node's data from every format gives the hand-built
tokens, the cache is reused while data, tokenizer and template stay, workers read it memory-mapped, and evaluation
scores what it scored before."""

import copy
import dataclasses
import json
import re

import pyarrow as pa
import pytest

from cofitune_ray.config import ColumnsConfig, config_from_dict
from cofitune_ray.training.data import IGNORE_INDEX, DataError, encode_example
from cofitune_ray.training.evaluate import Evaluator, score_set
from cofitune_ray.training.model import load_model, load_tokenizer
from cofitune_ray.training.tokenized import BUILDS_FILE, CACHE_DIR, training_set
from tiny import (
    ALPHABET,
    CHAT_SPECIALS,
    FORMATS,
    SPECIALS,
    make_chat_tokenizer,
    make_model,
    make_tokenizer,
    write_formats,
    write_jsonl,
)

ROWS = [{"instruction": "rev", "input": "", "output": "ba"},
        {"instruction": "pick", "input": "", "output": "y", "choices": ["x", "y"], "answer": 1}]
EOS = SPECIALS.index("</s>")


def ids(text: str) -> list[int]:
    """The character tokenizer's ids, by hand."""
    return [len(SPECIALS) + ALPHABET.index(c) for c in text]


#: The compact template's rows for ROWS, built by hand: prompt "instruction:input=", response closed by EOS.
EXPECTED = [
    {"input_ids": ids("rev:=") + ids("ba") + [EOS], "labels": [IGNORE_INDEX] * 5 + ids("ba") + [EOS]},
    {"input_ids": ids("pick:=") + ids("y") + [EOS], "labels": [IGNORE_INDEX] * 6 + ids("y") + [EOS]},
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_tokenizer(root / "tok")
    return root, write_formats(root / "formats", ROWS)


def _config(root, path, columns, storage, **data):
    from dataclasses import asdict

    return config_from_dict({
        "model": {"path": str(root / "tok")},
        "data": {"speciality_train": str(path), "speciality_eval": {"name": "s", "path": str(path)},
                 "versatility": [{"name": "v", "path": str(path)}], "prompt_template": "compact",
                 "max_seq_length": 32, "columns": asdict(columns), **data},
        "storage_path": str(storage),
    })


@pytest.mark.parametrize("name", FORMATS)
def test_a_node_reads_the_hand_built_tokens_from_every_format(files, tmp_path, name):
    root, formats = files
    config = _config(root, *formats[name], tmp_path)
    entry = training_set(config, load_tokenizer(str(root / "tok")))
    rows = entry.load()
    assert [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows] == EXPECTED
    assert (entry.examples, entry.rows, entry.truncated, entry.built) == (2, 2, 0, True)


def test_tokenised_once_and_rebuilt_only_when_what_it_depends_on_changes(files, tmp_path, capfd):
    root, formats = files
    tokenizer = load_tokenizer(str(root / "tok"))
    path, columns = formats["jsonl"]
    data = tmp_path / "train.jsonl"
    data.write_text(path.read_text())
    config = _config(root, data, columns, tmp_path / "storage")
    first = training_set(config, tokenizer)
    again = training_set(copy.deepcopy(config), tokenizer)  # another trial, or a --resume, or a second search
    assert first.built and not again.built and again.directory == first.directory
    builds = tmp_path / "storage" / CACHE_DIR / BUILDS_FILE
    assert len(builds.read_text().splitlines()) == 1
    output = capfd.readouterr()
    assert not any(word in output.out + output.err for word in ("dill", "fingerprint", "Map", "%|"))

    with pytest.raises(DataError, match=re.escape(f"{data}: no training sequence keeps a response token within "
                                                  "data.max_seq_length (32 tokens)")):
        training_set(_config(root, data, columns, tmp_path / "storage", prompt_template="alpaca"), tokenizer)
    alpaca = training_set(_config(root, data, columns, tmp_path / "storage", prompt_template="alpaca",
                                  max_seq_length=256), tokenizer)
    data.write_text(path.read_text().replace('"ba"', '"ab"'))
    edited = training_set(config, tokenizer)
    assert alpaca.built and edited.built and len({first.directory, alpaca.directory, edited.directory}) == 3
    assert edited.load()[0]["input_ids"] == ids("rev:=") + ids("ab") + [EOS]
    assert len(builds.read_text().splitlines()) == 3
    entries = sorted(p.name for p in (tmp_path / "storage" / CACHE_DIR).iterdir())
    assert len(entries) == 4 and not any(".tmp" in name for name in entries)  # three entries and the builds log
    meta = json.loads((first.directory / "meta.json").read_text())
    assert meta["key"]["prompt_template"] == "compact" and meta["rows"] == 2


def test_workers_read_the_cache_memory_mapped(files, tmp_path):
    root, formats = files
    entry = training_set(_config(root, *formats["parquet"], tmp_path), load_tokenizer(str(root / "tok")))
    allocated = pa.total_allocated_bytes()
    rows = entry.load()
    tokens = rows.table.column("input_ids").chunk(0).buffers()[-1]  # the token ids themselves
    assert tokens.size > 0 and pa.total_allocated_bytes() - allocated < tokens.size  # read from the map, not copied
    assert len(rows) == 2 and [rows[1], rows[0]] == EXPECTED[::-1]


def test_evaluation_sets_are_tokenised_once_and_score_as_before(files, tmp_path):
    root, formats = files
    make_model(root / "tok", layers=2)
    config = _config(root, *formats["messages-parquet"], tmp_path)
    tokenizer = load_tokenizer(str(root / "tok"))
    evaluator = Evaluator.from_config(config, tokenizer)
    spec = evaluator.speciality
    assert spec.tokens.built and not Evaluator.from_config(config, tokenizer).speciality.tokens.built
    for example in spec.examples:
        for response in (example.output, *(example.choices or ())):
            assert spec.tokens.encode(example, response) == encode_example(tokenizer, "compact", example, response)
    assert spec.tokens.encode(spec.examples[0]) == (ids("rev:="), ids("ba") + [EOS])
    model = load_model(str(root / "tok"))
    cached = score_set(model, tokenizer, "compact", spec, 2, 4)
    assert cached == score_set(model, tokenizer, "compact", dataclasses.replace(spec, tokens=None), 2, 4)


def test_a_messages_file_through_the_chat_template(tmp_path):
    """Chat records (a system turn, earlier turns, ShareGPT's from/value) train on their last assistant turn."""
    tokenizer = make_chat_tokenizer(tmp_path / "tok")
    vocab = tokenizer.get_vocab()

    def chat_ids(*pieces: str) -> list[int]:
        """By hand: special tokens whole, every other piece character by character."""
        return [vocab[p] for piece in pieces for p in ([piece] if piece in CHAT_SPECIALS else piece)]

    start, end = "<|im_start|>", "<|im_end|>"
    records = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                             {"role": "assistant", "content": "yo"}, {"role": "user", "content": "ab"},
                             {"role": "assistant", "content": "ba"}]},
               {"messages": [{"from": "human", "value": "rev"}, {"from": "gpt", "value": "ab"}]}]
    path = write_jsonl(tmp_path / "chat.jsonl", records)
    config = _config(tmp_path, path, ColumnsConfig(), tmp_path / "storage", prompt_template="chat", max_seq_length=256)
    rows = list(training_set(config, load_tokenizer(str(tmp_path / "tok"))).load())
    prompts = [chat_ids(start, "system\nBe brief.", end, "\n", start, "user\nhi", end, "\n", start, "assistant\nyo",
                        end, "\n", start, "user\nab", end, "\n", start, "assistant\n"),
               chat_ids(start, "system\nYou are tiny.", end, "\n", start, "user\nrev", end, "\n", start, "assistant\n")]
    answers = [chat_ids("ba", end), chat_ids("ab", end)]
    assert rows == [{"input_ids": p + a, "labels": [IGNORE_INDEX] * len(p) + a} for p, a in zip(prompts, answers)]
    with pytest.raises(DataError, match=re.escape(f"{path}:1: field 'messages' has turns system, user, assistant, "
                                                  "user, assistant")):
        training_set(_config(tmp_path, path, ColumnsConfig(), tmp_path / "storage"), tokenizer)  # compact
