"""`python -m cofitune_ray.search`: run a CoFiTune search (no arguments: the offline toy demo).

    python -m cofitune_ray.search [--config FILE] [--search-space FILE] [--resume]
                                  [--address ADDR] [--dashboard] [--verbose] [key=value ...]

Order of work: config and preflight checks (no Ray yet), connect to Ray, choose the Spectrum
references' modules (cached), evaluate the base model (cached), name where importance is cached if any
node soft-masks (the first soft-masked run computes it), run the Tune search, write results.
"""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import json
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from cofitune_ray.config import (
    PROJECT_ROOT,
    Config,
    ConfigError,
    learning_rates,
    load_config,
    objective,
    selection_policy,
    stop_rules,
)
from cofitune_ray.core.layout import (
    BASE_RESULT_FILE,
    CONFIG_FILE,
    EXPERIMENT_DIR,
    NODES_DIR,
    SUMMARY_FILE,
    TIMELINE_FILE,
)
from cofitune_ray.core.node import BASE_PART
from cofitune_ray.core.space import SearchSpace
from cofitune_ray.core.timeline import Spans
from cofitune_ray.core.tree import SearchTree
from cofitune_ray.preflight import PreflightError, preflight
from cofitune_ray.training.data import DataError

if TYPE_CHECKING:  # the CLI imports Ray, torch and transformers only once the config has passed its checks
    from ray import tune

    from cofitune_ray.tuning.searcher import TreeSearcher
    from cofitune_ray.tuning.trial import RunContext

DEMO_CONFIG = PROJECT_ROOT / "configs" / "toy.yaml"
TOY_ASSETS = PROJECT_ROOT / "assets" / "toyworld"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m cofitune_ray.search", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (default: the offline toy demo, configs/toy.yaml)")
    parser.add_argument("--search-space", help="search-space YAML (overrides search.space)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run named in the config (starts it if it does not exist yet)")
    parser.add_argument("--address",
                        help="join a running Ray cluster (e.g. 'auto'; default: $RAY_ADDRESS or a new local one)")
    parser.add_argument("--dashboard", action="store_true",
                        help="the local dashboard on its usual port 8265, with Ray Train runs tracked on it")
    parser.add_argument("--verbose", action="store_true",
                        help="show Ray's worker and Ray Train logs and INFO records here too "
                             "(default: only in log files)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. train.lr=1e-4")
    return parser.parse_args(argv)


def load_run_config(args: argparse.Namespace) -> Config:
    """The config the CLI asked for, with the search space and overrides applied."""
    if args.config:
        return load_config(args.config, args.overrides, args.search_space)
    from cofitune_ray.toyworld.prepare import ensure_toy_world
    from cofitune_ray.toyworld.worlds import DEFAULT_WORLD

    # committed with the project; rebuilt (minutes) only if missing
    ensure_toy_world(TOY_ASSETS, seed=0, world=DEFAULT_WORLD)
    return load_config(DEMO_CONFIG, args.overrides, args.search_space)


