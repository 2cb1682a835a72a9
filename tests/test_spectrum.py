"""Spectrum as a reference node: the SNR of a matrix with known singular values, the per-type selection
on a tiny model with known rankings, the snr node in the search space, its cache and the report."""

import json

import pytest
import torch

from cofitune_ray.core.node import ALL_MODULES, ModelPart, NodeError
from cofitune_ray.core.space import SearchSpaceError, parse_search_space
from cofitune_ray.core.tree import SearchTree
from cofitune_ray.outputs.report import write_report
from cofitune_ray.training.model import Architecture, load_model, trainable_parameter_names
from cofitune_ray.training.spectrum import (
    load_cached_scores,
    matrix_snr,
    module_scores,
    save_scores,
    select,
    snr_part,
    with_selections,
)
from tiny import make_model


def with_singular_values(values: list[float], rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """U diag(values) V^T with random orthogonal U and V: a matrix whose singular values are `values`."""
    generator = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(rows, rows, dtype=torch.float64, generator=generator))
    v, _ = torch.linalg.qr(torch.randn(cols, cols, dtype=torch.float64, generator=generator))
    diagonal = torch.zeros(rows, cols, dtype=torch.float64)
    diagonal[range(len(values)), range(len(values))] = torch.tensor(values, dtype=torch.float64)
    return u @ diagonal @ v.T


def test_snr_of_a_square_matrix_by_hand():
    # s = 10, 5, 1 x 6. Quartiles (linear): Q1 = 1, Q3 = 1 + 0.25 * (5 - 1) = 2, sigma = 1 / 1.349;
    # square: edge = 2 sigma = 1.483. Signal 10 + 5, noise 6: SNR = 15 / 6 / 10 = 0.25.
    assert matrix_snr(with_singular_values([10, 5, 1, 1, 1, 1, 1, 1], 8, 8)) == pytest.approx(0.25, abs=1e-12)


def test_snr_of_a_wide_matrix_by_hand_and_its_transpose():
    # s = 8, 2, 1, 0.5 of a 4 x 16 matrix. Q1 = 0.875, Q3 = 3.5, sigma = 2.625 / 1.349 = 1.946;
    # edge = sigma * (1 + sqrt(4 / 16)) = 2.919. Signal 8, noise 3.5: SNR = 8 / 3.5 / 8 = 0.2857.
    weight = with_singular_values([8, 2, 1, 0.5], 4, 16)
    assert matrix_snr(weight) == pytest.approx(1 / 3.5, abs=1e-12)
    assert matrix_snr(weight.T.float()) == pytest.approx(1 / 3.5, abs=1e-6)  # any layout, any dtype


def test_snr_without_noise_uses_spectrum_s_convention():
    # Equal singular values: IQR 0, edge 0, everything is signal; the empty noise sum counts as 1.
    assert matrix_snr(with_singular_values([4, 4, 4, 4], 4, 4)) == pytest.approx(16 / 1 / 4, rel=1e-9)


def test_select_takes_the_floor_of_the_share_and_breaks_ties_by_layer():
    scores = {m: [0.1, 0.3, 0.3, 0.2] for m in ALL_MODULES}
    assert dict(select(scores, 50))["q_proj"] == (1, 2)
    assert dict(select(scores, 25))["q_proj"] == (1,)  # a tie between layers 1 and 2: the lower one
    assert dict(select(scores, 70))["q_proj"] == (1, 2)  # floor(4 * 0.7) = 2 layers
    assert dict(select(scores, 75))["q_proj"] == (1, 2, 3)
    assert select(scores, 10) == tuple((m, ()) for m in ALL_MODULES)  # floor(0.4): none


#: Per module, the factor each of the 4 layers' weight is scaled by. SNR(c W) = SNR(W) / c (singular
#: values, noise edge and both sums scale with c), so the smallest factors have the highest SNR.
SCALES = {"q_proj": [1, 2, 3, 4], "k_proj": [4, 3, 2, 1], "v_proj": [2, 1, 2, 1], "o_proj": [5, 1, 5, 1],
          "gate_proj": [3, 1, 1, 3], "up_proj": [1, 3, 1, 3], "down_proj": [2, 2, 2, 2]}
TOP_HALF = {"q_proj": (0, 1), "k_proj": (2, 3), "v_proj": (1, 3), "o_proj": (1, 3), "gate_proj": (1, 2),
            "up_proj": (0, 2), "down_proj": (0, 1)}
TOP_QUARTER = {"q_proj": (0,), "k_proj": (3,), "v_proj": (1,), "o_proj": (1,), "gate_proj": (1,), "up_proj": (0,),
               "down_proj": (0,)}


@pytest.fixture(scope="module")
def ranked_model(tmp_path_factory):
    """A tiny LLaMA whose projection weights are one matrix per module type, scaled per layer by SCALES."""
    directory = tmp_path_factory.mktemp("ranked")
    model = make_model(directory, "llama", layers=4)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module, factors in SCALES.items():
            block = "self_attn" if module.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            shape = getattr(model.model.layers[0], block).__getattr__(module).weight.shape
            noise = torch.randn(shape, generator=generator)
            spike = 3 * torch.outer(torch.randn(shape[0], generator=generator),
                                    torch.randn(shape[1], generator=generator))
            base = noise + spike / shape[0] ** 0.5  # random noise plus one strong direction: signal and noise
            for layer, factor in enumerate(factors):
                getattr(getattr(model.model.layers[layer], block), module).weight.copy_(factor * base)
    model.save_pretrained(directory)
    return directory


