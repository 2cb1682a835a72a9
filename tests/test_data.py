"""Data: every format reads to the same examples; errors name file, record and field; tokenisation masks prompts;
truncation is counted."""

import json
import re

import pytest

from cofitune_ray.config import ColumnsConfig
from cofitune_ray.training.data import (
    IGNORE_INDEX,
    DataError,
    collate,
    encode_example,
    encode_examples,
    read_examples,
    tokenize_for_training,
)
from cofitune_ray.training.prompt import format_prompt
from tiny import FORMATS, make_examples, make_tokenizer, write_formats, write_jsonl


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def _file(tmp_path, text):
    path = tmp_path / "d.jsonl"
    path.write_text(text)
    return path


def test_reads_examples_and_skips_blank_lines(tmp_path):
    path = _file(tmp_path, '{"instruction": "a", "input": "", "output": "b"}\n\n{"instruction": "c", "output": "d"}\n')
    examples = read_examples(path)
    assert [(e.instruction, e.input, e.output, e.where) for e in examples] == [("a", "", "b", f"{path}:1"),
                                                                                ("c", "", "d", f"{path}:3")]


@pytest.mark.parametrize("text,message", [
    ('{"instruction": "a", "output": "b"}\n{"instruction": "a",\n', ":2: not valid JSON"),
    ('{"instruction": "a", "input": "x"}\n', ":1: missing field 'output'"),
    ('{"instruction": 3, "output": "b"}\n', ":1: field 'instruction' must be a string, got int"),
    ('["a"]\n', ":1: expected a JSON object, got list"),
    ('{"instruction": "a", "output": "b", "choices": ["x"], "answer": 0}\n', ":1: field 'choices'"),
    ('{"instruction": "a", "output": "b", "choices": ["x", "y"], "answer": 2}\n', ":1: field 'answer'"),
    ('{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": " "}\n', ":2: field 'output' is empty"),
    ('{"messages": [{"role": "user", "content": "a"}]}\n', ":1: field 'messages' has no assistant turn"),
    ('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]}\n',
     ":1: field 'messages': the assistant turn is empty"),
    ('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, '
     '{"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}\n',
     ":1: field 'messages' has turns user, assistant, user, assistant: an instruction prompt template formats one "
     "user turn and one assistant turn"),
    ('{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "a"}, '
     '{"role": "assistant", "content": "b"}]}\n', ":1: field 'messages' has turns system, user, assistant"),
    ('{"messages": [{"role": "robot", "content": "a"}]}\n', ":1: field 'messages'[0].role: 'robot' is not one of"),
    ('{"messages": "hello"}\n', ":1: field 'messages' must be a non-empty list of turns"),
])
def test_bad_lines_name_file_and_line(tmp_path, text, message):
    path = _file(tmp_path, text)
    with pytest.raises(DataError, match=re.escape(str(path) + message)):
        read_examples(path)


def test_empty_file_is_an_error(tmp_path):
    with pytest.raises(DataError, match="holds no examples"):
        read_examples(_file(tmp_path, "\n\n"))


def test_answer_may_be_one_of_the_choices(tmp_path):
    path = _file(tmp_path, '{"instruction": "q", "output": "y", "choices": ["x", "y"], "answer": "y"}\n')
    assert read_examples(path)[0].answer == 1


def test_response_only_labels(tmp_path, tokenizer):
    examples = read_examples(write_jsonl(tmp_path / "d.jsonl", [{"instruction": "rev", "input": "ab", "output": "ba"}]))
    data = tokenize_for_training(examples, tokenizer, "compact", 64)
    row = data.dataset[0]
    prompt_len = len(format_prompt("compact", "rev", "ab"))  # one token per character
    assert row["labels"][:prompt_len] == [IGNORE_INDEX] * prompt_len
    assert row["labels"][prompt_len:] == row["input_ids"][prompt_len:]
    assert tokenizer.decode(row["input_ids"][prompt_len:]) == "ba</s>"
    whole = tokenize_for_training(examples, tokenizer, "compact", 64, loss_on="sequence").dataset[0]
    assert whole["labels"] == whole["input_ids"]


def test_truncation_is_counted_never_silent(tmp_path, tokenizer):
    rows = [{"instruction": "rev", "input": "abcdefgh", "output": "hgfedcba"},
            {"instruction": "rev", "input": "ab", "output": "ba"},
            {"instruction": "a-very-long-instruction", "input": "abcdefgh", "output": "x"}]
    data = tokenize_for_training(read_examples(write_jsonl(tmp_path / "d.jsonl", rows)), tokenizer, "compact", 16)
    assert data.truncated == 2 and data.lost_all_labels == 1
    assert len(data.dataset) == 2 and max(len(r["input_ids"]) for r in data.dataset) == 16


