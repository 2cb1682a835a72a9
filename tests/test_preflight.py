"""What preflight tells the user before any Ray work: the run in words, and training data that does not fit."""

import pytest

from cofitune_ray.config import load_config
from cofitune_ray.preflight import PreflightError, preflight
from conftest import PROJECT
from tiny import make_world, write_config, write_jsonl, write_lm_eval_task


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"), layers=4)


def test_the_preflight_line_reads_as_words(tmp_path, world):
    checked = preflight(load_config(write_config(tmp_path / "run.yaml", world)))
    reachable = len(checked.space.reachable_nodes())
    assert checked.lines() == [
        "preflight ok: llama with 4 layers; 32 training examples; Spec set reverse (8 examples); "
        f"Vers sets upper (8); {reachable} reachable nodes",
        f"training set {'tokenized' if checked.tokenized.built else 'already tokenized'}: 32 sequences in "
        f"{checked.tokenized.directory}; evaluation sets tokenized now: {checked.eval_sets_tokenized[0]} of 2",
    ]
    again = preflight(load_config(write_config(tmp_path / "run.yaml", world)))
    assert again.lines()[-1] == (f"training set already tokenized: 32 sequences in {checked.tokenized.directory}; "
                                 "evaluation sets tokenized now: 0 of 2")
    assert checked.truncated == 0


def test_training_sequences_that_do_not_fit_are_announced(tmp_path, world):
    rows = [{"instruction": "rev", "input": "ab", "output": "b" * 60},  # truncated in the response: kept
            {"instruction": "rev", "input": "ab", "output": "ba"},  # fits
            {"instruction": "x" * 60, "input": "", "output": "y"}]  # truncated inside the prompt: left out
    world = {**world, "data": {**world["data"], "speciality_train": str(write_jsonl(tmp_path / "t.jsonl", rows))}}
    checked = preflight(load_config(write_config(tmp_path / "run.yaml", world)))
    assert (checked.truncated, checked.left_out) == (2, 1)
    assert checked.lines()[1] == ("warning: 2 of 3 training sequences are longer than data.max_seq_length (32 tokens) "
                                  "and are truncated; 1 of them keep no response token and are left out")


def test_an_lm_eval_set_under_fsdp_is_refused_before_ray(tmp_path, world):
    upper = world["data"]["versatility"][0]["path"]
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    write_lm_eval_task(task_dir, "upper_gen", upper)
    harness = {"name": "upper_gen", "lm_eval": {"task": "upper_gen", "include_path": str(task_dir)}}
    world = {**world, "data": {**world["data"], "versatility": [world["data"]["versatility"][0], harness]},
             "scaling": {**world.get("scaling", {}), "strategy": "fsdp"}}
    with pytest.raises(PreflightError, match=r"data.versatility\[1\] \(upper_gen\): an lm-eval task .* use ddp"):
        preflight(load_config(write_config(tmp_path / "run.yaml", world)))


#: The shipped configs: the world each runs on, its speciality and how many versatility sets it scores.
SHIPPED = {"toy": ("calibrated", "drev", 18), "toy-hard": ("cliff", "cipher", 8), "smoke": ("cliff", "cipher", 3)}


@pytest.mark.parametrize("name", list(SHIPPED))
def test_every_shipped_config_passes_preflight(name):
    """The demo and the other configs point at committed files that fit their settings."""
    world, speciality, vers_sets = SHIPPED[name]
    config = load_config(PROJECT / "configs" / f"{name}.yaml")
    checked = preflight(config)
    assert f"/assets/toyworld/{world}/seed-0/" in config.model.path
    assert list(checked.eval_examples)[0] == speciality and len(checked.eval_examples) == 1 + vers_sets
    assert checked.truncated == 0 and checked.strategy == "ddp"
