"""What one Ray Train run costs before and after its work: Ray's TorchTrainer vs the search's own runs.

    OMP_NUM_THREADS=1 python benchmarks/run_startup.py [--runs 4]

Starts a local cluster as the CLI does (2 CPUs, the dashboard, `cluster.worker_env`'s environment) and fits
runs of one worker (0.5 CPU) whose function only imports the training code, as a node's run does first,
alternating between:
- Ray's defaults: `TorchTrainer`, with Ray Train's preemption watcher;
- the search's runs: `RunTrainer` (no Ray Data `DatasetManager`), no preemption watcher (`cluster.worker_env`
  on a local cluster).
For each: the seconds from `fit()` to the function running, the seconds of the whole `fit()`, and the CPU-seconds
the machine spent from `fit()` until 4 s after it returned (the run's helper processes end by then; the cluster's
own background, the same for both, is in both). Medians of `--runs`, after one warm-up run each. Run it on a quiet
machine: the CPU figure is machine-wide.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import ray
import ray.train
from cpu_by_process import machine_cpu_seconds  # this directory's (run as a script)
from ray.train.torch import TorchTrainer

from cofitune_ray.cluster import PREEMPTION_WATCHER_ENV, local_cluster_options, worker_env
from cofitune_ray.training.runner import RunTrainer

SETTLE_S = 4.0


def first_work(config: dict) -> None:
    """A node run's first step: the training code imported; writes when the function began."""
    began = time.time()
    import cofitune_ray.training.worker  # noqa: F401

    Path(config["out"]).write_text(str(began))


def one_run(trainer_class, watcher: bool, out: Path, index: int) -> tuple[float, float, float]:
    os.environ[PREEMPTION_WATCHER_ENV] = "1" if watcher else "0"  # Ray Train passes it to the run's controller
    marker = out / f"began-{index}"
    cpu, started = machine_cpu_seconds(), time.time()
    trainer_class(first_work, train_loop_config={"out": str(marker)},
                  scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.5}),
                  run_config=ray.train.RunConfig(name=f"run-{index}", storage_path=str(out))).fit()
    ended = time.time()
    time.sleep(SETTLE_S)
    return float(marker.read_text()) - started, ended - started, machine_cpu_seconds() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4)
    args = parser.parse_args()
    env = worker_env(False, True, 1, os.environ)
    env.pop(PREEMPTION_WATCHER_ENV)  # set per run below
    os.environ.update(env)
    ray.init(address="local", num_cpus=2, log_to_driver=False, **local_cluster_options(env_vars=env))
    variants = {"Ray's defaults (TorchTrainer, watcher)": (TorchTrainer, True),
                "the search's runs (RunTrainer, no watcher)": (RunTrainer, False)}
    figures: dict[str, list[tuple[float, float, float]]] = {name: [] for name in variants}
    out = Path(tempfile.mkdtemp(prefix="run_startup"))
    time.sleep(SETTLE_S)  # the cluster's own start-up done
    index = 0
    for round_ in range(args.runs + 1):  # round 0 warms up
        for name, (trainer_class, watcher) in variants.items():
            index += 1
            result = one_run(trainer_class, watcher, out, index)
            if round_:
                figures[name].append(result)
    print(f"{args.runs} runs each (medians), 1 worker of 0.5 CPU, a function that imports the training code")
    print(f"{'':44} {'to function s':>13} {'fit s':>7} {'CPU-s':>7}")
    medians = {}
    for name, rows in figures.items():
        medians[name] = [statistics.median(column) for column in zip(*rows)]
        print(f"{name:44} {medians[name][0]:13.2f} {medians[name][1]:7.2f} {medians[name][2]:7.2f}")
    default, search = medians.values()
    print(f"ratio (search's / Ray's defaults): to function {search[0] / default[0]:.2f}, "
          f"fit {search[1] / default[1]:.2f}, CPU {search[2] / default[2]:.2f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
