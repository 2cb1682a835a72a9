"""A search node: which part of the model one trial trains, and how.

Pure Python (no torch, no Ray) so the tree search can be tested on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
FFN_MODULES = ("gate_proj", "up_proj", "down_proj")
ALL_MODULES = ATTENTION_MODULES + FFN_MODULES

#: What a node does with the model: evaluate it untouched, train every parameter, train a part, or train
#: the part Spectrum chooses from the base weights' signal-to-noise ratios.
NODE_KINDS = ("base", "full", "partial", "snr")


class NodeError(ValueError):
    """A node description that cannot name a valid part of a model."""


@dataclass(frozen=True)
class ModelPart:
    """One point of the CoFiTune search space.

    kind: "base" (no training: the reference point), "full" (every parameter, i.e. full SFT),
        "partial" (only the modules below, in the layers below) or "snr" (Spectrum: in each module
        type, the top_percent% of layers by signal-to-noise ratio of the base weights; see
        training/spectrum.py).
    layer_range: (lo, hi] as fractions of the model depth; (0.25, 0.5] on 32 layers is layers 8..15.
    layers: explicit 0-based layer indices; when given they replace layer_range.
    modules: projection names trained inside those layers (subset of ALL_MODULES).
    softmask: whether fine-level soft-masking by unit importance is on.
    lr: learning rate for this node; None: every candidate of the search (`LearningRates.for_node`).
    top_percent: snr nodes only: the share of each module type's layers they train, in (0, 100].
    selection: snr nodes only: (module, layer indices) pairs, computed from the base weights before
        the search (None until then); layer_range, layers and modules do not apply to them.
    """

    kind: str = "partial"
    layer_range: tuple[float, float] = (0.0, 1.0)
    layers: tuple[int, ...] | None = None
    modules: tuple[str, ...] = ALL_MODULES
    softmask: bool = False
    lr: float | None = None
    top_percent: float | None = None
    selection: tuple[tuple[str, tuple[int, ...]], ...] | None = None
    label: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.kind not in NODE_KINDS:
            raise NodeError(f"node kind {self.kind!r} is not one of {', '.join(NODE_KINDS)}")
        lo, hi = self.layer_range
        if not (0.0 <= lo < hi <= 1.0):
            raise NodeError(f"layer_range {self.layer_range} must satisfy 0 <= lo < hi <= 1")
        unknown = [m for m in self.modules if m not in ALL_MODULES]
        if unknown:
            raise NodeError(
                f"unknown module(s) {', '.join(unknown)}; valid modules: {', '.join(ALL_MODULES)}"
            )
        if not self.modules:
            raise NodeError("a node needs at least one module")
        if len(set(self.modules)) != len(self.modules):
            raise NodeError(f"duplicate modules in {self.modules}")
        if self.layers is not None:
            if not self.layers or any(i < 0 for i in self.layers) or len(set(self.layers)) != len(self.layers):
                raise NodeError(f"layers {self.layers} must be distinct non-negative indices")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise NodeError(f"lr {self.lr} must be a positive number")
        if self.kind == "snr":
            if self.top_percent is None or not 0 < self.top_percent <= 100:
                raise NodeError(f"an snr node needs top_percent in (0, 100], got {self.top_percent}")
            if self.softmask or self.layers is not None:
                raise NodeError("an snr node takes its layers from the base weights and does not soft-mask")
        elif self.top_percent is not None or self.selection is not None:
            raise NodeError("top_percent and selection belong to snr nodes")
        # Canonical module order so equal sets compare (and hash) equal.
        object.__setattr__(self, "modules", tuple(m for m in ALL_MODULES if m in self.modules))
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(sorted(self.layers)))
        if self.selection is not None:
            object.__setattr__(self, "selection", _canonical_selection(self.selection))

    def layer_indices(self, num_layers: int) -> list[int]:
        """The 0-based decoder layers this node trains in a model of `num_layers` layers."""
        if self.kind == "full":
            return list(range(num_layers))
        if self.kind == "base":
            return []
        if self.kind == "snr":
            if self.selection is None:
                raise NodeError(f"node {self.key()}: its layers are chosen from the base weights before the search")
            chosen = sorted({i for _, layers in self.selection for i in layers})
            outside = [i for i in chosen if i >= num_layers]
            if outside:
                raise NodeError(f"selection layers {outside} are outside the model, which has {num_layers} layers")
            return chosen
        if self.layers is not None:
            outside = [i for i in self.layers if i >= num_layers]
            if outside:
                raise NodeError(
                    f"layers {outside} are outside the model, which has {num_layers} layers (0..{num_layers - 1})"
                )
            return list(self.layers)
        lo, hi = self.layer_range
        start, stop = _round_half_up(lo * num_layers), _round_half_up(hi * num_layers)
        if stop <= start:
            raise NodeError(
                f"layer_range {self.layer_range} selects no layer of a {num_layers}-layer model"
            )
        return list(range(start, stop))

    def snr_layer_count(self, num_layers: int) -> int:
        """How many layers of each module type an snr node trains: floor(num_layers * top_percent / 100)."""
        return math.floor(num_layers * self.top_percent / 100 + 1e-9)

    def trained_modules(self, num_layers: int) -> list[tuple[int, str]]:
        """The (layer, projection) pairs a partial or snr node trains, by layer then module order."""
        if self.kind == "snr":
            self.layer_indices(num_layers)  # checks the selection against the model
            chosen = {(i, module) for module, layers in self.selection for i in layers}
            return sorted(chosen, key=lambda pair: (pair[0], ALL_MODULES.index(pair[1])))
        return [(i, module) for i in self.layer_indices(num_layers) for module in self.modules]

    @property
    def trains(self) -> bool:
        """Whether this node trains anything (the base reference does not)."""
        return self.kind != "base"

    def key(self) -> str:
        """A stable, unique, human-readable identity (used to never run a node twice)."""
        if self.kind == "base":
            return "base"
        parts = [self.kind]
        if self.kind == "snr":
            parts.append(f"top={self.top_percent:g}%")
        if self.kind == "partial":
            if self.layers is not None:
                parts.append("layers=" + ",".join(map(str, self.layers)))
            else:
                parts.append(f"range=({_fmt(self.layer_range[0])},{_fmt(self.layer_range[1])}]")
            parts.append("modules=" + "+".join(self.modules))
        parts.append("mask=" + ("on" if self.softmask else "off"))
        if self.lr is not None:
            parts.append(f"lr={self.lr:g}")
        return "|".join(parts)

    def describe(self) -> str:
        """A compact name for progress lines, tables and plots: the label, else range, modules, mask, lr.

        E.g. "(25%, 50%] up+down soft-mask"; `key()` is the exact identity.
        """
        if self.label:
            return self.label
        if self.kind == "snr":
            return f"Spectrum top {self.top_percent:g}%" + (f" lr {self.lr:g}" if self.lr is not None else "")
        if self.kind != "partial":
            return {"base": "base model", "full": "full SFT"}[self.kind]
        if self.layers is not None:
            where = "layers " + ",".join(map(str, self.layers))
        else:
            lo, hi = self.layer_range
            where = f"({100 * lo:g}%, {100 * hi:g}%]"
        groups = {ALL_MODULES: "all modules", ATTENTION_MODULES: "attention", FFN_MODULES: "FFN"}
        modules = groups.get(self.modules) or "+".join(m.removesuffix("_proj") for m in self.modules)
        parts = [where, modules] + (["soft-mask"] if self.softmask else [])
        if self.lr is not None:
            parts.append(f"lr {self.lr:g}")
        return " ".join(parts)

    def with_(self, **changes) -> "ModelPart":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain JSON-able data; `from_dict` gives the same node back."""
        data = {
            "kind": self.kind,
            "layer_range": list(self.layer_range),
            "layers": list(self.layers) if self.layers is not None else None,
            "modules": list(self.modules),
            "softmask": self.softmask,
            "lr": self.lr,
            "label": self.label,
        }
        if self.kind == "snr":
            data["top_percent"] = self.top_percent
            data["selection"] = None if self.selection is None else {m: list(ls) for m, ls in self.selection}
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ModelPart":
        data = dict(data)
        if "layer_range" in data:
            data["layer_range"] = tuple(float(x) for x in data["layer_range"])
        if data.get("layers") is not None:
            data["layers"] = tuple(int(i) for i in data["layers"])
        if "modules" in data:
            data["modules"] = tuple(data["modules"])
        if data.get("selection") is not None:
            data["selection"] = tuple((m, tuple(ls)) for m, ls in data["selection"].items())
        return cls(**data)


