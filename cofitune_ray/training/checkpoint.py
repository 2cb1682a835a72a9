"""The delta checkpoint of a trained node and the fingerprint that lets anyone verify a merge.

A checkpoint directory holds `delta.safetensors` (only the trained parameters), `node.json`
(the node that trained them), `metrics.json` (its evaluation point) and `fingerprint.json`:
float64 sums of the trained and of the frozen parameters, and the logits' sum on a fixed probe
input. Base model + delta must reproduce all three; `export.py` checks that.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cofitune_ray.core.node import ModelPart
from cofitune_ray.training.sharding import full_tensor, global_sums

DELTA_FILE = "delta.safetensors"
NODE_FILE = "node.json"
METRICS_FILE = "metrics.json"
FINGERPRINT_FILE = "fingerprint.json"


def delta_state(model: torch.nn.Module, keep: bool = True) -> dict[str, torch.Tensor]:
    """The trained parameters of an (unwrapped) model, whole and on CPU, ready to save.

    Sharded (FSDP) parameters are gathered one at a time, so every worker must call this; only a
    worker with `keep` copies them to its memory (the others get an empty dict).
    """
    delta = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            whole = full_tensor(param.detach())
            if keep:
                delta[name] = whole.to("cpu").contiguous()
    return delta


@torch.no_grad()
def model_fingerprint(model: torch.nn.Module, trained: set[str], probe_ids: list[int]) -> dict:
    """Checksums of trained and frozen parameters and of the logits on `probe_ids`.

    Sharded or not, the checksums are those of the whole parameters; with a sharded model every
    worker must call this (the sums and the probe forward are collectives).
    """
    names, params = zip(*model.named_parameters())
    sums = global_sums(list(params))
    trained_sum = sum(value for name, value in zip(names, sums) if name in trained)
    frozen_sum = sum(value for name, value in zip(names, sums) if name not in trained)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits = model(input_ids=torch.tensor([probe_ids], device=device)).logits
    model.train(was_training)
    return {"trained_sum": trained_sum, "frozen_sum": frozen_sum, "probe_ids": probe_ids,
            "probe_logits_sum": logits.double().sum().item()}


def write_checkpoint(directory: Path, delta: dict[str, torch.Tensor], part: ModelPart, metrics: dict,
                     fingerprint: dict) -> None:
    """Write a delta checkpoint: `delta` (from `delta_state`), the node, its metrics and fingerprint."""
    save_file(delta, str(directory / DELTA_FILE))
    (directory / NODE_FILE).write_text(json.dumps(part.to_dict(), indent=2))
    (directory / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    (directory / FINGERPRINT_FILE).write_text(json.dumps(fingerprint, indent=2))


def read_delta(directory: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(directory) / DELTA_FILE))


def delta_names(directory: str | Path) -> list[str]:
    """The names of the parameters a delta checkpoint holds (the node's trained ones), without loading them."""
    with safe_open(str(Path(directory) / DELTA_FILE), framework="pt") as handle:
        return list(handle.keys())


def read_json(directory: str | Path, name: str) -> dict | None:
    path = Path(directory) / name
    return json.loads(path.read_text()) if path.is_file() else None


def delete_checkpoints(paths: list[str]) -> list[str]:
    """Delete checkpoint directories no ranking needs any more; return the paths that are gone."""
    gone = []
    for path in paths:
        directory = Path(path)
        if directory.is_dir() and (directory / DELTA_FILE).is_file():
            shutil.rmtree(directory)
        if not directory.exists():
            gone.append(path)
    return gone
