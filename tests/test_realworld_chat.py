"""A model the project trained through the chat template and exported still chats (realworld/chat.py)."""

import copy

import pytest

from cofitune_ray.config import config_from_dict
from cofitune_ray.core.node import FULL_SFT_PART
from cofitune_ray.realworld.chat import answer
from cofitune_ray.training.checkpoint import delta_state, model_fingerprint, write_checkpoint
from cofitune_ray.training.data import encode_example, read_examples
from cofitune_ray.training.export import export_merged
from cofitune_ray.training.local import LocalExecutor
from cofitune_ray.training.model import load_model, load_tokenizer
from tiny import ALPHABET, CHAT_SPECIALS, SPECIALS, make_chat_tokenizer, make_model, make_world

pytestmark = pytest.mark.slow  # trains a tiny model for seconds


def test_an_exported_chat_model_answers_as_the_trained_one(tmp_path):
    data = copy.deepcopy(make_world(tmp_path, layers=4))
    model_dir = data["model"]["path"]
    make_model(model_dir, layers=4, vocab_size=len(SPECIALS) + len(CHAT_SPECIALS) + len(ALPHABET))
    make_chat_tokenizer(model_dir)
    data["data"].update(prompt_template="chat", max_seq_length=64)
    data["train"].update(lr=1e-2, max_steps=60, epochs=200, batch_size=8, weight_decay=0.0)
    config = config_from_dict(data)
    trained = LocalExecutor(config).trained_model(FULL_SFT_PART, 1e-2).eval()
    tokenizer = load_tokenizer(model_dir)
    example = read_examples(config.data.speciality_train)[0]
    question = f"{example.instruction}\n\n{example.input}"
    # the trained model has learned the answers' shape: letters, closed by the end-of-turn token
    expected = answer(trained, tokenizer, question, max_new_tokens=12)
    assert expected.isalpha() and len(expected) < 12
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    names = {n for n, p in trained.named_parameters() if p.requires_grad}
    probe = encode_example(tokenizer, "chat", example)[0]
    write_checkpoint(checkpoint, delta_state(trained), FULL_SFT_PART, {}, model_fingerprint(trained, names, probe))
    exported = export_merged(model_dir, checkpoint, tmp_path / "best_model")
    reloaded = load_model(str(exported)).eval()
    assert answer(reloaded, load_tokenizer(str(exported)), question, max_new_tokens=12) == expected
