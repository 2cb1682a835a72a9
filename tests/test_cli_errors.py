"""Bad input stops the CLI with an error naming the file, line or key, before any Ray work."""

import copy
import json

import pytest
import cofitune_ray.search

from cofitune_ray.search import main
from tiny import make_world, write_config


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"), layers=4)


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    """Fail the test if the CLI gets as far as connecting to Ray (independent of other tests' clusters)."""

    def connect(*args, **kwargs):
        raise AssertionError("the CLI connected to Ray before reporting the bad input")

    monkeypatch.setattr(cofitune_ray.search, "connect", connect)


def _run(tmp_path, world, capsys, mutate=None, overrides=()):
    data = copy.deepcopy(world)
    if mutate:
        mutate(data)
    config = write_config(tmp_path / "run.yaml", data)
    code = main(["--config", str(config), *overrides])
    return code, capsys.readouterr().err


def test_malformed_jsonl_line(tmp_path, world, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "input": "", "output": "b"}\n{"instruction": "a", "output": \n')
    code, err = _run(tmp_path, world, capsys, lambda d: d["data"].update(speciality_train=str(bad)))
    assert code == 2 and f"{bad}:2: not valid JSON" in err


def test_missing_field(tmp_path, world, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"instruction": "a", "input": "x"}) + "\n")
    code, err = _run(tmp_path, world, capsys, lambda d: d["data"]["versatility"][0].update(path=str(bad)))
    assert code == 2 and f"{bad}:1: missing field 'output'" in err


def test_empty_dataset(tmp_path, world, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, err = _run(tmp_path, world, capsys, lambda d: d["data"]["speciality_eval"].update(path=str(empty)))
    assert code == 2 and f"{empty}: the file holds no examples" in err


def test_layer_range_outside_the_model(tmp_path, world, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("strategy: grid\nreferences: [base]\ngrid:\n  - {layers: [[2, 9]], modules: [[up_proj]]}\n")
    code, err = _run(tmp_path, world, capsys, overrides=[f"search.space={space}"])
    assert code == 2 and "layers [9] are outside the model, which has 4 layers" in err


def test_unknown_module_lists_valid_names(tmp_path, world, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("strategy: grid\nreferences: [base]\ngrid:\n  - {layer_ranges: [[0, 0.5]], modules: [[fc1]]}\n")
    code, err = _run(tmp_path, world, capsys, overrides=[f"search.space={space}"])
    assert code == 2 and "fc1" in err and "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj" in err


def test_missing_model_path(tmp_path, world, capsys):
    code, err = _run(tmp_path, world, capsys, lambda d: d["model"].update(path=str(tmp_path / "nowhere")))
    assert code == 2 and "model.path" in err and "nowhere" in err and "is not a directory" in err


def test_unknown_config_key(tmp_path, world, capsys):
    code, err = _run(tmp_path, world, capsys, lambda d: d["train"].update(learning_rate=1.0))
    assert code == 2 and "run.yaml:" in err and "unknown key 'train.learning_rate'" in err
