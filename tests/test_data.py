"""Data: validation errors name file and line; tokenisation masks prompts; truncation is counted."""

import pytest

from cofitune_ray.training.data import IGNORE_INDEX, DataError, collate, encode_example, read_jsonl, tokenize_for_training
from cofitune_ray.training.prompt import format_prompt
from tiny import make_tokenizer, write_jsonl


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def _file(tmp_path, text):
    path = tmp_path / "d.jsonl"
    path.write_text(text)
    return path


def test_reads_examples_and_skips_blank_lines(tmp_path):
    path = _file(tmp_path, '{"instruction": "a", "input": "", "output": "b"}\n\n{"instruction": "c", "output": "d"}\n')
    examples = read_jsonl(path)
    assert [(e.instruction, e.input, e.output, e.line) for e in examples] == [("a", "", "b", 1), ("c", "", "d", 3)]


@pytest.mark.parametrize("text,message", [
    ('{"instruction": "a", "output": "b"}\n{"instruction": "a",\n', ":2: not valid JSON"),
    ('{"instruction": "a", "input": "x"}\n', ":1: missing field 'output'"),
    ('{"instruction": 3, "output": "b"}\n', ":1: field 'instruction' must be a string, got int"),
    ('["a"]\n', ":1: expected a JSON object, got list"),
    ('{"instruction": "a", "output": "b", "choices": ["x"], "answer": 0}\n', ":1: field 'choices'"),
    ('{"instruction": "a", "output": "b", "choices": ["x", "y"], "answer": 2}\n', ":1: field 'answer'"),
])
def test_bad_lines_name_file_and_line(tmp_path, text, message):
    path = _file(tmp_path, text)
    with pytest.raises(DataError, match=str(path).replace(".", r"\.") + message.replace("(", r"\(")):
        read_jsonl(path)


def test_empty_file_is_an_error(tmp_path):
    with pytest.raises(DataError, match="holds no examples"):
        read_jsonl(_file(tmp_path, "\n\n"))


def test_answer_may_be_one_of_the_choices(tmp_path):
    path = _file(tmp_path, '{"instruction": "q", "output": "y", "choices": ["x", "y"], "answer": "y"}\n')
    assert read_jsonl(path)[0].answer == 1


def test_response_only_labels(tmp_path, tokenizer):
    examples = read_jsonl(write_jsonl(tmp_path / "d.jsonl", [{"instruction": "rev", "input": "ab", "output": "ba"}]))
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
    data = tokenize_for_training(read_jsonl(write_jsonl(tmp_path / "d.jsonl", rows)), tokenizer, "compact", 16)
    assert data.truncated == 2 and data.lost_all_labels == 1
    assert len(data.dataset) == 2 and max(len(r) for r in data.dataset["input_ids"]) == 16


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
    example = read_jsonl(write_jsonl(tmp_path / "d.jsonl", [{"instruction": "i", "input": "", "output": "ok"}]))[0]
    prompt_ids, response_ids = encode_example(tokenizer, "compact", example)
    assert response_ids[-1] == tokenizer.eos_token_id and tokenizer.decode(prompt_ids) == "i:="
