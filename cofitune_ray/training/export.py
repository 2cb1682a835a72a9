"""Turn a delta checkpoint (trained parameters only) into a standard Hugging Face model directory."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cofitune_ray.training.checkpoint import FINGERPRINT_FILE, NODE_FILE, model_fingerprint, read_delta, read_json
from cofitune_ray.training.model import load_model, load_tokenizer


class MergeError(ValueError):
    """A delta that does not fit the base model, or a merge that does not reproduce the trained model."""


def merge_delta(model: torch.nn.Module, checkpoint_dir: str | Path) -> list[str]:
    """Copy the checkpoint's trained parameters into `model` in place; return their names."""
    delta = read_delta(checkpoint_dir)
    params = dict(model.named_parameters())
    unknown = sorted(set(delta) - set(params))
    if unknown:
        raise MergeError(f"{checkpoint_dir}: delta names parameters the base model lacks: {unknown[:5]}")
    with torch.no_grad():
        for name, value in delta.items():
            if params[name].shape != value.shape:
                raise MergeError(f"{checkpoint_dir}: {name} has shape {tuple(value.shape)}, "
                                 f"the base model's is {tuple(params[name].shape)}")
            params[name].copy_(value.to(params[name].dtype))
    return sorted(delta)


def verify_merge(model: torch.nn.Module, checkpoint_dir: str | Path, trained: list[str]) -> None:
    """Check the merged model against the checkpoint's fingerprint (same probe logits, same checksums)."""
    expected = read_json(checkpoint_dir, FINGERPRINT_FILE)
    if expected is None:
        raise MergeError(f"{checkpoint_dir}: no {FINGERPRINT_FILE} to verify the merge against")
    actual = model_fingerprint(model, set(trained), expected["probe_ids"])
    for key in ("trained_sum", "frozen_sum", "probe_logits_sum"):
        tolerance = 1e-6 * max(1.0, abs(expected[key]))
        if abs(actual[key] - expected[key]) > tolerance:
            raise MergeError(f"{checkpoint_dir}: the merged model's {key} is {actual[key]!r}, the trained model's was "
                             f"{expected[key]!r}: is this the base model the node was trained from?")


def export_merged(base_path: str, checkpoint_dir: str | Path, out_dir: str | Path,
                  tokenizer_path: str | None = None, dtype: str = "float32") -> Path:
    """Base model + delta, saved with its tokenizer as a directory `from_pretrained` loads."""
    out_dir = Path(out_dir)
    model = load_model(base_path, dtype)
    verify_merge(model, checkpoint_dir, merge_delta(model, checkpoint_dir))
    model.save_pretrained(out_dir)
    load_tokenizer(tokenizer_path or base_path).save_pretrained(out_dir)
    node = read_json(checkpoint_dir, NODE_FILE)
    if node is not None:
        (out_dir / "cofitune_node.json").write_text(json.dumps(node, indent=2))
    return out_dir
