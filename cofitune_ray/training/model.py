"""Architecture adapter: which parameters of a Hugging Face causal LM a search node trains.

Supported families share the decoder layout `model.layers.{i}.self_attn.{q,k,v,o}_proj` and
`model.layers.{i}.mlp.{gate,up,down}_proj` (LLaMA, Mistral, Qwen2).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cofitune_ray.core.node import ATTENTION_MODULES, ModelPart

if TYPE_CHECKING:  # reading a model's config and naming its parameters is also what the CLI's checks do: they
    # import transformers only when they read a model, and torch only when they build one
    import torch
    from transformers import PretrainedConfig

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")


class ModelError(ValueError):
    """A model this project cannot load or cannot select parameters in."""


@dataclass(frozen=True)
class Architecture:
    """The shape facts of a decoder-only model that node selection and soft-masking need."""

    model_type: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    intermediate_size: int

    @classmethod
    def from_config(cls, config: PretrainedConfig) -> "Architecture":
        if config.model_type not in SUPPORTED_MODEL_TYPES:
            raise ModelError(
                f"model type {config.model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        heads = config.num_attention_heads
        return cls(
            model_type=config.model_type,
            num_layers=config.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
        )

    def module_prefix(self, layer: int, module: str) -> str:
        """The parameter-name prefix of one projection in one layer."""
        block = "self_attn" if module in ATTENTION_MODULES else "mlp"
        return f"model.layers.{layer}.{block}.{module}."


def read_model_config(model_path: str) -> PretrainedConfig:
    """The Hugging Face config of a local model directory of a supported family (no weights are read)."""
    if not Path(model_path).is_dir() and not _looks_like_hub_id(model_path):
        raise ModelError(f"model.path: {model_path!r} is not a directory")
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_path)
    except (OSError, ValueError) as exc:
        raise ModelError(f"model.path: cannot read a Hugging Face config from {model_path!r}: {exc}") from None
    Architecture.from_config(config)  # a clear error for an unsupported family
    return config


def read_architecture(model_path: str) -> Architecture:
    """The architecture of a local model directory, read from its config only (no weights)."""
    return Architecture.from_config(read_model_config(model_path))


#: The weight files `from_pretrained` looks for in a local directory, in its order of preference.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json",
                "pytorch_model.bin", "pytorch_model.bin.index.json")


def check_weights(model_path: str) -> str:
    """The weight file a local model directory would load from; ModelError when it has none.

    A sharded checkpoint's index must name shards that are all present. A hub id is not checked here.
    """
    directory = Path(model_path)
    if not directory.is_dir():
        return ""
    found = next((name for name in WEIGHT_FILES if (directory / name).is_file()), None)
    if found is None:
        raise ModelError(f"model.path: {model_path!r} has a config but no weights "
                         f"(none of {', '.join(WEIGHT_FILES)})")
    if found.endswith(".index.json"):
        try:
            shards = sorted(set(json.loads((directory / found).read_text())["weight_map"].values()))
        except (ValueError, KeyError, AttributeError) as exc:
            raise ModelError(f"model.path: {directory / found}: not a weight index with a 'weight_map' "
                             f"({exc})") from None
        missing = [shard for shard in shards if not (directory / shard).is_file()]
        if missing:
            raise ModelError(f"model.path: {directory / found} names weight shards that are missing: "
                             f"{', '.join(missing)}")
    return found


def weights_fingerprint(model_path: str) -> str:
    """A short hash of a model directory's config and safetensors files (names and sizes): what a
    computation cached on storage (importance, Spectrum's scores) was made from."""
    directory = Path(model_path)
    weights = sorted(directory.glob("*.safetensors"))
    return hashlib.sha256(
        (directory / "config.json").read_bytes()
        + b"".join(str(w.stat().st_size).encode() + w.name.encode() for w in weights)
    ).hexdigest()[:16]


def _looks_like_hub_id(path: str) -> bool:
    # "org/name" with no leading "." or "/": a hub id, which only a machine with hub access can load.
    return path.count("/") == 1 and not path.startswith((".", "/", "~"))


def trainable_parameter_names(arch: Architecture, part: ModelPart, parameter_names: list[str]) -> list[str]:
    """The exact parameter names a node trains, in model order.

    "full" trains everything (embeddings, norms and lm_head included); "base" trains nothing.
    """
    if part.kind == "full":
        return list(parameter_names)
    prefixes = tuple(arch.module_prefix(layer, module) for layer, module in part.trained_modules(arch.num_layers))
    selected = [name for name in parameter_names if name.startswith(prefixes)]
    missing = [p for p in prefixes if not any(n.startswith(p) for n in selected)]
    if missing:
        raise ModelError(f"the model has no parameters named {missing[0]}* (its layout is not {arch.model_type}'s)")
    return selected


def freeze_all_but(model: torch.nn.Module, names: list[str]) -> int:
    """Set requires_grad on exactly `names`; return how many scalar parameters will train."""
    wanted = set(names)
    count = 0
    for name, param in model.named_parameters():
        param.requires_grad_(name in wanted)
        if name in wanted:
            count += param.numel()
    return count


@dataclass
class PartModel:
    """A model loaded to train one part: everything else frozen (`load_part`)."""

    model: torch.nn.Module
    architecture: Architecture
    trained_names: list[str]  # the parameters the part trains, in model order
    trained_params: int  # how many scalar parameters train


def load_part(model_path: str, part: ModelPart, dtype: str = "float32") -> PartModel:
    """Load the model and freeze all but the parameters `part` trains (none for the base model): how the worker,
    the in-process executor and the benchmarks all start a node."""
    model = load_model(model_path, dtype)
    arch = Architecture.from_config(model.config)
    names = trainable_parameter_names(arch, part, [n for n, _ in model.named_parameters()]) if part.trains else []
    return PartModel(model, arch, names, freeze_all_but(model, names))


def parameter_names(model_path: str) -> list[str]:
    """The model's parameter names in model order, from its config alone (built on the meta device: no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return [name for name, _ in model.named_parameters()]


def load_model(model_path: str, dtype: str = "float32") -> torch.nn.Module:
    """Load a causal LM from a local directory in the given dtype."""
    import torch
    from transformers import AutoModelForCausalLM

    read_architecture(model_path)  # a clear error for unsupported families before loading weights
    return AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype))


def load_tokenizer(path: str):
    """The tokenizer of a local directory; a missing pad token falls back to EOS (right padding)."""
    from transformers import AutoTokenizer

    if not Path(path).is_dir() and not _looks_like_hub_id(path):
        raise ModelError(f"model.tokenizer: {path!r} is not a directory")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.eos_token_id is None:
        raise ModelError(f"model.tokenizer: the tokenizer in {path!r} has no EOS token to end responses with")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
