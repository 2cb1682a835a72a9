"""Unit importance for soft-masking (CoFiTune's fine level; docs/softmask.md), computed once and cached.

Virtual all-ones masks sit on every attention head (on the head's output, which equals masking its
post-softmax probabilities since the output is linear in them), every FFN intermediate unit (the
up_proj output) and every FFN output unit (the down_proj output). Each batch runs twice with
dropout; loss = T * KL(pass 1 || pass 2) summed over non-pad tokens; only the masks get gradients.
Raw importance = summed mask gradients / non-pad tokens, summed over all workers, then each set is
normalised per layer (z-score, |tanh|) and several sets combine by element-wise max.

Dropout is applied by this module to each decoder layer's input, with a mask drawn from a
generator seeded by (seed, example, layer, pass): decoder-only checkpoints usually ship with no
dropout, and per-example seeding makes the result independent of how examples are sharded.

The model may be sharded (FSDP): the masks sit on module outputs, which are whole on every
worker, and every worker runs the same number of batches (padding batches count for nothing),
since each forward and backward of a sharded model is a collective.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from cofitune_ray.config import ColumnsConfig, Config
from cofitune_ray.core.files import write_whole
from cofitune_ray.training.data import collate, encode_example, fingerprint, read_examples
from cofitune_ray.training.model import Architecture, weights_fingerprint
from cofitune_ray.training.prompt import CHAT
from cofitune_ray.training.softmask.mask import Importance

IMPORTANCE_FILE = "importance.safetensors"
META_FILE = "importance.json"


@dataclass(frozen=True)
class ImportanceSettings:
    """What an importance set depends on besides the model and data (part of the cache key)."""

    prompt_template: str
    max_seq_length: int
    max_examples: int
    batch_size: int
    temperature: float
    dropout: float
    seed: int
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)  # the data's field names (data.columns)


def importance_settings(config: Config) -> ImportanceSettings:
    """The importance computation's settings from a config (its cache key is built from them)."""
    imp = config.importance
    return ImportanceSettings(
        prompt_template=config.data.prompt_template,
        max_seq_length=config.data.max_seq_length,
        max_examples=imp.max_examples,
        batch_size=imp.batch_size,
        temperature=imp.temperature,
        dropout=imp.dropout,
        seed=config.seed,
        columns=config.data.columns,
    )


def importance_data(config: Config) -> list[str]:
    """The general data importance is computed on: `importance.data`, else the versatility sets given by path."""
    return list(config.importance.data) or [v.path for v in config.data.versatility if v.lm_eval is None]


