"""Calibrating the SmolLM2 world on the base model and full SFT only: full SFT's Spec-Vers curve per lr.

    python -m cofitune_ray.realworld.calibrate --config configs/smollm2.yaml --lrs 3e-5 1e-4 3e-4 \
        --steps 60 --eval-every 20 --json FILE [--no-base]
    python -m cofitune_ray.realworld.calibrate --report FILE [FILE ...]

Full SFT is trained in-process by the benchmarks' executor (`training.local.LocalExecutor`, the
project's own training loop and evaluator), as `toyworld.calibrate` does; the config's `train:`
settings apply. Learning rates may run in separate processes (one `--json` each, `--no-base` on all
but one); `--report` prints the curves of all of them: per lr the Spec / Vers curve, then at each
lr's best point (the spec-floor rule) the share of the base's score every versatility set keeps.
The world's targets: Spec >= 0.8 at the best point, and a measurable share of Vers lost there.
No partial node is trained here.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import torch

from cofitune_ray.config import load_config
from cofitune_ray.core.node import BASE_PART
from cofitune_ray.toyworld.calibrate import (
    CurveRun,
    Point,
    best_lr,
    best_point,
    curve_table,
    full_sft,
    of_base,
    spec_floor,
    versatility_scores,
)
from cofitune_ray.training.local import LocalExecutor

SPEC_TARGET = 0.8


def report(base: Point, runs: list[CurveRun]) -> str:
    """The curve table, each lr's best point with the share of the base each Vers set keeps, and the targets."""
    runs = sorted(runs, key=lambda run: run.lr)
    floor = spec_floor(runs, base)
    lines = ["base per set: " + " ".join(f"{name} {score:.3f}" for name, score in base.vers_sets.items()),
             curve_table(base, runs), f"spec floor {floor:.3f} (base Spec {base.spec:.3f} + 0.9 x best gain)"]
    for run in runs:
        point, qualifies = best_point(run, floor)
        kept = " ".join(f"{name} {point.vers_sets[name] / score:.3f}" if score else f"{name} -"
                        for name, score in base.vers_sets.items())
        lines.append(f"lr {run.lr:g}: best point step {point.step}, Spec {point.spec:.3f}, Vers {point.vers:.3f} "
                     f"({of_base(point, base):.3f} of base){'' if qualifies else ', below the floor'}; "
                     f"kept per set: {kept}; {run.train_seconds:.0f} s training, {run.eval_seconds:.0f} s evaluating")
    chosen = best_lr(runs, base)
    point, _ = best_point(chosen, floor)
    lines.append(f"best lr {chosen.lr:g}: Spec {point.spec:.3f} ({'MET' if point.spec >= SPEC_TARGET else 'NOT MET'}"
                 f" Spec >= {SPEC_TARGET}); Vers lost {1 - of_base(point, base):.1%} of the base's")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/smollm2.yaml")
    parser.add_argument("--lrs", type=float, nargs="*", default=[3e-5, 1e-4, 3e-4])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-base", action="store_true", help="do not evaluate the base model (another process does)")
    parser.add_argument("--json", help="write every measured number to this file")
    parser.add_argument("--report", nargs="+", help="print the curves of these --json files instead of training")
    args = parser.parse_args(argv)
    if args.report:
        results = [json.loads(Path(path).read_text()) for path in args.report]
        (base,) = [Point(**r["base"]) for r in results if r["base"]]
        runs = [CurveRun(r["lr"], [Point(**p) for p in r["points"]], r["train_seconds"], r["eval_seconds"])
                for result in results for r in result["runs"]]
        print(report(base, runs))
        return
    torch.set_num_threads(args.threads)
    overrides = [f"train.max_steps={args.steps}", "train.epochs=1000", f"eval.every_n_steps={args.eval_every}",
                 "eval.at_epoch_end=false"]
    config = load_config(args.config, overrides)
    executor = LocalExecutor(config)
    result: dict = {"args": vars(args), "base": None, "runs": []}

    def save() -> None:
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1) + "\n")

    if not args.no_base:
        measured = next(executor.results(BASE_PART, None))
        result["base"] = asdict(Point(0, measured["spec"], measured["vers"], versatility_scores(measured)))
        result["base_eval_seconds"] = measured["eval_seconds"]
        print(f"[calibrate] base: {result['base']} ({measured['eval_seconds']:.0f} s)", flush=True)
        save()
    for lr in args.lrs:
        result["runs"].append(asdict(full_sft(executor, lr)))
        save()


if __name__ == "__main__":
    main()
