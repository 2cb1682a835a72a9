"""Fine-level soft-masking: protect important units by scaling their rows' training signal.

Importance is per unit, in [0, 1): attention heads, FFN intermediate units (the up_proj/gate_proj
output rows) and FFN output units (the down_proj output rows). Each trained row is scaled by
(1 - importance of the unit it feeds):

- up_proj and gate_proj row i by 1 - I_in[layer, i] (both feed intermediate unit i);
- down_proj row j by 1 - I_out[layer, j];
- q_proj rows of head h by 1 - I_head[layer, h]; k/v_proj rows of a key-value head by 1 minus the
  largest importance among the query heads that share it (grouped-query attention).

Two modes (docs/softmask.md has the measurement):
- "grad": the paper's rule, on gradients, after backward and before clipping and the step.
  Adam divides each parameter's step by the RMS of its own gradient, so a constant per-row scale
  cancels out and this mode barely changes training under AdamW.
- "update": the same factors on the optimizer's update (a per-unit learning rate); this one does.
Either way the factors apply once per optimizer step, whatever the gradient accumulation.

Under FSDP each worker holds a slice of rows of every weight (`sharding.local_rows`); it scales
its own rows by their own factors, so the sharded result equals the unsharded rule row for row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cofitune_ray.training.model import Architecture
from cofitune_ray.training.sharding import local_rows

SOFTMASK_MODES = ("update", "grad")


@dataclass
class Importance:
    """Per-unit importance, one row per decoder layer."""

    head: torch.Tensor  # [layers, heads]
    intermediate: torch.Tensor  # [layers, intermediate_size]
    output: torch.Tensor  # [layers, hidden_size]

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {"head": self.head, "intermediate": self.intermediate, "output": self.output}

    def normalised(self) -> "Importance":
        """Per layer: z-score over the layer's units, then |tanh|, giving values in [0, 1)."""
        return Importance(**{k: normalise_per_layer(v) for k, v in self.as_dict().items()})

    @staticmethod
    def combine(sets: list["Importance"]) -> "Importance":
        """Several importance sets (e.g. from several general datasets) by element-wise max."""
        if not sets:
            raise ValueError("no importance sets to combine")
        return Importance(
            **{k: torch.stack([s.as_dict()[k] for s in sets]).amax(dim=0) for k in sets[0].as_dict()}
        )


def normalise_per_layer(raw: torch.Tensor) -> torch.Tensor:
    """|tanh(z-score)| of each row; a row with no spread maps to zeros."""
    mean = raw.mean(dim=1, keepdim=True)
    std = raw.std(dim=1, keepdim=True, unbiased=False)
    z = torch.where(std > 0, (raw - mean) / std.clamp_min(torch.finfo(raw.dtype).tiny), torch.zeros_like(raw))
    return torch.tanh(z).abs()


def row_factors(arch: Architecture, importance: Importance, parameter_name: str) -> torch.Tensor | None:
    """The per-row factor (1 - importance) for one parameter, or None when it is not masked.

    Works for weights ([rows, cols]) and biases ([rows]) alike: the factor has one entry per row.
    """
    parts = parameter_name.split(".")
    if len(parts) < 5 or parts[0] != "model" or parts[1] != "layers":
        return None
    layer, module = int(parts[2]), parts[4]
    if module in ("up_proj", "gate_proj"):
        unit_importance = importance.intermediate[layer]
    elif module == "down_proj":
        unit_importance = importance.output[layer]
    elif module == "q_proj":
        unit_importance = importance.head[layer].repeat_interleave(arch.head_dim)
    elif module in ("k_proj", "v_proj"):
        group = arch.num_heads // arch.num_kv_heads
        per_kv_head = importance.head[layer].view(arch.num_kv_heads, group).amax(dim=1)
        unit_importance = per_kv_head.repeat_interleave(arch.head_dim)
    else:
        return None
    return 1.0 - unit_importance.float()


class SoftMask:
    """Applies row factors to a set of trained parameters, once per optimizer step.

    Call `before_step()` after the last backward of a step (before clipping) and
    `after_step()` right after `optimizer.step()`. Parameters may be sharded by rows (FSDP):
    each worker scales only the rows it holds.
    """

    def __init__(self, factors: dict[str, tuple[torch.nn.Parameter, torch.Tensor]], mode: str):
        if mode not in SOFTMASK_MODES:
            raise ValueError(f"soft-mask mode {mode!r} is not one of {', '.join(SOFTMASK_MODES)}")
        self.mode = mode
        self._targets = [(p, _local_factor(f, p)) for p, f in factors.values()]
        self._before: list[torch.Tensor] = []

    @classmethod
    def for_model(cls, model: torch.nn.Module, arch: Architecture, importance: Importance, mode: str) -> "SoftMask":
        """Soft-mask every trainable parameter of `model` (unwrapped, sharded or not) that feeds a unit with an
        importance."""
        factors = {}
        for name, param in model.named_parameters():
            if param.requires_grad:
                factor = row_factors(arch, importance, name)
                if factor is not None:
                    factors[name] = (param, factor.to(param.dtype))
        return cls(factors, mode)

    @torch.no_grad()
    def before_step(self) -> None:
        if self.mode == "grad":
            for param, factor in self._targets:
                if param.grad is not None:
                    local_rows(param.grad)[0].mul_(factor)
        else:
            self._before = [local_rows(param)[0].clone() for param, _ in self._targets]

    @torch.no_grad()
    def after_step(self) -> None:
        if self.mode != "update":
            return
        # new = old + factor * (stepped - old): the optimizer's update, scaled per row.
        for (param, factor), old in zip(self._targets, self._before):
            local_rows(param)[0].sub_(old).mul_(factor).add_(old)
        self._before = []


def _local_factor(factor: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """The factors of the rows of `param` this worker holds, shaped to broadcast over them."""
    if factor.shape[0] != param.shape[0]:
        raise ValueError(f"factor for {tuple(param.shape)} has {factor.shape[0]} rows")
    local, start = local_rows(param)
    mine = factor[start : start + local.shape[0]].to(local.device)
    return mine.view(-1, *([1] * (param.dim() - 1)))
