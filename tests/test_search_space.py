"""Search-space YAML: the paper's tree, the flat grid, the rules and the validation errors."""

from pathlib import Path

import pytest

from cofitune_ray.core.node import ATTENTION_MODULES, FFN_MODULES, ModelPart
from cofitune_ray.core.space import (
    SearchSpaceError,
    SplitModules,
    SplitRange,
    ToggleSoftmask,
    TuneLearningRate,
    load_search_space,
    parse_search_space,
)

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
ROOT = ModelPart(layer_range=(0.0, 1.0))


def _layer_span(node: ModelPart, num_layers: int) -> tuple[int, int]:
    layers = node.layer_indices(num_layers)
    return layers[0], layers[-1]


@pytest.mark.parametrize(
    "num_layers, plus, quarters",
    [
        # 7B (32 layers): bottom-plus, middle-plus, top-plus; bottom1, bottom2, middle, top.
        (32, [(0, 15), (8, 23), (16, 31)], [(0, 7), (8, 15), (16, 23), (24, 31)]),
        # 13B (40 layers).
        (40, [(0, 19), (10, 29), (20, 39)], [(0, 9), (10, 19), (20, 29), (30, 39)]),
    ],
)
def test_paper_tree_gives_the_paper_layer_sets(num_layers, plus, quarters):
    space = load_search_space(SPACES / "cofitune.yaml")
    level, halves = space.first_candidates()
    assert level == 0
    assert [_layer_span(n, num_layers) for n in halves] == plus
    second = [space.expand(n, level) for n in halves]
    assert all(lvl == 1 for lvl, _ in second)
    inner = [_layer_span(c, num_layers) for _, children in second for c in children]
    assert inner == [quarters[0], quarters[1], quarters[1], quarters[2], quarters[2], quarters[3]]


def test_paper_tree_levels_below_the_ranges():
    space = load_search_space(SPACES / "cofitune.yaml")
    quarter = ModelPart(layer_range=(0.25, 0.5))
    level, by_block = space.expand(quarter, 1)
    assert level == 2 and [c.modules for c in by_block] == [ATTENTION_MODULES, FFN_MODULES]
    ffn = by_block[1]
    level, subsets = space.expand(ffn, level)
    # gate+up+down is the FFN parent itself: only up+down is new.
    assert level == 3 and [c.modules for c in subsets] == [("up_proj", "down_proj")]
    level, fine = space.expand(subsets[0], level)
    assert level == 4 and [(c.modules, c.softmask) for c in fine] == [(("up_proj", "down_proj"), True)]
    assert space.expand(fine[0], level) == (None, [])
    # Attention has no FFN subset: the FFN level does not apply and the fine level comes next.
    assert space.expand(by_block[0], 2)[0] == 4


def test_grid_is_the_trees_reachable_nodes_flat():
    tree = load_search_space(SPACES / "cofitune.yaml")
    grid = load_search_space(SPACES / "grid.yaml")
    assert grid.strategy == "grid" and grid.first_candidates()[0] is None
    grid_keys = [n.key() for n in grid.references + grid.grid_nodes]
    assert len(grid_keys) == len(set(grid_keys)) == 29
    assert set(grid_keys) == {n.key() for n in tree.reachable_nodes()}
    assert grid.expand(grid.grid_nodes[0], -1) == (None, [])


def test_rules_recombine():
    assert [c.layer_range for c in SplitRange(4).children(ROOT)] == [(0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1)]
    assert [c.layer_range for c in SplitRange(2, overlap=True).children(ROOT)] == [(0, 0.5), (0.25, 0.75), (0.5, 1)]
    assert len(SplitRange(4, overlap=True).children(ROOT)) == 7
    attention = ROOT.with_(modules=ATTENTION_MODULES)
    assert SplitModules((FFN_MODULES,)).children(attention) == []
    assert [c.softmask for c in ToggleSoftmask((False, True)).children(ROOT)] == [False, True]
    assert [c.lr for c in TuneLearningRate((1e-5, 4e-5)).children(ROOT)] == [1e-5, 4e-5]


def test_learning_rate_level_and_yaml_exponents():
    space = parse_search_space(
        {"root": {"layer_range": [0.25, 0.5], "modules": "ffn"}, "levels": [{"learning_rate": ["4e-5", 1.0e-4]}]}
    )
    assert [c.lr for c in space.first_candidates()[1]] == [4e-5, 1e-4]


@pytest.mark.parametrize(
    "data, message",
    [
        ({"strategy": "bayes", "levels": []}, "x.yaml: strategy: 'bayes' is not one of tree, grid"),
        ({"root": {"layer_range": [0, 1.5]}, "levels": [{"softmask": [True]}]}, "x.yaml: root: layer_range (0, 1.5]"),
        ({"levels": [{"split_modules": ["attention", ["foo_proj"]]}]}, "x.yaml: levels[0].split_modules[1]: unknown module(s) foo_proj"),
        ({"levels": [{"split_modules": ["ffn", ["gate_proj", "up_proj", "down_proj"]]}]}, "x.yaml: levels[0].split_modules[1]: duplicate"),
        ({"levels": [{"split_range": {"pieces": 1}}]}, "x.yaml: levels[0].split_range.pieces: expected an integer >= 2"),
        ({"levels": [{"softmask": [True], "split_range": {"pieces": 2}}]}, "x.yaml: levels[0]: a level needs exactly one rule"),
        ({"levels": [{"learning_rate": [0]}]}, "x.yaml: levels[0].learning_rate[0]: a learning rate must be a positive number"),
        ({"references": ["base", "base"], "levels": [{"softmask": [True]}]}, "x.yaml: references[1]: duplicate base"),
        ({"levels": [{"softmask": [True]}], "beam": 2}, "x.yaml: beam: unknown key(s) beam"),
        (
            {"strategy": "grid", "grid": [{"layer_ranges": [[0, 0.5]]}, {"layer_ranges": [[0, 0.5]], "modules": ["all"]}]},
            "x.yaml: grid[1]: duplicate node partial|range=(0,0.5]",
        ),
        ({"strategy": "grid", "grid": [{"layer_ranges": [[0.5, 0.5]]}]}, "x.yaml: grid[0].layer_ranges[0]: layer_range (0.5, 0.5]"),
    ],
)
def test_validation_errors_name_file_and_key(data, message):
    with pytest.raises(SearchSpaceError) as err:
        parse_search_space(data, source="x.yaml")
    assert str(err.value).startswith(message)


def test_load_names_the_file_on_bad_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("levels: [\n")
    with pytest.raises(SearchSpaceError, match="bad.yaml: cannot read search space"):
        load_search_space(bad)
