"""The speciality-versatility trade-off: what the tree search buys over the alternatives, measured side by side.

    python benchmarks/tradeoff.py [--config configs/toy.yaml] [--seeds 0 1] [--steps 150] [--lrs 3e-4 1e-3 3e-3]
                                  [--eval-examples 50] [--threads 2]

(docs/benchmarks.md has the settings and output of the recorded run: 80 steps, 30 examples, 1 thread.)

On a toy world (--config: configs/toy.yaml, the demo's, or configs/toy-hard.yaml, the cliff world;
any config whose model is a prepared toy world's; one world per base-model seed), every method gets the same
per-node step budget and has its learning rate tuned over the same grid:

  base model        no training;
  full SFT          every parameter;
  LoRA (PEFT)       on all seven projections of every layer, rank chosen so it trains about as many
                    parameters as the paper's node;
  paper node        FFN up+down in (25%, 50%], without soft-mask and with each soft-mask mode;
  tree search       `SearchTree` over search_spaces/cofitune.yaml at the default lr, then its winner's lr;
  exhaustive grid   every node the tree could reach (`candidate_space`), then the winner's lr;
  Optuna            `OptunaNodeSearcher` with as many candidate trials as the tree ran, then the winner's lr.

Nodes are trained in-process with the project's own loop (`training.worker.run_training`), without Ray,
so Ray start-up does not dominate the timings; cost is reported in trials and optimizer steps, which
is what Ray would spread over workers. A node's score is its best evaluation point (as in a search).
Each trained node's result is cached by (seed, node, lr, soft-mask mode) in a JSON file, so the tree,
the grid and Optuna see identical results for a shared node; each method's cost still counts every
node it visited, with the wall time measured when that node was trained.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cofitune_ray.config import Config, load_config
from cofitune_ray.training.evaluate import Evaluator
from cofitune_ray.training.importance import compute_importance
from cofitune_ray.training.importance_job import importance_data, importance_settings
from cofitune_ray.training.model import Architecture, freeze_all_but, load_model, load_tokenizer, trainable_parameter_names
from cofitune_ray.core.node import ALL_MODULES, FULL_SFT_PART, ModelPart
from cofitune_ray.tuning.optuna_searcher import OptunaNodeSearcher, candidate_space
from cofitune_ray.core.space import load_search_space
from cofitune_ray.tuning.searcher import TreeSearcher
from cofitune_ray.training.softmask import SoftMask
from cofitune_ray.toyworld.prepare import config_for_seed
from cofitune_ray.training.worker import run_training
from cofitune_ray.core.tree import SelectionPolicy

PAPER_NODE = ModelPart(layer_range=(0.25, 0.5), modules=("up_proj", "down_proj"), label="FFN up+down (25%,50%]")
COLUMNS = ("Spec", "Vers", "Vers/base", "Uni", "trained", "trials", "steps", "wall s")


@dataclass
class NodeResult:
    """One trained (or evaluated) node: its evaluation points and what it cost."""

    history: list[dict]
    trained_params: int
    train_steps: int
    wall_time_s: float

    @property
    def best(self) -> dict:
        """The evaluation point with the highest Uni (how the search scores a node)."""
        return max(self.history, key=lambda p: p["uni"])


@dataclass
class MethodResult:
    """A method's chosen model and the total cost of every trial it ran to find it."""

    name: str
    choice: str
    best: dict
    trained_params: int
    trials: int = 0
    train_steps: int = 0
    wall_time_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def add_cost(self, result: NodeResult) -> None:
        self.trials += 1
        self.train_steps += result.train_steps
        self.wall_time_s += result.wall_time_s


class ResultCache:
    """One world's node results in a JSON file, keyed by node, lr and soft-mask mode; discarded when the settings change.

    One file per seed, so the seeds can also be run by separate processes at the same time.
    """

    def __init__(self, path: Path, settings: dict):
        self.path, self.settings = path, settings
        data = json.loads(path.read_text()) if path.is_file() else {}
        if data.get("settings") != settings:
            if data:
                print(f"[tradeoff] {path} was made with other settings; starting a new cache")
            data = {"settings": settings, "results": {}}
        self.results: dict[str, dict] = data["results"]

    def get(self, key: str) -> NodeResult | None:
        return NodeResult(**self.results[key]) if key in self.results else None

    def put(self, key: str, result: NodeResult) -> None:
        self.results[key] = result.__dict__
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"settings": self.settings, "results": self.results}, indent=1))


def lora_rank(model: torch.nn.Module, target_params: int) -> int:
    """The LoRA rank on all projections whose parameter count is closest to `target_params`."""
    per_rank = sum(m.in_features + m.out_features for name, m in model.named_modules()
                   if name.rsplit(".", 1)[-1] in ALL_MODULES)
    return max(1, round(target_params / per_rank))


