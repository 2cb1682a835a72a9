"""Calibrating a toy world on the base model and full SFT only: full SFT's Spec-Vers curve per lr and seed.

    python -m cofitune_ray.toyworld.calibrate --config configs/toy.yaml --seeds 0 1 2 \
        --lrs 3e-5 1e-4 3e-4 1e-3 --steps 500 --eval-every 25 [--json FILE]

Full SFT is trained in-process by the benchmarks' executor (`training.local.LocalExecutor`: the
project's own training loop) and scored by the project's `Evaluator` on the config's speciality and
versatility sets, at every `--eval-every` steps;
the config's other `train:` settings (batch, warmup, schedule, betas, weight decay, clipping) apply.
Other seeds of the config's toy world are prepared in the cache when missing (`config_for_seed`).

Per seed it prints the curve (step, Spec, Vers, Vers/base) of every lr, the best lr by the
spec-floor rule (`best_lr`) and whether the world's targets hold at that lr's best point:
  Spec >= 0.9; Vers between 50% and 85% of the base's; and a gradual decline: when Spec first
  reaches 0.5, Vers is still >= 70% of the base's. No partial node is ever trained here.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from cofitune_ray.config import Config, load_config
from cofitune_ray.core.node import BASE_PART, FULL_SFT_PART
from cofitune_ray.toyworld.prepare import config_for_seed
from cofitune_ray.training.local import LocalExecutor

SPEC_TARGET = 0.9  # Spec at the best point
VERS_BAND = (0.5, 0.85)  # Vers / base Vers at the best point
GRADUAL_SPEC, GRADUAL_VERS = 0.5, 0.7  # when Spec first reaches 0.5, Vers / base >= 0.7
FLOOR_SHARE = 0.9  # a point qualifies when its Spec gain is at least this share of full SFT's best gain


@dataclass
class Point:
    """One evaluation point of a run."""

    step: int
    spec: float
    vers: float
    vers_sets: dict[str, float] = field(default_factory=dict)  # each versatility set's score


@dataclass
class CurveRun:
    """Full SFT at one lr: its evaluation points and what they cost."""

    lr: float
    points: list[Point] = field(default_factory=list)
    train_seconds: float = 0.0  # optimizer steps only
    eval_seconds: float = 0.0  # every evaluation point together


def best_point(run: CurveRun, floor: float) -> tuple[Point, bool]:
    """The run's qualifying point (Spec >= floor) with the highest Vers, else its highest-Spec point; and
    whether it qualifies."""
    qualifying = [p for p in run.points if p.spec >= floor]
    if qualifying:
        return max(qualifying, key=lambda p: p.vers), True
    return max(run.points, key=lambda p: p.spec), False


def spec_floor(runs: list[CurveRun], base: Point) -> float:
    """The Spec a point needs to qualify: the base's plus FLOOR_SHARE of the best gain any run reached."""
    gain = max(p.spec for run in runs for p in run.points) - base.spec
    return base.spec + FLOOR_SHARE * gain


def best_lr(runs: list[CurveRun], base: Point) -> CurveRun:
    """The run whose best point is best: qualifying first, then higher Vers (the search's spec_floor rule)."""
    floor = spec_floor(runs, base)

    def rank(run: CurveRun) -> tuple[bool, float]:
        point, qualifies = best_point(run, floor)
        return qualifies, point.vers

    return max(runs, key=rank)


def of_base(point: Point, base: Point) -> float:
    """The point's Vers as a share of the base model's (NaN when the base scores 0: no share to keep)."""
    return point.vers / base.vers if base.vers else float("nan")


def targets(run: CurveRun, base: Point, floor: float) -> dict[str, tuple[bool, str]]:
    """Each target at the run's best point: (met, what was measured)."""
    point, _ = best_point(run, floor)
    ratio = of_base(point, base)
    first_half = next((p for p in run.points if p.spec >= GRADUAL_SPEC), None)
    return {
        f"Spec >= {SPEC_TARGET}": (point.spec >= SPEC_TARGET, f"Spec {point.spec:.3f} at step {point.step}"),
        f"Vers/base in [{VERS_BAND[0]}, {VERS_BAND[1]}]": (
            VERS_BAND[0] <= ratio <= VERS_BAND[1], f"Vers/base {ratio:.3f} at step {point.step}"),
        f"Vers/base >= {GRADUAL_VERS} when Spec first >= {GRADUAL_SPEC}": (
            (of_base(first_half, base) >= GRADUAL_VERS, f"Vers/base {of_base(first_half, base):.3f} at step "
                                                           f"{first_half.step} (Spec {first_half.spec:.3f})")
            if first_half else (False, f"Spec never reached {GRADUAL_SPEC}")),
    }


