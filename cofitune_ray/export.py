"""Turn a delta checkpoint (trained parameters only) into a standard Hugging Face model directory."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from cofitune_ray.model import load_model, load_tokenizer
from cofitune_ray.train_worker import DELTA_FILE, NODE_FILE


def merge_delta(model: torch.nn.Module, checkpoint_dir: str | Path) -> list[str]:
    """Copy the checkpoint's trained parameters into `model` in place; return their names."""
    delta = load_file(str(Path(checkpoint_dir) / DELTA_FILE))
    params = dict(model.named_parameters())
    unknown = sorted(set(delta) - set(params))
    if unknown:
        raise ValueError(f"{checkpoint_dir}: delta names parameters the base model lacks: {unknown[:5]}")
    with torch.no_grad():
        for name, value in delta.items():
            if params[name].shape != value.shape:
                raise ValueError(f"{checkpoint_dir}: {name} has shape {tuple(value.shape)}, "
                                 f"the base model's is {tuple(params[name].shape)}")
            params[name].copy_(value.to(params[name].dtype))
    return sorted(delta)


def export_merged(base_path: str, checkpoint_dir: str | Path, out_dir: str | Path,
                  tokenizer_path: str | None = None, dtype: str = "float32") -> Path:
    """Base model + delta, saved with its tokenizer as a directory `from_pretrained` loads."""
    out_dir = Path(out_dir)
    model = load_model(base_path, dtype)
    merge_delta(model, checkpoint_dir)
    model.save_pretrained(out_dir)
    load_tokenizer(tokenizer_path or base_path).save_pretrained(out_dir)
    node_file = Path(checkpoint_dir) / NODE_FILE
    if node_file.is_file():
        (out_dir / "cofitune_node.json").write_text(json.dumps(json.loads(node_file.read_text()), indent=2))
    return out_dir
