"""Does soft-masking change training? `grad` (the paper's rule) vs `update` vs no mask, under AdamW.

    python benchmarks/softmask_modes.py [--config configs/toy.yaml] [--steps 150] [--lr 1e-3]

Trains the paper's final node (FFN up+down in (25%, 50%]) three times from the same base with the
same batches (no Ray: the training loop of `training/loop.py` in-process), with importance computed
on the config's general data, and prints Spec, Vers, Uni and how far each run's trained weights
are from the unmasked run's, relative to how far the unmasked run moved from the base.
"""

from __future__ import annotations

import argparse
import time

import torch

from cofitune_ray.config import load_config
from cofitune_ray.core.node import PAPER_NODE
from cofitune_ray.training.evaluate import Evaluator
from cofitune_ray.training.loop import training_points
from cofitune_ray.training.model import Architecture, load_model, load_part, load_tokenizer
from cofitune_ray.training.softmask.importance import compute_importance, importance_data, importance_settings
from cofitune_ray.training.softmask.mask import SoftMask

NODE = PAPER_NODE.with_(softmask=True)


def train(config, tokenizer, mode, importance):
    loaded = load_part(config.model.path, NODE)
    model, arch = loaded.model, loaded.architecture
    softmask = SoftMask.for_model(model, arch, importance, mode) if mode else None
    for _ in training_points(config, config.train.lr, model, tokenizer, softmask, 0, 1, torch.device("cpu")):
        pass
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/toy.yaml")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    config = load_config(args.config, [f"train.max_steps={args.steps}", f"train.lr={args.lr}", "train.epochs=100",
                                       "eval.every_n_steps=null"])
    tokenizer = load_tokenizer(config.model.tokenizer or config.model.path)
    base = load_model(config.model.path)
    started = time.time()
    importance, _ = compute_importance(base, Architecture.from_config(base.config), tokenizer,
                                       importance_data(config), importance_settings(config))
    print(f"importance computed in {time.time() - started:.0f} s on {importance_data(config)}")
    base = load_model(config.model.path)
    evaluator = Evaluator.from_config(config, tokenizer)
    rows = {"base model": (base, evaluator.evaluate(base))}
    for label, mode in (("no mask", None), ("grad mode", "grad"), ("update mode", "update")):
        started = time.time()
        model = train(config, tokenizer, mode, importance)
        rows[label] = (model, evaluator.evaluate(model))
        print(f"trained {label} in {time.time() - started:.0f} s")
    names = [n for n, p in rows["no mask"][0].named_parameters() if p.requires_grad]
    reference = dict(rows["no mask"][0].named_parameters())
    base_params = dict(base.named_parameters())
    moved = sum((reference[n] - base_params[n]).norm().item() for n in names)
    print(f"\nnode {NODE.key()}, {args.steps} AdamW steps at lr {args.lr}, softmask importance mean "
          f"{importance.intermediate.mean():.3f} (FFN units)\n")
    print(f"{'run':<13}{'Spec':>7}{'Vers':>7}{'Uni':>7}{'distance from no-mask run':>28}")
    for label, (model, metrics) in rows.items():
        if label == "base model":
            distance = "-"
        else:
            params = dict(model.named_parameters())
            distance = f"{sum((params[n] - reference[n]).norm().item() for n in names) / moved:.4f}"
        print(f"{label:<13}{metrics['spec']:>7.3f}{metrics['vers']:>7.3f}{metrics['uni']:>7.3f}{distance:>28}")


if __name__ == "__main__":
    main()