def test_collate_pads_right_and_masks(tokenizer):
    batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [5], "labels": [5]}], 0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [5, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_alpaca_template_has_a_form_without_input():
    with_input = format_prompt("alpaca", "Add", "1 2")
    without = format_prompt("alpaca", "Say hi")
    assert "### Input:\n1 2" in with_input and "### Input" not in without
    assert without.endswith("### Response:\n")


def test_encode_example_ends_response_with_eos(tmp_path, tokenizer):
    example = read_examples(write_jsonl(tmp_path / "d.jsonl", [{"instruction": "i", "input": "", "output": "ok"}]))[0]
    prompt_ids, response_ids = encode_example(tokenizer, "compact", example)
    assert response_ids[-1] == tokenizer.eos_token_id and tokenizer.decode(prompt_ids) == "i:="


ROWS = [{"instruction": "rev", "input": "", "output": "ba"},
        {"instruction": "pick", "input": "", "output": "y", "choices": ["x", "y"], "answer": 1}]


@pytest.mark.parametrize("name", FORMATS)
def test_every_format_reads_to_the_same_examples(tmp_path, name):
    path, columns = write_formats(tmp_path, ROWS)[name]
    examples = read_examples(path, columns)
    assert [(e.instruction, e.input, e.output, e.choices, e.answer) for e in examples] == [
        ("rev", "", "ba", None, None), ("pick", "", "y", ("x", "y"), 1)]
    assert examples[1].where in (f"{path}:2", f"{path}: record 2", f"{path}: row 2")


def test_a_json_file_of_json_lines_reads_as_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "d.json", ROWS)
    assert [e.where for e in read_examples(path)] == [f"{path}:1", f"{path}:2"]


def test_table_errors_name_file_row_and_field(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([{"instruction": "a", "reply": "b"}]), path)
    with pytest.raises(DataError, match=re.escape(f"{path}: no column 'output' nor 'messages' "
                                                  "(its columns: instruction, reply)")):
        read_examples(path)
    pq.write_table(pa.Table.from_pylist([{"instruction": "a", "reply": "b"}, {"instruction": "c", "reply": ""}]), path)
    with pytest.raises(DataError, match=re.escape(f"{path}: row 2: field 'reply' (data.columns.output) is empty")):
        read_examples(path, ColumnsConfig(output="reply"))
    chat = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist([{"messages": [{"role": "user", "content": "a"}]}]), chat)
    with pytest.raises(DataError, match=re.escape(f"{chat}: row 1: field 'messages' has no assistant turn")):
        read_examples(chat)


def test_a_parquet_file_that_is_not_one(tmp_path):
    path = write_jsonl(tmp_path / "d.parquet", ROWS)
    with pytest.raises(DataError, match=re.escape(f"{path}: not a Parquet file")):
        read_examples(path)


def test_a_datasets_directory_from_another_version(tmp_path):
    directory = write_formats(tmp_path, ROWS)["save_to_disk"][0]
    info = json.loads((directory / "dataset_info.json").read_text())
    info["features"]["output"]["_type"] = "Utf8Text"  # a feature type this datasets version does not know
    (directory / "dataset_info.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match=re.escape(f"{directory}: datasets ") + r"[\d.]+ cannot read this directory "
                       r"\(written by another version of datasets\?\).*Utf8Text"):
        read_examples(directory)


def test_a_dataset_dict_names_its_splits(tmp_path):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS),
                          "test": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'dd'}: a DatasetDict with splits test, train: give "
                                                  f"the directory of one split, e.g. {tmp_path / 'dd' / 'test'}")):
        read_examples(tmp_path / "dd")
    assert len(read_examples(tmp_path / "dd" / "train")) == 2


def test_batched_encoding_is_encode_example(tmp_path, tokenizer):
    """The cache's batched tokenisation gives the tokens evaluation and importance get one example at a time."""
    rows = make_examples(6) + [{"instruction": "i", "output": "o"}]
    examples = read_examples(write_jsonl(tmp_path / "d.jsonl", rows))
    for template in ("alpaca", "compact"):
        assert encode_examples(tokenizer, template, examples) == [encode_example(tokenizer, template, e)
                                                                  for e in examples]
