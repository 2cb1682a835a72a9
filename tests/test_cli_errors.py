"""Bad input stops the CLI with an error naming the file, line or key, before any Ray work.

Every case checks the whole contract: exit code 2, the message names what to fix, no traceback,
no Ray connection, and nothing created in `storage_path`.
"""

import copy
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import cofitune_ray.cluster
from cofitune_ray.search import main
from tiny import make_world, write_config, write_lm_eval_task


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"), layers=4)


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    """Fail the test if the CLI gets as far as connecting to Ray (independent of other tests' clusters)."""

    def connect(*args, **kwargs):
        raise AssertionError("the CLI connected to Ray before reporting the bad input")

    monkeypatch.setattr(cofitune_ray.cluster, "connect", connect)


def _run(tmp_path, world, capsys, mutate=None, overrides=()):
    data = copy.deepcopy(world)
    if mutate:
        mutate(data)
    config = write_config(tmp_path / "run.yaml", data)
    storage = Path(data["storage_path"])
    before = sorted(storage.rglob("*")) if storage.exists() else None
    code = main(["--config", str(config), *overrides])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert (sorted(storage.rglob("*")) if storage.exists() else None) == before, "storage_path was changed"
    return code, err


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


def test_a_parquet_file_that_is_not_one(tmp_path, world, capsys):
    fake = tmp_path / "train.parquet"
    fake.write_text(Path(world["data"]["speciality_train"]).read_text())
    code, err = _run(tmp_path, world, capsys, lambda d: d["data"].update(speciality_train=str(fake)))
    assert code == 2 and f"{fake}: not a Parquet file" in err


def test_a_chat_record_without_an_assistant_turn(tmp_path, world, capsys):
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
                    + "\n" + json.dumps({"messages": [{"from": "human", "value": "a"}]}) + "\n")
    code, err = _run(tmp_path, world, capsys, lambda d: d["data"]["speciality_eval"].update(path=str(chat)))
    assert code == 2 and f"{chat}:2: field 'messages' has no assistant turn" in err


def test_a_saved_dataset_without_a_mapped_column(tmp_path, world, capsys):
    import datasets

    saved = tmp_path / "saved"
    datasets.Dataset.from_list([{"question": "a", "reply": "b"}]).save_to_disk(str(saved))
    code, err = _run(tmp_path, world, capsys, lambda d: d["data"].update(speciality_train=str(saved),
                                                                        columns={"instruction": "question"}))
    assert code == 2 and f"{saved}: no column 'output' nor 'messages' (its columns: question, reply)" in err


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


def test_prompt_template_without_input(tmp_path, world, capsys):
    code, err = _run(tmp_path, world, capsys, lambda d: d["data"].update(prompt_template="Q: {instruction}\nA: "))
    assert code == 2 and "run.yaml: data.prompt_template:" in err and "'{input}'" in err


def test_override_value_that_is_not_yaml(tmp_path, world, capsys):
    code, err = _run(tmp_path, world, capsys, overrides=["train.betas=[0.9,"])
    assert code == 2 and "command line: train.betas: the value '[0.9,' is not valid YAML" in err


def test_model_directory_without_weights(tmp_path, world, capsys):
    weightless = tmp_path / "weightless"
    shutil.copytree(world["model"]["path"], weightless, ignore=shutil.ignore_patterns("*.safetensors"))
    assert (weightless / "config.json").is_file() and (weightless / "tokenizer.json").is_file()
    code, err = _run(tmp_path, world, capsys, lambda d: d["model"].update(path=str(weightless)))
    assert code == 2 and "model.path" in err and str(weightless) in err and "no weights" in err


def test_sharded_model_with_a_missing_shard(tmp_path, world, capsys):
    sharded = tmp_path / "sharded"
    shutil.copytree(world["model"]["path"], sharded)
    (sharded / "model.safetensors").rename(sharded / "model-00001-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": {"lm_head.weight": "model-00001-of-00002.safetensors",
                                            "model.norm.weight": "model-00002-of-00002.safetensors"}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    code, err = _run(tmp_path, world, capsys, lambda d: d["model"].update(path=str(sharded)))
    assert code == 2 and "model.safetensors.index.json" in err and "model-00002-of-00002.safetensors" in err


def test_lm_eval_set_without_lm_eval_installed(tmp_path, world, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # what `import lm_eval` sees where it is not installed
    entry = {"name": "arc", "lm_eval": {"task": "arc_easy", "limit": 100}}
    code, err = _run(tmp_path, world, capsys, lambda d: d["data"]["versatility"].append(entry))
    assert code == 2 and "data.versatility[1].lm_eval: needs lm-evaluation-harness" in err
    assert "pip install 'cofitune-ray[lmeval]'" in err


def test_versatility_set_with_both_a_file_and_an_lm_eval_task(tmp_path, world, capsys):
    code, err = _run(tmp_path, world, capsys,
                     lambda d: d["data"]["versatility"][0].update(lm_eval={"task": "arc_easy"}))
    assert code == 2
    assert "data.versatility[0]: give either path (a data file or directory) or lm_eval (a task), not both" in err


@pytest.mark.slow
def test_unknown_lm_eval_task_in_a_local_folder(tmp_path, world, capsys):
    write_lm_eval_task(tmp_path / "tasks", "toy_upper", Path(world["data"]["versatility"][0]["path"]))
    entry = {"name": "upper-lm", "lm_eval": {"task": "toy_uper", "include_path": str(tmp_path / "tasks")}}
    code, err = _run(tmp_path, world, capsys, lambda d: d["data"]["versatility"].append(entry))
    assert code == 2 and "data.versatility[1].lm_eval.task: 'toy_uper' is not a task lm-evaluation-harness knows" in err


def test_spectrum_reference_needs_safetensors_weights(tmp_path, world, capsys):
    binary = tmp_path / "binary"
    shutil.copytree(world["model"]["path"], binary, ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save(load_file(str(Path(world["model"]["path"]) / "model.safetensors")), binary / "pytorch_model.bin")
    space = tmp_path / "space.yaml"
    space.write_text("strategy: grid\nreferences: [base, {snr: 50}]\ngrid:\n  - {layer_ranges: [[0, 0.5]]}\n")
    code, err = _run(tmp_path, world, capsys, lambda d: d["model"].update(path=str(binary)),
                     overrides=[f"search.space={space}"])
    assert code == 2 and "model.path: an snr reference reads the base weights from safetensors files" in err


def test_soft_masking_without_jsonl_general_data(tmp_path, world, capsys):
    write_lm_eval_task(tmp_path / "tasks", "toy_upper", Path(world["data"]["versatility"][0]["path"]))
    only_lm_eval = [{"name": "upper-lm", "lm_eval": {"task": "toy_upper", "include_path": str(tmp_path / "tasks")}}]
    # paper space soft-masks
    code, err = _run(tmp_path, world, capsys, lambda d: d["data"].update(versatility=only_lm_eval))
    assert code == 2 and "importance.data: soft-masking nodes need general data" in err


def test_spectrum_reference_that_selects_no_layer(tmp_path, world, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("strategy: grid\nreferences: [base, {snr: 10}]\ngrid:\n  - {layer_ranges: [[0, 0.5]]}\n")
    code, err = _run(tmp_path, world, capsys, overrides=[f"search.space={space}"])
    assert code == 2 and f"{space}: references: {{snr: 10}} selects no layer of a 4-layer model" in err