class SeedBench:
    """Trains and scores nodes on one toy world; every training run goes through the cache."""

    def __init__(self, config: Config, seed: int, cache: ResultCache):
        self.config, self.seed, self.cache = config, seed, cache
        self.tokenizer = load_tokenizer(config.model.tokenizer or config.model.path)
        self.evaluator = Evaluator.from_config(config, self.tokenizer)
        self.arch = Architecture.from_config(load_model(config.model.path).config)
        self._importance = None

    @property
    def importance(self):
        """Unit importance on the config's general data, computed once per world."""
        if self._importance is None:
            started = time.time()
            model = load_model(self.config.model.path)
            self._importance, _ = compute_importance(model, self.arch, self.tokenizer, importance_data(self.config),
                                                     importance_settings(self.config))
            print(f"[tradeoff] seed {self.seed}: importance computed in {time.time() - started:.0f} s")
        return self._importance

    def base(self) -> NodeResult:
        return self._cached(f"seed={self.seed}|base", self._evaluate_base)

    def node(self, spec: ModelPart, lr: float, mode: str | None = None) -> NodeResult:
        """A search node trained at `lr`; a soft-masked node uses `mode`, else the config's softmask_mode."""
        if spec.kind == "base":
            return self.base()
        mode = (mode or self.config.train.softmask_mode) if spec.softmask else None
        key = f"seed={self.seed}|{spec.with_(lr=None).key()}|lr={lr:g}" + (f"|mode={mode}" if mode else "")
        return self._cached(key, lambda: self._train_node(spec, lr, mode))

    def lora(self, rank: int, lr: float) -> NodeResult:
        return self._cached(f"seed={self.seed}|lora|all projections|r={rank}|lr={lr:g}",
                            lambda: self._train_lora(rank, lr))

    def _cached(self, key: str, run) -> NodeResult:
        result = self.cache.get(key)
        if result is None:
            result = run()
            self.cache.put(key, result)
            print(f"[tradeoff] {key}: Uni {result.best['uni']:.3f} (Spec {result.best['spec']:.3f}, "
                  f"Vers {result.best['vers']:.3f}) in {result.wall_time_s:.0f} s", flush=True)
        return result

    def _evaluate_base(self) -> NodeResult:
        started = time.time()
        metrics = self.evaluator.evaluate(load_model(self.config.model.path))
        return NodeResult([_point(metrics, 0)], 0, 0, time.time() - started)

    def _train_node(self, spec: ModelPart, lr: float, mode: str | None) -> NodeResult:
        torch.manual_seed(self.config.seed)
        model = load_model(self.config.model.path)
        names = trainable_parameter_names(self.arch, spec, [n for n, _ in model.named_parameters()])
        trained = freeze_all_but(model, names)
        softmask = SoftMask.for_model(model, self.arch, self.importance, mode) if mode else None
        return self._train(model, spec.with_(lr=lr), softmask, trained)

    def _train_lora(self, rank: int, lr: float) -> NodeResult:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(self.config.seed)
        model = get_peft_model(load_model(self.config.model.path),
                               LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=list(ALL_MODULES),
                                          task_type="CAUSAL_LM"))
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        # run_training takes only the learning rate from the node; the PEFT model marks its own trainable parameters.
        return self._train(model, FULL_SFT_PART.with_(lr=lr, label="LoRA"), None, trained)

    def _train(self, model, spec: ModelPart, softmask, trained: int) -> NodeResult:
        history: list[dict] = []
        started = time.time()

        def report(model, step, epoch, train_loss):
            history.append(_point(self.evaluator.evaluate(model), len(history) + 1, step, train_loss))

        run_training(self.config, spec, model, self.tokenizer, softmask, report, 0, 1, torch.device("cpu"))
        return NodeResult(history, trained, history[-1]["step"], time.time() - started)


def _point(metrics: dict, eval_index: int, step: int = 0, train_loss: float | None = None) -> dict:
    """One evaluation point in the shape the tree records (tree.EVAL_KEYS)."""
    return {"eval_index": eval_index, "spec": metrics["spec"], "vers": metrics["vers"], "uni": metrics["uni"],
            "step": step, "train_loss": train_loss}


def run_search(bench: SeedBench, searcher: TreeSearcher, lr: float) -> tuple[ModelPart, list[NodeResult]]:
    """Drive a searcher in-process, one node at a time, until its tree ends; the winner and each trial's result."""
    tree, results = searcher.tree, []
    while not tree.finished:
        node = searcher.next_node()
        if node is None:
            raise RuntimeError(f"the search stalled with nothing in flight ({tree.depth=})")
        trial_id = f"trial-{len(results)}"
        searcher.start_trial(node, trial_id)
        result = bench.node(node.part, lr)
        for point in result.history:
            searcher.on_trial_result(trial_id, {**point, "trained_params": result.trained_params})
        best = result.best
        searcher.on_trial_complete(trial_id, {
            **result.history[-1], "final": True, "trained_params": result.trained_params,
            "best_spec": best["spec"], "best_vers": best["vers"], "best_uni": best["uni"],
            "train_steps": result.train_steps, "wall_time_s": result.wall_time_s, "checkpoint": None,
        })
        results.append(result)
    return tree.best().part, results


