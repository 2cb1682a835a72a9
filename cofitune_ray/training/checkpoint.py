"""The delta checkpoint of a trained node and the fingerprint that lets anyone verify a merge.

A checkpoint directory holds `delta.safetensors` (only the trained parameters), `node.json`
(the node that trained them), `metrics.json` (its evaluation point) and `fingerprint.json`:
float64 sums of the trained and of the frozen parameters, and the logits' sum on a fixed probe
input. Base model + delta must reproduce all three; `export.py` checks that.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from cofitune_ray.core.node import ModelPart

DELTA_FILE = "delta.safetensors"
NODE_FILE = "node.json"
METRICS_FILE = "metrics.json"
FINGERPRINT_FILE = "fingerprint.json"


def delta_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trained parameters of an (unwrapped) model, on CPU, ready to save."""
    return {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def model_fingerprint(model: torch.nn.Module, trained: set[str], probe_ids: list[int]) -> dict:
    """Checksums of trained and frozen parameters and of the logits on `probe_ids`."""
    trained_sum = frozen_sum = 0.0
    for name, param in model.named_parameters():
        value = param.detach().double().sum().item()
        if name in trained:
            trained_sum += value
        else:
            frozen_sum += value
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits = model(input_ids=torch.tensor([probe_ids], device=device)).logits
    model.train(was_training)
    return {"trained_sum": trained_sum, "frozen_sum": frozen_sum, "probe_ids": probe_ids,
            "probe_logits_sum": logits.double().sum().item()}


def write_checkpoint(directory: Path, model: torch.nn.Module, part: ModelPart, metrics: dict, fingerprint: dict) -> None:
    save_file(delta_state(model), str(directory / DELTA_FILE))
    (directory / NODE_FILE).write_text(json.dumps(part.to_dict(), indent=2))
    (directory / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    (directory / FINGERPRINT_FILE).write_text(json.dumps(fingerprint, indent=2))


def read_delta(directory: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(directory) / DELTA_FILE))


def read_json(directory: str | Path, name: str) -> dict | None:
    path = Path(directory) / name
    return json.loads(path.read_text()) if path.is_file() else None