def run_directory(config: Config, resume: bool) -> Path:
    """storage_path/name; a new run never reuses an existing directory (it gets a timestamped sibling)."""
    run_dir = Path(config.storage_path).resolve() / config.name
    if run_dir.exists() and not resume:
        run_dir = run_dir.with_name(f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def base_result(config: Config, run_dir: Path) -> dict:
    """The base model's evaluation, computed once per run directory."""
    from cofitune_ray.training.runner import run_node
    path = run_dir / BASE_RESULT_FILE
    if path.is_file():
        return json.loads(path.read_text())
    print("[cofitune] evaluating the base model", flush=True)
    result = run_node(config, BASE_PART, "base", run_dir / NODES_DIR).to_dict()
    path.write_text(json.dumps(result, indent=2))
    return result


def make_searcher(config: Config, space: SearchSpace) -> TreeSearcher:
    """The search algorithm the config asks for, over the nodes `space` can reach.

    tree: the space's levels; grid: every reachable node, flat; optuna: Optuna picks among them.
    Every node runs once per learning rate (`search.lr_candidates`) and is ranked by `search.objective`.
    """
    from cofitune_ray.core.order import OptunaOrder
    from cofitune_ray.tuning.searcher import TreeSearcher

    tree_space = space if config.search.strategy == "tree" else space.as_grid()
    tree = SearchTree(tree_space, selection_policy(config), objective(config), learning_rates(config))
    order = OptunaOrder(seed=config.seed) if config.search.strategy == "optuna" else None
    return TreeSearcher(tree, order)


def make_tuner(config: Config, space: SearchSpace, run_dir: Path, context: RunContext,
               resume: bool) -> tune.Tuner:
    """A new Tuner for the search, or the interrupted one restored from the run directory."""
    from ray import tune

    from cofitune_ray.tuning.progress import SearchProgress
    from cofitune_ray.tuning.run_files import RunFiles
    from cofitune_ray.tuning.scheduler import PromisingChildScheduler
    from cofitune_ray.tuning.searcher import RunLimiter
    from cofitune_ray.tuning.status_table import TrialStatusTable
    from cofitune_ray.tuning.trial import node_trial, trial_name

    trainable = tune.with_resources(tune.with_parameters(node_trial, run=context), {"cpu": config.scaling.trial_cpus})
    experiment = run_dir / EXPERIMENT_DIR
    if resume and tune.Tuner.can_restore(str(experiment)):
        print(f"[cofitune] resuming the search in {experiment}", flush=True)
        return tune.Tuner.restore(str(experiment), trainable, resume_errored=True)
    searcher = make_searcher(config, space)
    s = config.search
    scheduler = PromisingChildScheduler(searcher, stop_rules(config))
    return tune.Tuner(
        trainable,
        # RunLimiter is max_concurrent_trials (Tune would ignore the setting beside it, with a warning)
        tune_config=tune.TuneConfig(search_alg=RunLimiter(searcher, s.max_concurrent_trials), scheduler=scheduler,
                                    num_samples=-1, trial_name_creator=trial_name, trial_dirname_creator=trial_name),
        run_config=tune.RunConfig(
            name=EXPERIMENT_DIR,
            storage_path=str(run_dir),
            failure_config=tune.FailureConfig(max_failures=s.max_failures),
            callbacks=[RunFiles(searcher, str(run_dir)), SearchProgress(searcher, config.name)],  # files first
            verbose=1,  # the legacy engine's "status updates only": the table below and nothing else
            progress_reporter=TrialStatusTable(s.objective),
        ),
    )


def run_search(config: Config, resume: bool = False, address: str | None = None, dashboard: bool = False,
               verbose: bool = False) -> Path:
    """Run (or resume) the whole search; return the run directory.

    Its phases go to `<run dir>/timeline.jsonl` (`core/timeline.py`), its wall time to summary.json.
    """
    started = time.time()
    spans = Spans()
    with spans.span("preflight"):
        checked = preflight(config)
    from cofitune_ray.cluster import connect
    from cofitune_ray.console import console_output, log_locations_line
    from cofitune_ray.outputs.results import summary_text, write_results
    from cofitune_ray.training.softmask.job import importance_ref, importance_state
    from cofitune_ray.training.spectrum import ensure_scores, with_selections
    from cofitune_ray.tuning.searcher import latest_saved_tree
    from cofitune_ray.tuning.trial import RunContext

    for line in checked.lines() + checked.memory.summary(config.scaling.strategy).splitlines():
        print(f"[cofitune] {line}", flush=True)
    config = dataclasses.replace(config, scaling=dataclasses.replace(config.scaling, strategy=checked.strategy))
    run_dir = run_directory(config, resume)
    if (run_dir / SUMMARY_FILE).is_file():
        print("[cofitune] this run has already finished; its summary:", flush=True)
        print(summary_text(json.loads((run_dir / SUMMARY_FILE).read_text())))
        return run_dir
    (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    spans.write_to(run_dir / TIMELINE_FILE)
    with console_output(run_dir, verbose) as log_dir:
        with spans.span("Ray start"):
            session_dir = connect(address, dashboard, verbose, config.scaling.num_workers)
        print(log_locations_line(log_dir, session_dir, verbose), flush=True)
        space = checked.space
        if any(part.kind == "snr" for part in space.references):
            with spans.span("Spectrum"):
                scores, computed = ensure_scores(config, Path(config.storage_path))
            space = with_selections(space, scores)
            print(f"[cofitune] Spectrum's SNR scores {'computed' if computed else 'reused from cache'}", flush=True)
        with spans.span("base evaluation"):
            base = base_result(config, run_dir)
        importance = None
        if checked.uses_softmask:
            importance = importance_ref(config, Path(config.storage_path))
            print(f"[cofitune] importance: {importance_state(importance)}", flush=True)
        context = RunContext(config, str(run_dir / NODES_DIR), base, importance)
        with spans.span("Tune search"):
            make_tuner(config, space, run_dir, context, resume).fit()
        with spans.span("results"):
            tree = latest_saved_tree(run_dir / EXPERIMENT_DIR)
            summary = write_results(config, tree, run_dir, started)
    print(summary_text(summary), flush=True)
    return run_dir


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = load_run_config(args)
        run_search(config, resume=args.resume, address=args.address, dashboard=args.dashboard, verbose=args.verbose)
    except (ConfigError, PreflightError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    # the process's own: `kill -USR1 <pid>` prints every thread's stack to stderr, and the search goes on (where a
    # search that seems stuck is waiting)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    sys.exit(main())