def tune_lr(name: str, choice: str, train, lrs: list[float], searched: list[NodeResult] = (),
            default_lr: float | None = None) -> MethodResult:
    """The best Uni over `lrs` of `train(lr)`; cost: the search's trials plus each lr trial not already run by it."""
    runs = {lr: train(lr) for lr in lrs}
    best_lr = max(runs, key=lambda lr: runs[lr].best["uni"])
    method = MethodResult(name, f"{choice}, lr {best_lr:g}", runs[best_lr].best, runs[best_lr].trained_params)
    for result in searched:
        method.add_cost(result)
    for lr, result in runs.items():
        if not (searched and lr == default_lr):  # the search already trained the winner at the default lr
            method.add_cost(result)
    return method


def search_then_tune(bench: SeedBench, name: str, searcher: TreeSearcher, lrs: list[float]) -> MethodResult:
    """A search at the default lr, then its winner's lr tuned over the grid."""
    default_lr = bench.config.train.lr
    winner, searched = run_search(bench, searcher, default_lr)
    return tune_lr(name, winner.key(), lambda lr: bench.node(winner, lr), lrs, searched, default_lr)


def bench_seed(bench: SeedBench, space, policy: SelectionPolicy, lrs: list[float], optuna_seed: int) -> list[MethodResult]:
    """Every method on one world, in table order."""
    default_lr = bench.config.train.lr
    base = bench.base()
    methods = [MethodResult("base model", "no training", base.best, 0)]
    methods.append(tune_lr("full SFT", "all parameters", lambda lr: bench.node(FULL_SFT_PART, lr), lrs))
    paper_params = bench.node(PAPER_NODE, default_lr).trained_params
    rank = lora_rank(load_model(bench.config.model.path), paper_params)
    methods.append(tune_lr(f"LoRA r={rank}", "all projections", lambda lr: bench.lora(rank, lr), lrs))
    methods.append(tune_lr("paper node", PAPER_NODE.label, lambda lr: bench.node(PAPER_NODE, lr), lrs))
    masked = PAPER_NODE.with_(softmask=True)
    for mode in ("grad", "update"):
        methods.append(tune_lr(f"  + soft-mask {mode}", f"{PAPER_NODE.label}, mask {mode}",
                               lambda lr, mode=mode: bench.node(masked, lr, mode), lrs))
    tree = TreeSearcher(space, policy)
    methods.append(search_then_tune(bench, "tree search", tree, lrs))
    candidates = tree.tree.trials_started() - len(space.references)
    methods[-1].notes.append(f"tree search ended: {tree.tree.end_reason}, after {candidates} candidate trials")
    methods.append(search_then_tune(bench, "exhaustive grid", TreeSearcher(candidate_space(space), policy), lrs))
    optuna = OptunaNodeSearcher(space, max_trials=candidates, seed=optuna_seed)
    methods.append(search_then_tune(bench, f"Optuna ({candidates} trials)", optuna, lrs))
    return methods


def format_table(rows: list[tuple[str, list[str], str]]) -> str:
    """A fixed-width table: method, the COLUMNS, then what the method chose."""
    widths = [max(len(r[0]) for r in rows + [("method", [], "")])] + [
        max(len(c), *(len(r[1][i]) for r in rows)) for i, c in enumerate(COLUMNS)]
    header = ["method".ljust(widths[0])] + [c.rjust(w) for c, w in zip(COLUMNS, widths[1:])] + ["choice"]
    lines = ["  ".join(header)]
    for name, cells, choice in rows:
        lines.append("  ".join([name.ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells, widths[1:])] + [choice]))
    return "\n".join(lines)


def seed_table(methods: list[MethodResult]) -> str:
    base_vers = methods[0].best["vers"]
    rows = []
    for m in methods:
        b = m.best
        cells = [f"{b['spec']:.3f}", f"{b['vers']:.3f}", f"{b['vers'] / base_vers:.3f}", f"{b['uni']:.3f}",
                 f"{m.trained_params:,}", str(m.trials), str(m.train_steps), f"{m.wall_time_s:.0f}"]
        rows.append((m.name, cells, m.choice))
    notes = [n for m in methods for n in m.notes]
    return format_table(rows) + "".join(f"\n{n}" for n in notes)