BASE_PART = ModelPart(kind="base", label="base model")
FULL_SFT_PART = ModelPart(kind="full", label="full SFT")
#: The paper's final pick at every model scale: FFN up_proj + down_proj in the (25%, 50%] layer range (soft-mask off;
#: `PAPER_NODE.with_(softmask=True)` is the paper's node with its fine level).
PAPER_NODE = ModelPart(layer_range=(0.25, 0.5), modules=("up_proj", "down_proj"))


def _canonical_selection(selection) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """(module, sorted layers) pairs in ALL_MODULES order, without modules that select no layer."""
    chosen = dict(selection)
    unknown = [m for m in chosen if m not in ALL_MODULES]
    if unknown:
        raise NodeError(f"selection names unknown module(s) {', '.join(unknown)}")
    for module, layers in chosen.items():
        if any(i < 0 for i in layers) or len(set(layers)) != len(layers):
            raise NodeError(f"selection of {module}: {layers} must be distinct non-negative layer indices")
    canonical = tuple((m, tuple(sorted(chosen[m]))) for m in ALL_MODULES if chosen.get(m))
    if not canonical:
        raise NodeError("the selection trains no module")
    return canonical


def _round_half_up(x: float) -> int:
    # Python's round() rounds half to even; layer bounds should not depend on parity.
    return math.floor(x + 0.5 + 1e-9)


def _fmt(x: float) -> str:
    return f"{x:g}"