class _VirtualMasks:
    """All-ones masks hooked into a model; their .grad accumulates the importance signal."""

    def __init__(self, model: torch.nn.Module, arch: Architecture, dropout: float, seed: int, device: torch.device):
        layers = model.model.layers
        self.arch, self.dropout, self.seed = arch, dropout, seed
        self.head = torch.ones(arch.num_layers, arch.num_heads, device=device, requires_grad=True)
        self.intermediate = torch.ones(arch.num_layers, arch.intermediate_size, device=device, requires_grad=True)
        self.output = torch.ones(arch.num_layers, arch.hidden_size, device=device, requires_grad=True)
        self.example_ids: list[int] = []
        self.pass_index = 0
        self._handles = []
        for i, layer in enumerate(layers):
            self._handles += [
                layer.register_forward_pre_hook(self._dropout_hook(i), with_kwargs=True),
                layer.self_attn.o_proj.register_forward_pre_hook(self._head_hook(i)),
                layer.mlp.up_proj.register_forward_hook(self._unit_hook(self.intermediate, i)),
                layer.mlp.down_proj.register_forward_hook(self._unit_hook(self.output, i)),
            ]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def _dropout_hook(self, layer: int):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            keep = torch.stack([self._keep_mask(example, layer, hidden.shape[1:]) for example in self.example_ids])
            dropped = hidden * keep.to(hidden.device, hidden.dtype) / (1 - self.dropout)
            if args:
                return (dropped, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": dropped}

        return hook

    def _keep_mask(self, example: int, layer: int, shape: torch.Size) -> torch.Tensor:
        generator = torch.Generator().manual_seed(hash((self.seed, example, layer, self.pass_index)) & 0x7FFFFFFF)
        return torch.rand(shape, generator=generator) >= self.dropout

    def _head_hook(self, layer: int):
        def hook(module, args):
            (heads_out,) = args
            shape = heads_out.shape
            per_head = heads_out.view(*shape[:-1], self.arch.num_heads, self.arch.head_dim)
            masked = per_head * self.head[layer].to(heads_out.dtype).view(-1, 1)
            return (masked.view(shape),)

        return hook

    @staticmethod
    def _unit_hook(mask: torch.Tensor, layer: int):
        def hook(module, args, output):
            return output * mask[layer].to(output.dtype)

        return hook


def accumulate_importance(
    model: torch.nn.Module, arch: Architecture, batches, settings: ImportanceSettings
) -> tuple[dict[str, torch.Tensor], int]:
    """Summed mask gradients and the number of non-pad tokens over `batches`.

    Each batch is a collated dict plus `example_ids` (global example indices, for dropout seeds)
    and `padding` (True: run only to keep sharded workers in step; it adds nothing).
    """
    model.eval()  # this module's own dropout gives the two views; the model's stays off
    for param in model.parameters():
        param.requires_grad_(False)
    device = next(model.parameters()).device
    masks = _VirtualMasks(model, arch, settings.dropout, settings.seed, device)
    tokens = 0
    try:
        for batch in batches:
            masks.example_ids = batch["example_ids"]
            attention = batch["attention_mask"].to(device)
            logits = []
            for pass_index in (0, 1):
                masks.pass_index = pass_index
                logits.append(model(input_ids=batch["input_ids"].to(device), attention_mask=attention).logits.float())
            kl = F.kl_div(
                F.log_softmax(logits[1], dim=-1), F.log_softmax(logits[0], dim=-1), log_target=True, reduction="none"
            ).sum(dim=-1)
            loss = (0.0 if batch["padding"] else settings.temperature) * (kl * attention).sum()
            loss.backward()
            tokens += 0 if batch["padding"] else int(attention.sum())
    finally:
        masks.remove()
    sums = {"head": masks.head.grad, "intermediate": masks.intermediate.grad, "output": masks.output.grad}
    return {k: (v if v is not None else torch.zeros_like(getattr(masks, k))).detach().cpu()
            for k, v in sums.items()}, tokens


def importance_batches(path: str, tokenizer, settings: ImportanceSettings, rank: int = 0, world_size: int = 1):
    """This worker's share of the first `max_examples` examples of a data file or directory, as batches.

    Every worker yields as many batches as worker 0 (which has the most examples); the extra ones
    are padding batches (`padding: True`).
    """
    examples = read_examples(path, settings.columns, settings.prompt_template == CHAT)[: settings.max_examples]
    mine = list(range(rank, len(examples), world_size))
    most = math.ceil(len(examples) / world_size)
    for start in range(0, most, settings.batch_size):
        ids = mine[start : start + settings.batch_size]
        padding = not ids
        ids = ids or [0]
        rows = []
        for i in ids:
            prompt_ids, response_ids = encode_example(tokenizer, settings.prompt_template, examples[i])
            sequence = (prompt_ids + response_ids)[: settings.max_seq_length]
            rows.append({"input_ids": sequence, "labels": sequence})
        batch = collate(rows, tokenizer.pad_token_id)
        batch["example_ids"] = ids
        batch["padding"] = padding
        yield batch


def compute_importance(model, arch: Architecture, tokenizer, data_paths: list[str], settings: ImportanceSettings,
                       rank: int = 0, world_size: int = 1):
    """Normalised importance combined over `data_paths` (one set per file), and each raw set.

    With several workers each scores its share; sums and token counts are all-reduced, so every
    worker ends with the same result as a single worker would get.
    """
    raw_sets, normalised = [], []
    for path in data_paths:
        sums, tokens = accumulate_importance(model, arch,
                                             importance_batches(path, tokenizer, settings, rank, world_size),
                                             settings)
        if dist.is_available() and dist.is_initialized() and world_size > 1:
            flat = torch.cat([sums["head"].flatten(), sums["intermediate"].flatten(), sums["output"].flatten(),
                              torch.tensor([float(tokens)])]).double()
            dist.all_reduce(flat)
            sizes = [sums[k].numel() for k in ("head", "intermediate", "output")]
            parts = flat[:-1].split(sizes)
            sums = {k: part.view_as(sums[k]).float() for k, part in zip(("head", "intermediate", "output"), parts)}
            tokens = int(flat[-1])
        raw = Importance(**{k: v / max(tokens, 1) for k, v in sums.items()})
        raw_sets.append(raw.as_dict())
        normalised.append(raw.normalised())
    return Importance.combine(normalised), raw_sets


def cache_key(model_path: str, data_paths: list[str], settings: ImportanceSettings) -> dict:
    """What an importance set was computed from; equal keys mean the cached set can be reused."""
    return {
        "model_path": str(model_path),
        "model_fingerprint": weights_fingerprint(model_path),
        "data": {str(p): fingerprint([p]) for p in data_paths},
        "settings": asdict(settings),
    }


def cache_dir(storage_path: str, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(storage_path) / "importance" / digest


def save_importance(directory: Path, importance: Importance, key: dict,
                    raw_sets: list[dict[str, torch.Tensor]]) -> None:
    """Write the combined normalised importance, each raw set, and the key (written last)."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in importance.as_dict().items()}
    for i, raw in enumerate(raw_sets):
        tensors.update({f"raw{i}.{k}": v.contiguous() for k, v in raw.items()})
    save_file(tensors, str(directory / IMPORTANCE_FILE))
    write_whole(directory / META_FILE, json.dumps(key, indent=2, sort_keys=True))


def load_cached_importance(directory: Path, key: dict):
    """The cached importance when its key matches exactly, else None."""
    meta = directory / META_FILE
    if not meta.is_file() or json.loads(meta.read_text()) != json.loads(json.dumps(key)):
        return None
    tensors = load_file(str(directory / IMPORTANCE_FILE))
    return Importance(head=tensors["head"], intermediate=tensors["intermediate"], output=tensors["output"])
