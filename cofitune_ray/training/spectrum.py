"""Spectrum as a reference node: the modules whose base weights carry the most signal, chosen without training.

Spectrum (Hartford et al. 2024, arXiv 2406.06623) scores each weight matrix W (m x n, singular values
s_1 >= ... >= s_k, k = min(m, n)) by its signal-to-noise ratio against a Marchenko-Pastur noise edge:

    sigma = (Q3(s) - Q1(s)) / 1.349          noise scale from the interquartile range of s (linear quantiles)
    eps   = sigma * (1 + sqrt(k / max(m, n))) the largest singular value of pure noise of scale sigma
    SNR   = (sum of s_i > eps) / (sum of s_i <= eps) / s_1

with Spectrum's convention that an empty noise sum counts as 1. A node `{snr: P}` then trains, in
each module type (q/k/v/o_proj, gate/up/down_proj), the floor(N * P / 100) of the N layers with the
highest SNR (ties: the lower layer). Unlike Spectrum's own recipe it does not add embed_tokens and
lm_head: like every other node it trains projections only.

The scores are computed once per base model, tensor by tensor from its safetensors files (no model
load; in float64, so the choice is deterministic), as a Ray task on a Train worker's resources (a
GPU when the run uses them: a 70B model's SVDs take hours on CPU), cached on storage under
`storage_path/snr/<key>/` like importance, and reused by a resumed or a later run. The chosen
selection is part of the node (`ModelPart.selection`), so tree.json and the report show it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import safe_open

from cofitune_ray.core.files import write_whole
from cofitune_ray.core.node import ALL_MODULES, ModelPart
from cofitune_ray.core.space import SearchSpace
from cofitune_ray.training.model import ModelError, read_architecture, weights_fingerprint

SCORES_FILE = "snr_scores.json"
#: A projection weight of a decoder layer on disk, e.g. model.layers.3.mlp.up_proj.weight.
_PROJECTION = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:self_attn|mlp)\.(" + "|".join(ALL_MODULES) + r")\.weight$")
#: IQR / 1.349 estimates the standard deviation of a normal distribution.
_IQR_TO_SIGMA = 1.349


def matrix_snr(weight: torch.Tensor) -> float:
    """Spectrum's signal-to-noise ratio of one weight matrix (module docstring), computed in float64."""
    values = torch.linalg.svdvals(weight.detach().to(torch.float64))
    q1, q3 = torch.quantile(values, torch.tensor([0.25, 0.75], dtype=torch.float64, device=values.device))
    sigma = (q3 - q1) / _IQR_TO_SIGMA
    rows, cols = weight.shape
    edge = sigma * (1 + math.sqrt(min(rows, cols) / max(rows, cols)))
    noise_values = values[values <= edge]
    noise = float(noise_values.sum()) if len(noise_values) else 1.0  # Spectrum's convention
    return float(values[values > edge].sum()) / noise / float(values[0])  # svdvals are in descending order


def safetensors_files(model_path: str) -> list[Path]:
    """The model's safetensors files, which Spectrum's scores are read from; ModelError when it has none."""
    files = sorted(Path(model_path).glob("*.safetensors"))
    if not files:
        raise ModelError(f"model.path: an snr reference reads the base weights from safetensors files, and "
                         f"{model_path!r} has none")
    return files


def module_scores(model_path: str, device: str = "cpu") -> dict[str, list[float]]:
    """Spectrum's SNR of every projection weight: module name -> one score per layer."""
    num_layers = read_architecture(model_path).num_layers
    scores: dict[str, list[float | None]] = {m: [None] * num_layers for m in ALL_MODULES}
    for file in safetensors_files(model_path):
        with safe_open(str(file), framework="pt", device=device) as handle:
            for name in handle.keys():
                match = _PROJECTION.search(name)
                if match and int(match[1]) < num_layers:
                    scores[match[2]][int(match[1])] = matrix_snr(handle.get_tensor(name))
    missing = [f"layer {i} {m}" for m, values in scores.items() for i, v in enumerate(values) if v is None]
    if missing:
        raise ModelError(f"model.path: no weight found for {', '.join(missing[:3])} in {model_path}")
    return scores


def select(scores: dict[str, list[float]], top_percent: float) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Per module type, the floor(N * top_percent / 100) layers of highest SNR (ties: the lower layer)."""
    selection = []
    for module in ALL_MODULES:
        values = scores[module]
        count = ModelPart(kind="snr", top_percent=top_percent).snr_layer_count(len(values))
        ranked = sorted(range(len(values)), key=lambda i: (-values[i], i))
        selection.append((module, tuple(sorted(ranked[:count]))))
    return tuple(selection)


def snr_part(model_path: str, top_percent: float, device: str = "cpu") -> ModelPart:
    """The snr node of a model directory, with its selection (computed here, in this process)."""
    return ModelPart(kind="snr", top_percent=top_percent,
                     selection=select(module_scores(model_path, device), top_percent))


def with_selections(space: SearchSpace, scores: dict[str, list[float]]) -> SearchSpace:
    """`space` with every snr reference given its selection from `scores`."""
    references = tuple(replace(p, selection=select(scores, p.top_percent)) if p.kind == "snr" else p
                       for p in space.references)
    return replace(space, references=references)


def scores_cache_key(model_path: str) -> dict:
    """What a cached set of scores was computed from; equal keys mean it can be reused."""
    return {"model_path": str(model_path), "model_fingerprint": weights_fingerprint(model_path),
            "method": "spectrum-snr-float64"}


def load_cached_scores(storage_path: str | Path, model_path: str) -> dict[str, list[float]] | None:
    """The cached scores of this model, or None."""
    path = _cache_dir(storage_path, scores_cache_key(model_path)) / SCORES_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return data["scores"] if data["key"] == scores_cache_key(model_path) else None


def save_scores(storage_path: str | Path, model_path: str, scores: dict[str, list[float]]) -> Path:
    """Write the scores with their key (atomically); return the file."""
    key = scores_cache_key(model_path)
    directory = _cache_dir(storage_path, key)
    directory.mkdir(parents=True, exist_ok=True)
    write_whole(directory / SCORES_FILE, json.dumps({"key": key, "scores": scores}, indent=2))
    return directory / SCORES_FILE


def _cache_dir(storage_path: str | Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(storage_path) / "snr" / digest


def ensure_scores(config, storage_path: str | Path) -> tuple[dict[str, list[float]], bool]:
    """The base model's scores (computed by a Ray task unless cached); True when they were computed now."""
    import ray

    model_path = config.model.path
    cached = load_cached_scores(storage_path, model_path)
    if cached is not None:
        return cached, False
    s = config.scaling
    task = ray.remote(num_cpus=s.cpus_per_worker, num_gpus=s.gpus_per_worker if s.use_gpu else 0)(module_scores)
    scores = ray.get(task.remote(model_path, "cuda" if s.use_gpu else "cpu"))
    save_scores(storage_path, model_path, scores)
    return scores, True
