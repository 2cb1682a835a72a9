"""The toy world: data deterministic by seed with disjoint splits, the tokenizer, a tiny pretraining run."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from cofitune_ray.training.prompt import format_prompt
from cofitune_ray.toyworld.data import SPLIT_SIZES, read_rows, write_toy_data
from cofitune_ray.toyworld.prepare import MARKER, ensure_toy_world
from cofitune_ray.toyworld.pretrain import INFO_FILE, PretrainSettings, lr_factor, mixture_weights, pretrain
from cofitune_ray.toyworld.tasks import GENERAL_TASKS, SPECIAL_TASKS, TASKS, cipher_key
from cofitune_ray.toyworld.tokenizer import ALPHABET, save_tokenizer

TINY = PretrainSettings(layers=2, hidden=32, intermediate=64, heads=2, steps=4, batch_size=8, warmup_steps=2)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("toydata")
    write_toy_data(directory, seed=0)
    return directory


def _all_files(directory):
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*.jsonl"))}


def test_task_catalogue():
    assert len(GENERAL_TASKS) >= 8 and set(SPECIAL_TASKS) == {"cipher", "scramble"}
    assert "cipher" not in GENERAL_TASKS


def test_data_is_deterministic_by_seed(data_dir, tmp_path):
    write_toy_data(tmp_path / "same", seed=0)
    write_toy_data(tmp_path / "other", seed=1)
    reference = _all_files(data_dir)
    assert len(reference) == 3 * len(GENERAL_TASKS) + 2 * len(SPECIAL_TASKS)
    assert _all_files(tmp_path / "same") == reference
    other = _all_files(tmp_path / "other")
    assert other.keys() == reference.keys()
    assert all(other[name] != reference[name] for name in reference)


def test_splits_are_disjoint_and_sized(data_dir):
    for name, task in TASKS.items():
        inputs = {}
        for split, size in SPLIT_SIZES[task.kind].items():
            rows = read_rows(data_dir / name / f"{split}.jsonl")
            assert len(rows) == size
            assert all(row["instruction"] == name for row in rows)
            inputs[split] = {row["input"] for row in rows}
            assert len(inputs[split]) == size, f"{name}/{split} repeats an input"
        splits = list(inputs)
        for i, a in enumerate(splits):
            for b in splits[i + 1 :]:
                assert not inputs[a] & inputs[b], f"{name}: {a} and {b} share inputs"


def test_outputs_follow_the_task_rules(data_dir):
    key = cipher_key()
    rules = {
        "copy": lambda s: s,
        "reverse": lambda s: s[::-1],
        "rotate": lambda s: s[1:] + s[0],
        "upper": str.upper,
        "successor": lambda s: "".join("a" if c == "z" else chr(ord(c) + 1) for c in s),
        "count": lambda s: str(s.count("a")),
        "max": max,
        "min": min,
        "cipher": lambda s: "".join(key[c] for c in s),
        "scramble": lambda s: s[2] + s[0] + s[3] + s[1],
    }
    assert rules.keys() == TASKS.keys()
    for name, rule in rules.items():
        for row in read_rows(data_dir / name / "eval.jsonl"):
            assert row["output"] == rule(row["input"]), (name, row)
    assert rules["successor"]("xyzab") == "yzabc"


def test_cipher_is_a_fixed_derangement_unlike_successor():
    key = cipher_key()
    assert key == cipher_key()
    assert sorted(key.values()) == sorted(key)
    assert all(c != p and c != chr((ord(p) - 97 + 1) % 26 + 97) for p, c in key.items())


def test_tokenizer_loads_and_round_trips_every_symbol(tmp_path):
    save_tokenizer(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert len(tokenizer) == len(ALPHABET) + 4
    specials = {tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id}
    assert len(specials) == 4 and tokenizer.pad_token_id == 0
    for symbol in ALPHABET:
        ids = tokenizer(symbol, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and ids[0] not in specials, repr(symbol)
        assert tokenizer.decode(ids) == symbol
    text = ALPHABET + "  two  spaces\n\nand newlines"
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text
    prompt = format_prompt("compact", "reverse", "abcde")
    ids = tokenizer(prompt)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and len(ids) == len(prompt) + 1
    assert tokenizer("é", add_special_tokens=False)["input_ids"] == [tokenizer.unk_token_id]


def test_lr_schedule_warms_up_then_decays():
    settings = PretrainSettings(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, settings) == pytest.approx(0.1)
    assert lr_factor(9, settings) == pytest.approx(1.0)
    assert lr_factor(10, settings) == pytest.approx(1.0)
    assert lr_factor(55, settings) == pytest.approx(0.55)
    assert lr_factor(100, settings) == pytest.approx(0.1)


def test_mixture_leans_towards_unlearned_tasks():
    weights = mixture_weights({"copy": 1.0, "reverse": 0.0, "count": 0.5}, floor=0.2)
    assert weights.tolist() == pytest.approx([0.2, 1.2, 0.7])
    assert mixture_weights({"copy": 1.0, "max": 1.0}, floor=0.2).tolist() == pytest.approx([0.2, 0.2])


def test_tiny_pretraining_saves_a_loadable_model(data_dir, tmp_path):
    info = pretrain(tmp_path, seed=0, data_dir=data_dir, settings=TINY)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 2
    assert model.config.vocab_size == len(tokenizer)
    assert (tmp_path / "model.safetensors").is_file()
    saved = json.loads((tmp_path / INFO_FILE).read_text())
    assert saved["eval_accuracy"].keys() == set(GENERAL_TASKS) == info["eval_accuracy"].keys()
    assert all(0.0 <= acc <= 1.0 for acc in saved["eval_accuracy"].values())
    assert saved["data_dir"] == str(data_dir.resolve()) and saved["parameters"] == model.num_parameters()


def test_ensure_toy_world_builds_once_then_reuses(tmp_path, capsys):
    world = ensure_toy_world(tmp_path, seed=3, pretrain_settings=TINY)
    assert (world.root / MARKER).is_file() and world.root == tmp_path / "seed-3"
    assert AutoTokenizer.from_pretrained(world.tokenizer_dir).eos_token == "<eos>"
    assert all(path.is_file() for splits in world.files.values() for path in splits.values())
    assert world.files["cipher"].keys() == {"train", "eval"}
    assert world.files["max"].keys() == {"train", "eval", "importance"}
    weights = world.model_dir / "model.safetensors"
    built_at = weights.stat().st_mtime_ns
    capsys.readouterr()

    again = ensure_toy_world(tmp_path, seed=3, pretrain_settings=TINY)
    assert "reusing" in capsys.readouterr().out
    assert again == world and weights.stat().st_mtime_ns == built_at

    ensure_toy_world(tmp_path, seed=3, pretrain_settings=replace(TINY, threads=2, log_every=1))
    assert "reusing" in capsys.readouterr().out  # run-time settings do not change the world

    (world.root / MARKER).unlink()  # an interrupted build is rebuilt
    rebuilt = ensure_toy_world(tmp_path, seed=3, pretrain_settings=TINY)
    assert "rebuilding" in capsys.readouterr().out
    assert (rebuilt.root / MARKER).is_file()

    longer = ensure_toy_world(tmp_path, seed=3, pretrain_settings=replace(TINY, steps=5))
    assert "rebuilding" in capsys.readouterr().out  # other model settings make another world
    assert longer.settings["pretrain"]["steps"] == 5
