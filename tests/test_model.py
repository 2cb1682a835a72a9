"""Architecture adapter: exact trained sets for Llama, Mistral and Qwen2; frozen parameters stay put."""

import pytest
from transformers import GPT2Config

from cofitune_ray.core.node import ModelPart, NodeError
from cofitune_ray.training.model import (
    Architecture,
    ModelError,
    freeze_all_but,
    load_part,
    read_architecture,
    trainable_parameter_names,
)
from tiny import make_model

FAMILIES = ["llama", "mistral", "qwen2"]


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    model = make_model(directory, request.param, layers=8)
    return request.param, directory, model


def _names(model):
    return [n for n, _ in model.named_parameters()]


def test_architecture_read_from_config_only(tiny):
    family, directory, _ = tiny
    arch = read_architecture(str(directory))
    assert (arch.model_type, arch.num_layers, arch.num_heads, arch.num_kv_heads, arch.head_dim) == (family, 8, 4, 2, 8)
    assert (arch.hidden_size, arch.intermediate_size) == (32, 48)


def test_ffn_up_down_in_second_quarter(tiny):
    family, _, model = tiny
    arch = Architecture.from_config(model.config)
    node = ModelPart(layer_range=(0.25, 0.5), modules=("up_proj", "down_proj"))
    assert trainable_parameter_names(arch, node, _names(model)) == [
        "model.layers.2.mlp.up_proj.weight", "model.layers.2.mlp.down_proj.weight",
        "model.layers.3.mlp.up_proj.weight", "model.layers.3.mlp.down_proj.weight",
    ]


def test_attention_of_top_half_includes_qwen2_biases(tiny):
    family, _, model = tiny
    arch = Architecture.from_config(model.config)
    selected = trainable_parameter_names(arch, ModelPart(layer_range=(0.5, 1.0),
                                                         modules=("q_proj", "k_proj", "v_proj", "o_proj")),
                                         _names(model))
    per_layer = 7 if family == "qwen2" else 4  # q, k, v biases
    assert len(selected) == 4 * per_layer
    assert {int(n.split(".")[2]) for n in selected} == {4, 5, 6, 7}
    assert all(".self_attn." in n for n in selected)


def test_explicit_layer_indices(tiny):
    _, _, model = tiny
    arch = Architecture.from_config(model.config)
    selected = trainable_parameter_names(arch, ModelPart(layers=(0, 7), modules=("gate_proj",)), _names(model))
    assert selected == ["model.layers.0.mlp.gate_proj.weight", "model.layers.7.mlp.gate_proj.weight"]


def test_full_and_base_nodes(tiny):
    _, _, model = tiny
    arch = Architecture.from_config(model.config)
    assert trainable_parameter_names(arch, ModelPart(kind="full"), _names(model)) == _names(model)


def test_freeze_leaves_exactly_the_selection_trainable(tiny):
    _, _, model = tiny
    names = ["model.layers.2.mlp.up_proj.weight", "model.layers.3.mlp.down_proj.weight"]
    count = freeze_all_but(model, names)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == names
    assert count == 48 * 32 * 2


def test_load_part_loads_with_only_the_parts_parameters_trainable(tiny):
    _, directory, _ = tiny
    loaded = load_part(str(directory), ModelPart(layer_range=(0.25, 0.5), modules=("up_proj", "down_proj")))
    trainable = [n for n, p in loaded.model.named_parameters() if p.requires_grad]
    assert trainable == loaded.trained_names == [f"model.layers.{i}.mlp.{m}.weight" for i in (2, 3)
                                                 for m in ("up_proj", "down_proj")]
    assert loaded.trained_params == sum(p.numel() for n, p in loaded.model.named_parameters() if p.requires_grad)
    assert loaded.architecture.num_layers == 8
    base = load_part(str(directory), ModelPart(kind="base"))
    assert base.trained_names == [] and base.trained_params == 0
    assert not any(p.requires_grad for p in base.model.parameters())


def test_layer_range_outside_the_model_is_an_error(tiny):
    _, _, model = tiny
    arch = Architecture.from_config(model.config)
    with pytest.raises(NodeError, match=r"layers \[8, 9\] are outside the model, which has 8 layers"):
        trainable_parameter_names(arch, ModelPart(layers=(8, 9)), _names(model))
    with pytest.raises(NodeError, match="selects no layer of a 8-layer model"):
        ModelPart(layer_range=(0.5, 0.55)).layer_indices(8)


def test_unknown_module_lists_valid_names():
    with pytest.raises(NodeError,
                       match="unknown module.*fc1.*valid modules: "
                             "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"):
        ModelPart(modules=("fc1",))


def test_unsupported_family_lists_supported_ones():
    with pytest.raises(ModelError, match="'gpt2' is not supported; supported: llama, mistral, qwen2"):
        Architecture.from_config(GPT2Config())


def test_missing_model_path_is_an_error(tmp_path):
    with pytest.raises(ModelError, match="is not a directory"):
        read_architecture(str(tmp_path / "no-such-model"))


def test_paper_layer_sets_on_32_layers():
    bands = {(0, .25): range(0, 8), (.25, .5): range(8, 16), (.5, .75): range(16, 24), (.75, 1): range(24, 32),
             (0, .5): range(0, 16), (.25, .75): range(8, 24), (.5, 1): range(16, 32)}
    for band, layers in bands.items():
        assert ModelPart(layer_range=band).layer_indices(32) == list(layers)