def versatility_scores(metrics: dict[str, float]) -> dict[str, float]:
    """Each versatility set's score, from the evaluator's flat metrics (`vers/<set>/score`)."""
    return {key.split("/")[1]: value for key, value in metrics.items()
            if key.startswith("vers/") and key.endswith("/score")}


def full_sft(executor: LocalExecutor, lr: float) -> CurveRun:
    """Train every parameter at `lr` with the project's in-process executor, scored at each evaluation point."""
    run = CurveRun(lr)
    started = time.perf_counter()
    for result in executor.results(FULL_SFT_PART, lr):
        if result.get("final"):
            break
        run.points.append(Point(result["step"], result["spec"], result["vers"], versatility_scores(result)))
        run.eval_seconds += result["eval_seconds"]
        print(f"[calibrate] lr {lr:g} step {result['step']}: Spec {result['spec']:.3f} Vers {result['vers']:.3f}",
              flush=True)
    run.train_seconds = time.perf_counter() - started - run.eval_seconds
    return run


def curve_table(base: Point, runs: list[CurveRun]) -> str:
    """One row per evaluation point: step, then Spec / Vers / Vers-over-base for each lr."""
    header = f"{'step':>5}" + "".join(f" | lr {run.lr:<8g} Spec  Vers  V/base" for run in runs)
    lines = [header, f"{0:>5}" + f" | {'':11}{base.spec:.3f} {base.vers:.3f} 1.000" * len(runs)]
    for i, point in enumerate(runs[0].points):
        cells = [run.points[i] if i < len(run.points) else None for run in runs]
        lines.append(f"{point.step:>5}" + "".join(
            f" | {'':11}{p.spec:.3f} {p.vers:.3f} {of_base(p, base):.3f}" if p else " |" for p in cells))
    return "\n".join(lines)


def calibrate_seed(config: Config, lrs: list[float]) -> dict:
    """Base and full-SFT runs on one world: the printed report's numbers, as plain data."""
    executor = LocalExecutor(config)
    base_result = next(executor.results(BASE_PART, None))
    base = Point(0, base_result["spec"], base_result["vers"], versatility_scores(base_result))
    base_eval_seconds = base_result["eval_seconds"]
    runs = []
    for lr in lrs:
        runs.append(full_sft(executor, lr))
        print(f"[calibrate] lr {lr:g}: {len(runs[-1].points)} evaluation points, "
              f"{runs[-1].train_seconds:.0f} s training, {runs[-1].eval_seconds:.0f} s evaluating", flush=True)
    return {"model": config.model.path, "base": asdict(base),
            "base_eval_seconds": base_eval_seconds, "runs": [asdict(run) for run in runs]}


def seed_report(seed: int, result: dict, steps: int) -> str:
    """The curve table, the best lr and the targets of one seed."""
    base = Point(**result["base"])
    runs = [CurveRun(r["lr"], [Point(**p) for p in r["points"]], r["train_seconds"], r["eval_seconds"])
            for r in result["runs"]]
    floor = spec_floor(runs, base)
    chosen = best_lr(runs, base)
    point, qualifies = best_point(chosen, floor)
    lines = [f"== seed {seed}: {result['model']}",
             "base per set: " + " ".join(f"{name} {score:.2f}" for name, score in base.vers_sets.items()),
             curve_table(base, runs),
             f"spec floor {floor:.3f} (base Spec {base.spec:.3f} + {FLOOR_SHARE} x best gain); "
             f"best lr {chosen.lr:g}: step {point.step}, Spec {point.spec:.3f}, Vers {point.vers:.3f} "
             f"({of_base(point, base):.3f} of base){'' if qualifies else ', below the floor'}"]
    for name, (met, measured) in targets(chosen, base, floor).items():
        lines.append(f"  {'MET    ' if met else 'NOT MET'} {name}: {measured}")
    evals = sum(len(run.points) for run in runs)
    lines.append(f"cost: {1000 * sum(run.train_seconds for run in runs) / (steps * len(runs)):.0f} ms per step, "
                 f"{sum(run.eval_seconds for run in runs) / evals:.2f} s per evaluation point "
                 f"(base: {result['base_eval_seconds']:.2f} s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/toy.yaml", help="a config whose model is a toy world's")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="base-model seeds of the config's world")
    parser.add_argument("--lrs", type=float, nargs="+", default=[3e-5, 1e-4, 3e-4, 1e-3])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write every measured number to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = [f"train.max_steps={args.steps}", "train.epochs=1000", f"eval.every_n_steps={args.eval_every}",
                 "eval.at_epoch_end=false"]
    config = load_config(args.config, overrides)
    results = {}
    for seed in args.seeds:
        results[seed] = calibrate_seed(config_for_seed(config, seed), args.lrs)
        print(seed_report(seed, results[seed], args.steps), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "seeds": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
