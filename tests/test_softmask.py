"""Soft-mask math: exact row factors, grad vs update modes, once per step, normalisation."""

import pytest
import torch

from cofitune_ray.training.model import Architecture
from cofitune_ray.training.softmask.mask import Importance, SoftMask, normalise_per_layer, row_factors

ARCH = Architecture("llama", num_layers=2, num_heads=4, num_kv_heads=2, head_dim=2, hidden_size=8, intermediate_size=6)


def _importance(value=0.0):
    return Importance(head=torch.full((2, 4), value), intermediate=torch.full((2, 6), value),
                      output=torch.full((2, 8), value))


def test_importance_one_zeroes_a_row_and_zero_leaves_it():
    imp = _importance()
    imp.intermediate[1] = torch.tensor([1.0, 0.0, 0.5, 0.25, 0.0, 1.0])
    factors = row_factors(ARCH, imp, "model.layers.1.mlp.up_proj.weight")
    assert factors.tolist() == [0.0, 1.0, 0.5, 0.75, 1.0, 0.0]
    assert row_factors(ARCH, imp, "model.layers.1.mlp.gate_proj.weight").tolist() == factors.tolist()
    assert row_factors(ARCH, imp, "model.layers.0.mlp.up_proj.weight").tolist() == [1.0] * 6


def test_down_proj_rows_follow_output_units():
    imp = _importance()
    imp.output[0, 3] = 0.9
    factors = row_factors(ARCH, imp, "model.layers.0.mlp.down_proj.weight")
    assert factors.shape == (8,) and factors[3].item() == pytest.approx(0.1)
    assert factors.sum().item() == pytest.approx(7.1)


def test_head_rows_and_grouped_key_value_heads():
    imp = _importance()
    imp.head[0] = torch.tensor([0.2, 0.6, 0.0, 1.0])
    q = row_factors(ARCH, imp, "model.layers.0.self_attn.q_proj.weight")
    assert q.tolist() == pytest.approx([0.8, 0.8, 0.4, 0.4, 1.0, 1.0, 0.0, 0.0])
    # kv head 0 serves query heads 0-1 (max 0.6), kv head 1 serves 2-3 (max 1.0)
    k = row_factors(ARCH, imp, "model.layers.0.self_attn.k_proj.weight")
    assert k.tolist() == pytest.approx([0.4, 0.4, 0.0, 0.0])
    assert row_factors(ARCH, imp, "model.layers.0.self_attn.v_proj.bias").tolist() == k.tolist()


def test_unmasked_parameters():
    imp = _importance(0.5)
    for name in ["model.layers.0.self_attn.o_proj.weight", "model.embed_tokens.weight", "lm_head.weight",
                 "model.layers.0.input_layernorm.weight"]:
        assert row_factors(ARCH, imp, name) is None


def _param_with_grad():
    param = torch.nn.Parameter(torch.ones(3, 2))
    param.grad = torch.full((3, 2), 2.0)
    return param, torch.tensor([1.0, 0.5, 0.0])


def test_grad_mode_scales_gradient_rows():
    param, factor = _param_with_grad()
    mask = SoftMask({"p": (param, factor)}, "grad")
    mask.before_step()
    assert param.grad.tolist() == [[2.0, 2.0], [1.0, 1.0], [0.0, 0.0]]
    mask.after_step()
    assert param.grad.tolist() == [[2.0, 2.0], [1.0, 1.0], [0.0, 0.0]]


def test_update_mode_scales_the_optimizer_update_per_row():
    param, factor = _param_with_grad()
    optimizer = torch.optim.SGD([param], lr=0.1)
    mask = SoftMask({"p": (param, factor)}, "update")
    mask.before_step()
    optimizer.step()
    mask.after_step()
    assert param.grad.tolist() == [[2.0, 2.0]] * 3  # gradients untouched
    assert torch.allclose(param.detach(), torch.tensor([[0.8, 0.8], [0.9, 0.9], [1.0, 1.0]]))


def test_normalisation_is_per_layer_abs_tanh_of_z_score():
    raw = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    z = 1.224744871391589  # (3 - 2) / population std of (1, 2, 3)
    expected = [[abs(torch.tanh(torch.tensor(-z)).item()), 0.0, torch.tanh(torch.tensor(z)).item()], [0.0, 0.0, 0.0]]
    assert torch.allclose(normalise_per_layer(raw), torch.tensor(expected))
    assert torch.allclose(normalise_per_layer(raw * 100 + 7), torch.tensor(expected))  # scale and shift invariant


def test_sets_combine_by_elementwise_max():
    a, b = _importance(0.1), _importance(0.3)
    a.head[0, 0] = 0.9
    combined = Importance.combine([a, b])
    assert combined.head[0, 0].item() == pytest.approx(0.9) and combined.head[1, 1].item() == pytest.approx(0.3)