def test_scores_follow_the_known_ranking(ranked_model):
    scores = module_scores(str(ranked_model))
    for module, factors in SCALES.items():
        first = scores[module][0] * factors[0]
        # float32 weights
        assert [s * f for s, f in zip(scores[module], factors)] == pytest.approx([first] * 4, rel=1e-6), module
        assert 0 < first < float("inf")


@pytest.mark.parametrize("top_percent,expected", [(50, TOP_HALF), (25, TOP_QUARTER)])
def test_snr_part_trains_the_top_share_of_each_module_type(ranked_model, top_percent, expected):
    part = snr_part(str(ranked_model), top_percent)
    assert part == snr_part(str(ranked_model), top_percent)  # deterministic
    assert dict(part.selection) == expected
    model = load_model(str(ranked_model))
    names = trainable_parameter_names(Architecture.from_config(model.config), part,
                                      [n for n, _ in model.named_parameters()])
    block = {m: "self_attn" if m in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp" for m in ALL_MODULES}
    assert sorted(names) == sorted(f"model.layers.{i}.{block[m]}.{m}.weight" for m, layers in expected.items()
                                   for i in layers)


def test_snr_node_identity_and_round_trip():
    part = ModelPart(kind="snr", top_percent=25, selection=(("up_proj", (3, 1)), ("q_proj", (0,)), ("k_proj", ())))
    assert part.selection == (("q_proj", (0,)), ("up_proj", (1, 3)))  # canonical: module order, sorted, no empties
    assert part.key() == "snr|top=25%|mask=off" and part.describe() == "Spectrum top 25%"
    assert ModelPart.from_dict(json.loads(json.dumps(part.to_dict()))) == part
    assert part.trained_modules(4) == [(0, "q_proj"), (1, "up_proj"), (3, "up_proj")]
    with pytest.raises(NodeError, match="chosen from the base weights"):
        ModelPart(kind="snr", top_percent=25).layer_indices(4)
    with pytest.raises(NodeError, match="outside the model"):
        part.layer_indices(2)
    with pytest.raises(NodeError, match=r"top_percent in \(0, 100\]"):
        ModelPart(kind="snr", top_percent=0)
    with pytest.raises(NodeError, match="belong to snr nodes"):
        ModelPart(top_percent=25)


def test_snr_reference_in_any_search_space():
    space = parse_search_space({"strategy": "grid", "references": ["base", {"snr": 25}, {"snr": 50}],
                                "grid": [{"layer_ranges": [[0, 0.5]]}]})
    assert [p.key() for p in space.references] == ["base", "snr|top=25%|mask=off", "snr|top=50%|mask=off"]
    scores = {m: [0.1, 0.4, 0.3, 0.2] for m in ALL_MODULES}
    resolved = with_selections(space, scores)
    assert [dict(p.selection)["q_proj"] for p in resolved.references[1:]] == [(1,), (1, 2)]
    assert SearchTree(resolved).node("n1").part.selection == resolved.references[1].selection
    tree_space = parse_search_space({"references": [{"snr": 50}], "levels": [{"softmask": [False, True]}]})
    flat = with_selections(tree_space, scores).as_grid()  # grid and Optuna searches keep the chosen selection
    assert flat.strategy == "grid" and dict(flat.references[0].selection)["q_proj"] == (1, 2)


@pytest.mark.parametrize("reference,message", [
    ({"snr": 0}, r"references\[0\].snr: expected the top percent"),
    ({"snr": "half"}, r"references\[0\].snr: expected the top percent"),
    ({"spectrum": 25}, r"references\[0\]: unknown key\(s\) spectrum"),
    ("lora", r"references\[0\]: 'lora' is not one of base, full or \{snr: <top percent>\}"),
])
def test_bad_snr_reference_names_the_key(reference, message):
    with pytest.raises(SearchSpaceError, match=message):
        parse_search_space({"references": [reference], "levels": [{"softmask": [True]}]}, source="s.yaml")


def test_scores_are_cached_for_the_same_weights(ranked_model, tmp_path):
    scores = module_scores(str(ranked_model))
    assert load_cached_scores(tmp_path, str(ranked_model)) is None
    save_scores(tmp_path, str(ranked_model), scores)
    assert load_cached_scores(tmp_path, str(ranked_model)) == scores
    with open(next(ranked_model.glob("*.safetensors")), "ab") as handle:
        handle.write(b" ")  # other weights: the cache no longer applies
    assert load_cached_scores(tmp_path, str(ranked_model)) is None


def test_report_shows_the_spectrum_selection(tmp_path):
    space = parse_search_space({"references": ["base", {"snr": 50}], "levels": [{"softmask": [True]}]})
    tree = SearchTree(with_selections(space, {m: [0.1, 0.4, 0.3, 0.2] for m in ALL_MODULES}))
    report = write_report(tree, tmp_path)["markdown"].read_text()
    assert "## Spectrum reference" in report
    assert "| n1 Spectrum top 50% | down_proj | 1, 2 |" in report
