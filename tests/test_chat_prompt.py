"""`data.prompt_template: chat`: training and evaluation through the tokenizer's own chat template."""

import json

import pytest
import torch
import torch.nn.functional as F

from cofitune_ray.config import load_config
from cofitune_ray.preflight import PreflightError, preflight
from cofitune_ray.training.data import IGNORE_INDEX, Example, encode_example, read_examples, tokenize_for_training
from cofitune_ray.training.evaluate import EvalSet, score_set
from cofitune_ray.training.model import load_model
from cofitune_ray.training.prompt import PromptError, encode_chat, instruction_turns
from tiny import make_chat_tokenizer, make_model, make_tokenizer, make_world, write_config


@pytest.fixture(scope="module")
def chat_tokenizer(tmp_path_factory):
    return make_chat_tokenizer(tmp_path_factory.mktemp("chat"))


def ids(tokenizer, *pieces: str) -> list[int]:
    """Token ids by hand: special tokens whole, every other piece character by character."""
    vocab = tokenizer.get_vocab()
    return [vocab[p] for piece in pieces for p in ([piece] if piece in vocab and len(piece) > 1 else piece)]


def test_an_instruction_example_is_the_users_turn_and_the_answer_the_assistants(chat_tokenizer):
    prompt, response = encode_example(chat_tokenizer, "chat", Example("rev", "abc", "cba"))
    assert prompt == ids(chat_tokenizer, "<|im_start|>", "system\nYou are tiny.", "<|im_end|>", "\n",
                         "<|im_start|>", "user\nrev\n\nabc", "<|im_end|>", "\n", "<|im_start|>", "assistant\n")
    # the answer through its end-of-turn token; the template's newline after it is neither learned nor generated
    assert response == ids(chat_tokenizer, "cba", "<|im_end|>")
    assert chat_tokenizer.decode(response) == "cba<|im_end|>"
    no_input, _ = encode_example(chat_tokenizer, "chat", Example("hello", "", "x"))
    assert chat_tokenizer.decode(no_input).endswith("user\nhello<|im_end|>\n<|im_start|>assistant\n")


def test_training_labels_cover_only_the_answer_and_its_end_of_turn(chat_tokenizer):
    rows = tokenize_for_training([Example("rev", "ab", "ba")], chat_tokenizer, "chat", 128).dataset
    labels = rows[0]["labels"]
    trained = [label for label in labels if label != IGNORE_INDEX]
    assert trained == ids(chat_tokenizer, "ba", "<|im_end|>")
    assert labels[: -len(trained)] == [IGNORE_INDEX] * (len(labels) - len(trained))
    assert rows[0]["input_ids"][-len(trained):] == trained


def test_a_conversation_with_a_system_turn_and_earlier_turns(chat_tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "yo"}, {"role": "user", "content": "ab"},
                {"role": "assistant", "content": "ba"}]
    prompt, response = encode_chat(chat_tokenizer, messages)
    assert chat_tokenizer.decode(prompt).startswith("<|im_start|>system\nBe brief.<|im_end|>")  # no default one
    assert chat_tokenizer.decode(prompt).endswith("yo<|im_end|>\n<|im_start|>user\nab<|im_end|>\n"
                                                  "<|im_start|>assistant\n")
    assert response == ids(chat_tokenizer, "ba", "<|im_end|>")
    assert instruction_turns("do", "it", "done")[0] == {"role": "user", "content": "do\n\nit"}


def test_chat_needs_a_chat_template_and_an_assistant_turn_last(chat_tokenizer, tmp_path):
    with pytest.raises(PromptError, match="ending|end with the assistant"):
        encode_chat(chat_tokenizer, [{"role": "user", "content": "ab"}])
    plain = make_tokenizer(tmp_path)
    with pytest.raises(PromptError, match="no chat template|has none"):
        encode_chat(plain, instruction_turns("rev", "ab", "ba"))


def test_preflight_names_the_key_when_the_tokenizer_has_no_chat_template(tmp_path):
    world = make_world(tmp_path, layers=4)
    world["data"].update(prompt_template="chat", max_seq_length=128)
    with pytest.raises(PreflightError, match=r"data\.prompt_template: 'chat' .* has none"):
        preflight(load_config(write_config(tmp_path / "run.yaml", world)))
    make_chat_tokenizer(tmp_path / "model")  # the same model, now with a chat template: accepted
    checked = preflight(load_config(write_config(tmp_path / "run.yaml", world)))
    assert checked.train_examples == 32


def test_the_scored_log_likelihood_is_the_answers_under_the_chat_prompt(chat_tokenizer, tmp_path):
    """Evaluation prompts through the same function: the set's log-likelihood is the one a plain forward
    of each whole conversation gives to the answer's tokens and its end-of-turn token."""
    make_model(tmp_path, layers=2, hidden=32, intermediate=48)
    model = load_model(str(tmp_path)).eval()
    model.resize_token_embeddings(len(chat_tokenizer))
    examples = [Example("rev", "abc", "cba"), Example("upper", "", "HELLO there"), Example("x", "y", "z")]
    expected, tokens = 0.0, 0
    for example in examples:
        prompt, response = encode_example(chat_tokenizer, "chat", example)
        with torch.no_grad():
            logprobs = F.log_softmax(model(torch.tensor([prompt + response])).logits[0].float(), dim=-1)
        expected += sum(logprobs[len(prompt) - 1 + i, t].item() for i, t in enumerate(response))
        tokens += len(response)
    scores = score_set(model, chat_tokenizer, "chat", EvalSet("l", examples, "loglik"), 2, 4)
    assert scores["loglik"] == pytest.approx(expected / tokens, abs=1e-4)


def test_a_chat_record_trains_on_its_last_assistant_turn(chat_tokenizer, tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                                             {"role": "user", "content": "ab"},
                                             {"role": "assistant", "content": "ba"}]}) + "\n")
    (example,) = read_examples(path, chat=True)
    rows = tokenize_for_training([example], chat_tokenizer, "chat", 128).dataset
    trained = [label for label in rows[0]["labels"] if label != IGNORE_INDEX]
    assert trained == ids(chat_tokenizer, "ba", "<|im_end|>")
    assert chat_tokenizer.decode(rows[0]["input_ids"]).count("<|im_start|>") == 5  # default system + 4 turns
    assert encode_example(chat_tokenizer, "chat", example) == (rows[0]["input_ids"][:-len(trained)], trained)