def summary_table(per_seed: dict[int, list[MethodResult]]) -> str:
    """Mean ± spread (half the range across seeds) of every column, by method position."""
    seeds = list(per_seed)
    rows = []
    for i, first in enumerate(per_seed[seeds[0]]):
        ms = [per_seed[s][i] for s in seeds]
        values = [
            [m.best["spec"] for m in ms], [m.best["vers"] for m in ms],
            [m.best["vers"] / per_seed[s][0].best["vers"] for s, m in zip(seeds, ms)], [m.best["uni"] for m in ms],
        ]
        cells = [f"{statistics.mean(v):.3f}±{(max(v) - min(v)) / 2:.3f}" for v in values]
        cells += [f"{statistics.mean(m.trained_params for m in ms):,.0f}", f"{statistics.mean(m.trials for m in ms):g}",
                  f"{statistics.mean(m.train_steps for m in ms):g}", f"{statistics.mean(m.wall_time_s for m in ms):.0f}"]
        rows.append((first.name.split(" (")[0], cells, " / ".join(m.choice for m in ms)))
    return format_table(rows)


def verdict(per_seed: dict[int, list[MethodResult]]) -> str:
    """The acceptance questions, answered from the numbers (means over seeds; spread = half the range)."""
    def stats(name):
        unis = [next(m for m in ms if m.name.startswith(name)).best["uni"] for ms in per_seed.values()]
        steps = [next(m for m in ms if m.name.startswith(name)).train_steps for ms in per_seed.values()]
        return statistics.mean(unis), (max(unis) - min(unis)) / 2, statistics.mean(steps)

    tree, tree_spread, tree_steps = stats("tree search")
    grid, grid_spread, grid_steps = stats("exhaustive grid")
    full, _, _ = stats("full SFT")
    lora, _, _ = stats("LoRA")
    spread = max(tree_spread, grid_spread)
    return "\n".join([
        f"tree Uni {tree:.3f} vs grid Uni {grid:.3f}: gap {grid - tree:+.3f}, seed spread {spread:.3f} -> "
        f"{'within' if grid - tree <= spread else 'NOT within'} spread",
        f"tree steps {tree_steps:g} vs grid steps {grid_steps:g}: ratio {tree_steps / grid_steps:.2f} -> "
        f"{'at most' if tree_steps <= grid_steps / 2 else 'MORE than'} half",
        f"tree Uni {tree:.3f} vs tuned full SFT {full:.3f} ({tree - full:+.3f}) and tuned LoRA {lora:.3f} ({tree - lora:+.3f})",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/toy.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="toy-world (base model) seeds")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per node (default: train.max_steps)")
    parser.add_argument("--evals", type=int, default=2, help="evaluation points per node, evenly spaced")
    parser.add_argument("--lrs", type=float, nargs="+", default=[3e-4, 1e-3, 3e-3], help="the learning-rate grid")
    parser.add_argument("--eval-examples", type=int, default=None, help="examples per eval set (default: the config's)")
    parser.add_argument("--cache", help="folder of the node-result caches, one JSON file per seed "
                                         "(default: runs/tradeoff/<the config's name>)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    steps = args.steps or config.train.max_steps
    overrides = {"train.max_steps": steps, "train.epochs": 1000, "eval.every_n_steps": max(1, steps // args.evals),
                 "eval.at_epoch_end": False, "data.max_eval_examples": args.eval_examples or config.data.max_eval_examples}
    config = load_config(args.config, [f"{k}={v}" for k, v in overrides.items()])
    if config.train.lr not in args.lrs:
        parser.error(f"the lr grid must contain the default lr train.lr={config.train.lr:g} (the search runs at it)")
    settings = {**overrides, "config": str(Path(args.config).resolve()), "lrs": args.lrs}
    space = load_search_space(config.search.space)
    s = config.search
    policy = SelectionPolicy(s.beam_width, s.epsilon, s.min_gain, s.max_depth, s.max_trials)
    print(f"[tradeoff] {steps} steps per node (batch {config.train.batch_size}), evaluation every "
          f"{config.eval.every_n_steps} steps on {config.data.max_eval_examples} examples per set, lr grid "
          f"{args.lrs}, default lr {config.train.lr:g}, {args.threads} threads, no Ray")
    started = time.time()
    per_seed = {}
    for seed in args.seeds:
        cache = Path(args.cache or Path("runs") / "tradeoff" / config.name) / f"seed-{seed}.json"
        bench = SeedBench(config_for_seed(config, seed), seed, ResultCache(cache, settings))
        per_seed[seed] = bench_seed(bench, space, policy, args.lrs, optuna_seed=config.seed)
        print(f"\n== toy world seed {seed} (base model {bench.config.model.path})\n{seed_table(per_seed[seed])}\n", flush=True)
    if len(per_seed) > 1:
        print(f"== mean ± spread (half the range) over seeds {args.seeds}\n{summary_table(per_seed)}\n")
        print(verdict(per_seed))
    print(f"\n[tradeoff] finished in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
