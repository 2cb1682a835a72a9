"""The winner's recipes select exactly the parameters the node trained, under each tool's own rules.

The tools' selection rules (tests/tool_rules.py) are applied to real tiny models of each family.
"""

import pytest
import yaml

from cofitune_ray.config import config_from_dict
from cofitune_ray.core.node import ATTENTION_MODULES, FFN_MODULES, FULL_SFT_PART, ModelPart
from cofitune_ray.outputs.recipes import AXOLOTL_FILE, LLAMAFACTORY_FILE, README_FILE, recipe_files
from cofitune_ray.training.model import (
    Architecture,
    freeze_all_but,
    load_model,
    parameter_names,
    trainable_parameter_names,
)
from tiny import make_model, make_world
from tool_rules import axolotl_selects, llamafactory_selects

LAYERS = 4
#: (node, whether LLaMA-Factory can express it) on a 4-layer model.
NODES = [
    (ModelPart(layer_range=(0.25, 0.75)), False),  # layers 1, 2: a middle range
    (ModelPart(layer_range=(0.0, 0.5), modules=FFN_MODULES), True),  # the first 2 layers' mlp
    (ModelPart(layer_range=(0.5, 1.0), modules=("up_proj", "down_proj")), False),  # part of the mlp block
    (ModelPart(layers=(0, 2), modules=ATTENTION_MODULES), False),  # explicit, not contiguous
    (ModelPart(layers=(2, 3)), True),  # the last 2 layers, every projection
    (ModelPart(layer_range=(0.75, 1.0), modules=ATTENTION_MODULES, softmask=True, lr=3e-4), True),
    (FULL_SFT_PART, True),
]


@pytest.fixture(scope="module", params=["llama", "mistral", "qwen2"])
def model_dir(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    make_model(directory, request.param, layers=LAYERS)
    return directory


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    world = make_world(tmp_path_factory.mktemp("world"), layers=LAYERS)
    world["train"].update(schedule="linear", warmup_ratio=0.1, grad_clip=None)
    return config_from_dict(world)


@pytest.mark.parametrize("part,expressible", NODES, ids=lambda x: x.key() if isinstance(x, ModelPart) else str(x))
def test_recipes_select_exactly_the_trained_parameters(model_dir, config, part, expressible):
    model = load_model(str(model_dir))
    names = [n for n, _ in model.named_parameters()]
    freeze_all_but(model, trainable_parameter_names(Architecture.from_config(model.config), part, names))
    trained = [n for n, p in model.named_parameters() if p.requires_grad]  # what the worker trains
    assert parameter_names(str(model_dir)) == names

    lr = part.lr or 2e-5
    files = recipe_files(part, sorted(trained), names, lr, config)

    axolotl = yaml.safe_load(files[AXOLOTL_FILE])
    assert axolotl_selects(axolotl["unfrozen_parameters"], names) == set(trained)
    assert (axolotl["learning_rate"], axolotl["lr_scheduler"], axolotl["warmup_ratio"]) == (lr, "linear", 0.1)
    assert axolotl["max_grad_norm"] == 0.0 and axolotl["micro_batch_size"] == config.train.batch_size
    assert (LLAMAFACTORY_FILE in files) == expressible
    if expressible:
        factory = yaml.safe_load(files[LLAMAFACTORY_FILE])
        assert llamafactory_selects(factory, names, model.config.num_hidden_layers) == set(trained)
        assert (factory["learning_rate"], factory["lr_scheduler_type"]) == (lr, "linear")
    else:
        assert f"no `{LLAMAFACTORY_FILE}`: LLaMA-Factory cannot select exactly this node" in files[README_FILE]
    assert ("soft-mask" in files[AXOLOTL_FILE]) == part.softmask


def test_readme_says_why_llamafactory_cannot(model_dir, config):
    names = parameter_names(str(model_dir))
    arch = Architecture.from_config(load_model(str(model_dir)).config)
    middle = trainable_parameter_names(arch, ModelPart(layer_range=(0.25, 0.75)), names)
    subset = trainable_parameter_names(arch, ModelPart(layers=(3,), modules=("up_proj",)), names)
    assert "it trains layer(s) 1, 2 of a 4-layer model" in recipe_files(ModelPart(layer_range=(0.25, 0.75)), middle,
                                                                         names, 1e-4, config)[README_FILE]
    why = recipe_files(ModelPart(layers=(3,), modules=("up_proj",)), subset, names, 1e-4, config)[README_FILE]
    assert "whole blocks (mlp)" in why and "model.layers.3.mlp.gate_proj.weight" in why


def test_axolotl_patterns_are_compact(model_dir, config):
    names = parameter_names(str(model_dir))
    arch = Architecture.from_config(load_model(str(model_dir)).config)
    part = ModelPart(layer_range=(0.25, 0.75), modules=("up_proj", "down_proj"))
    files = recipe_files(part, trainable_parameter_names(arch, part, names), names, 1e-4, config)
    assert yaml.safe_load(files[AXOLOTL_FILE])["unfrozen_parameters"] == [
        "^model.layers.(1|2).mlp.(up_proj|down_proj).weight$"]


def test_unknown_trained_name_is_refused(config):
    with pytest.raises(ValueError, match="does not have"):
        recipe_files(ModelPart(), ["model.layers.9.mlp.up_proj.weight"], ["lm_head.weight"], 1e-4, config)
