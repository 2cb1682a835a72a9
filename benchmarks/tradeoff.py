"""The speciality-versatility trade-off: what the product's search hands back, against what a user would do instead.

    python benchmarks/tradeoff.py [--config configs/toy.yaml] [--seeds 0 1 2] [--threads 1] [--set KEY=VALUE ...]
    python benchmarks/tradeoff.py --config configs/smollm2.yaml --seeds 0 1 2 --no-grid --set train.max_steps=20 ...

On a toy world a seed is a world: the base model pretrained from that seed, trained with the same seed. On a
real model (`configs/smollm2.yaml`) the model and the world stay fixed and a seed is the training seed: the
data order and LoRA's initialisation. Every method is scored the same way: the search objective
of the config (`search.objective`, default spec_floor: a method qualifies when its speciality gain
reaches `spec_floor` of full SFT's best gain, then more Vers is better), the same per-run step budget
(`train.max_steps`), and the same learning-rate tuning (one run per `search.lr_candidates`, the best
`lr_keep` kept at the first evaluation point, `core/rules.py`). The methods:

  base model        no training;
  full SFT          every parameter (the search's own reference node);
  LoRA (PEFT)       on all seven projections of every layer, rank chosen so it trains about as many
                    parameters as the paper's node;
  top half          the usual "train the top layers" recipe: (50%, 100%] with all projections;
  Spectrum 25%      Spectrum's choice (a reference node `{snr: 25}`): in each module type, the 25% of
                    layers with the highest signal-to-noise ratio of their weights;
  paper node        FFN up+down in (25%, 50%], without and with soft-mask (`train.softmask_mode`);
  WiSE-FT           the full-SFT weights of its kept run interpolated towards the base, alpha 0.25 / 0.5 / 0.75
                    (evaluation only; its cost is full SFT's);
  tree search       the product's search: `SearchTree` over `search.space`, its stop rules, the CLI's tree;
  exhaustive grid   every node the tree could reach, with the same rules;
  Optuna            `OptunaOrder` over the same candidates, with as many trials as the tree ran.
(`--no-grid` leaves out the last two: every node the tree could reach, unaffordable for a real model on a CPU.)

Searches and baselines run in-process through `core.drive.drive` and `training.local.LocalExecutor`
(the same tree, rules and decisions as the Ray path; no Ray start-up per trial). Every run is cached
per config and world in `<cache>/<config name>-<world>-seed-<S>.json`, so the methods share the runs they
have in common; each
method's cost still counts every trial it started and the steps it trained (steps saved by early stops
are not counted).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from cofitune_ray.config import Config, learning_rates, load_config, objective, selection_policy, stop_rules
from cofitune_ray.core.drive import drive
from cofitune_ray.core.node import ALL_MODULES, PAPER_NODE, ModelPart
from cofitune_ray.core.objective import Score
from cofitune_ray.core.order import OptunaOrder
from cofitune_ray.core.settings import SelectionPolicy
from cofitune_ray.core.space import SearchSpace, load_search_space, parse_search_space
from cofitune_ray.core.tree import SearchTree, Status, TreeNode
from cofitune_ray.toyworld.prepare import MARKER, config_for_seed
from cofitune_ray.training.local import LocalExecutor, RunCache
from cofitune_ray.training.model import Architecture, load_model, load_tokenizer
from cofitune_ray.training.softmask.importance import compute_importance, importance_data, importance_settings
from cofitune_ray.training.spectrum import snr_part

TOP_HALF = ModelPart(layer_range=(0.5, 1.0))
#: LoRA runs in the tree as this placeholder part (all layers, all projections), trained by `LoraExecutor`.
LORA_SLOT = ModelPart(layer_range=(0.0, 1.0), modules=ALL_MODULES, label="LoRA")
ALPHAS = (0.25, 0.5, 0.75)
SPECTRUM_PERCENT = 25  # Spectrum's usual share of layers per module type


@dataclass
class MethodResult:
    """What one method hands back on one world: its answer's score, what it is, and what it cost."""

    name: str
    choice: str
    score: Score
    qualifies: bool
    gain_share: float  # speciality gain / full SFT's best gain
    trained_params: int
    trials: int
    train_steps: int
    notes: list[str] = field(default_factory=list)


def method_from_tree(name: str, tree: SearchTree, node: TreeNode | None = None, notes=()) -> MethodResult:
    """A method's result from its tree: `node` (default: the tree's answer) at its best point; cost: the whole tree."""
    node = node or tree.best()
    best, reference = tree.best_point(node), tree.reference()
    if best is None:
        errors = "; ".join(f"{r.id}: {r.stop_reason}" for r in node.runs if r.status == Status.FAILED)
        raise RuntimeError(f"{name}: {node.part.describe()} has no evaluation point ({errors or 'no run trained'})")
    costs = [n.cost() for n in tree.nodes.values()]
    lr = f", lr {best.run.lr:.3g}" if best.run.lr is not None else ""
    return MethodResult(name, f"{node.id} {node.part.describe()}{lr}", best.score,
                        tree.objective.qualifies(best.score, reference), _share(tree, best.score),
                        node.trained_params or 0, sum(c["trials"] for c in costs), sum(c["train_steps"] for c in costs),
                        list(notes))


def _share(tree: SearchTree, score: Score) -> float:
    reference = tree.reference()
    return (score.spec - reference.base_spec) / reference.full_gain if reference.full_gain else float("nan")


class LoraExecutor:
    """The `LORA_SLOT` node trained as LoRA on all projections (PEFT); every other node as usual."""

    def __init__(self, local: LocalExecutor, rank: int):
        self.local, self.rank = local, rank

    def run(self, node: TreeNode, run):
        if node.part.key() != LORA_SLOT.key():
            yield from self.local.run(node, run)
            return
        yield from self.local.results(node.part, run.lr, key_prefix=f"lora r={self.rank}", model_hook=self._wrap)

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        from peft import LoraConfig, get_peft_model

        return get_peft_model(model, LoraConfig(r=self.rank, lora_alpha=2 * self.rank, lora_dropout=0.0,
                                                target_modules=list(ALL_MODULES), task_type="CAUSAL_LM"))


def lora_rank(model: torch.nn.Module, target_params: int) -> int:
    """The LoRA rank on all projections whose parameter count is closest to `target_params`."""
    per_rank = sum(m.in_features + m.out_features for name, m in model.named_modules()
                   if name.rsplit(".", 1)[-1] in ALL_MODULES)
    return max(1, round(target_params / per_rank))


def one_node_space(space: SearchSpace, part: ModelPart) -> SearchSpace:
    """The space's references plus one grid node: a baseline, run with the same learning-rate tuning."""
    refs = [r.kind for r in space.references]  # the reference names are their kinds: base, full
    block = {"layer_ranges": [list(part.layer_range)], "modules": [list(part.modules)], "softmask": [part.softmask]}
    return parse_search_space({"strategy": "grid", "references": refs, "grid": [block]},
                              source=f"baseline {part.describe()}")


def spectrum_result(config: Config, space: SearchSpace, executor, percent: float) -> MethodResult:
    """Spectrum's choice (`{snr: percent}`: the top `percent` of each module type's layers by SNR) as a
    reference node next to the paper node's baseline tree, with the same learning-rate tuning."""
    part = snr_part(config.model.path, percent)
    one = one_node_space(space, PAPER_NODE)
    tree = SearchTree(replace(one, references=one.references + (part,)), SelectionPolicy(), objective(config),
                      learning_rates(config))
    drive(tree, executor, stop_rules(config))
    return node_result(f"Spectrum {percent:g}%", tree, tree.reference_node("snr"))


def node_result(name: str, tree: SearchTree, node: TreeNode) -> MethodResult:
    """One node of a tree as a method on its own: its best point, and only its own runs as cost."""
    result = method_from_tree(name, tree, node)
    cost = node.cost()
    result.trials, result.train_steps = cost["trials"], cost["train_steps"]
    return result


def run_baseline(name: str, config: Config, space: SearchSpace, part: ModelPart, executor) -> MethodResult:
    """A node a user would pick by hand, with the search's learning-rate tuning and objective (the references
    are every method's shared reference, not part of the baseline's cost)."""
    tree = SearchTree(one_node_space(space, part), SelectionPolicy(), objective(config), learning_rates(config))
    drive(tree, executor, stop_rules(config))
    return node_result(name, tree, tree.at_depth(1)[0])


def wise_ft(config: Config, tree: SearchTree, executor: LocalExecutor, cache: RunCache) -> MethodResult:
    """Full SFT's kept run, its final weights interpolated towards the base model; the best alpha by the objective."""
    full = tree.reference_node("full")
    run = tree.best_point(full).run
    key = f"wise-ft|lr={run.lr:g}"
    points = cache.get(key)
    if points is None:
        base = load_model(config.model.path).state_dict()
        tuned = {k: v.cpu() for k, v in executor.trained_model(full.part, run.lr).state_dict().items()}
        model = load_model(config.model.path)
        points = []
        for alpha in ALPHAS:
            model.load_state_dict({k: base[k] + alpha * (tuned[k] - base[k]) for k in base})
            metrics = executor.evaluator.evaluate(model.to(executor.device))
            model.cpu()
            points.append({"alpha": alpha, "spec": metrics["spec"], "vers": metrics["vers"], "uni": metrics["uni"]})
        cache.put(key, points)
    reference = tree.reference()
    best = max(points, key=lambda p: tree.objective.value(Score(p["spec"], p["vers"], p["uni"]), reference))
    score = Score(best["spec"], best["vers"], best["uni"])
    cost = full.cost()
    return MethodResult("WiSE-FT", f"full SFT lr {run.lr:.3g} x alpha {best['alpha']:g}", score,
                        tree.objective.qualifies(score, reference), _share(tree, score), full.trained_params or 0,
                        cost["trials"], cost["train_steps"])


def bench_world(config: Config, world: str, seed: int, cache_dir: Path, device: str = "cpu",
                grid: bool = True) -> list[MethodResult]:
    """Every method on one world, in table order (without the grid and Optuna when `grid` is false)."""
    space = load_search_space(config.search.space)
    cache = RunCache(cache_dir / f"{config.name}-{world}-seed-{seed}.json",
                     {"config": config.to_dict(), "device": torch.device(device).type, "format": 1})
    tokenizer = load_tokenizer(config.model.tokenizer or config.model.path)
    model = load_model(config.model.path)
    arch = Architecture.from_config(model.config)
    importance, _ = compute_importance(model, arch, tokenizer, importance_data(config), importance_settings(config))
    local = LocalExecutor(config, importance, cache, device)
    rules, obj, rates = stop_rules(config), objective(config), learning_rates(config)

    tree = drive(SearchTree(space, selection_policy(config), obj, rates), local, rules)
    methods = [node_result("base model", tree, tree.reference_node("base")),
               node_result("full SFT", tree, tree.reference_node("full"))]
    paper_params = sum(p.numel() for n, p in model.named_parameters()
                       if any(f"layers.{i}.mlp.{m}." in n for i in PAPER_NODE.layer_indices(arch.num_layers)
                              for m in PAPER_NODE.modules))
    rank = lora_rank(model, paper_params)
    methods.append(run_baseline(f"LoRA r={rank}", config, space, LORA_SLOT, LoraExecutor(local, rank)))
    methods.append(run_baseline("top half", config, space, TOP_HALF, local))
    methods.append(spectrum_result(config, space, local, SPECTRUM_PERCENT))
    methods.append(run_baseline("paper node", config, space, PAPER_NODE, local))
    methods.append(run_baseline("  + soft-mask", config, space, PAPER_NODE.with_(softmask=True), local))
    methods.append(wise_ft(config, tree, local, cache))
    trials = tree.trials_started()
    methods.append(method_from_tree("tree search", tree, notes=[f"tree search ended: {tree.end_reason}"]))
    if not grid:
        return methods
    grid = drive(SearchTree(space.as_grid(), SelectionPolicy(), obj, rates), local, rules)
    methods.append(method_from_tree("exhaustive grid", grid))
    optuna = drive(SearchTree(space.as_grid(), SelectionPolicy(max_trials=trials), obj, rates), local, rules,
                   order=OptunaOrder(seed=config.seed))
    methods.append(method_from_tree(f"Optuna ({trials} trials)", optuna))
    return methods


COLUMNS = ("Spec", "Vers", "gain", "floor", "trained", "trials", "steps")


def world_table(methods: list[MethodResult]) -> str:
    rows = [(m.name, [f"{m.score.spec:.3f}", f"{m.score.vers:.3f}", f"{m.gain_share:.2f}",
                      "yes" if m.qualifies else "no",
                      f"{m.trained_params:,}", str(m.trials), f"{m.train_steps:,}"], m.choice) for m in methods]
    notes = [n for m in methods for n in m.notes]
    return format_table(rows) + "".join(f"\n{n}" for n in notes)


def summary_table(per_world: dict[str, list[MethodResult]]) -> str:
    """Per method: mean ± standard deviation over worlds of Spec, Vers and the gain share; qualifying worlds; cost."""
    worlds = list(per_world)
    rows = []
    for i, first in enumerate(per_world[worlds[0]]):
        ms = [per_world[w][i] for w in worlds]
        cells = [_mean_sd([m.score.spec for m in ms]), _mean_sd([m.score.vers for m in ms]),
                 _mean_sd([m.gain_share for m in ms]), f"{sum(m.qualifies for m in ms)}/{len(ms)}",
                 f"{statistics.mean(m.trained_params for m in ms):,.0f}",
                 f"{statistics.mean(m.trials for m in ms):.1f}",
                 f"{statistics.mean(m.train_steps for m in ms):,.0f}"]
        rows.append((first.name.split(" (")[0].split(" r=")[0], cells, ""))
    return format_table(rows)


def verdict(per_world: dict[str, list[MethodResult]]) -> str:
    """The acceptance questions answered from the numbers: Vers at the floor against the best baseline, and cost."""
    def pick(name, ms):
        return next(m for m in ms if m.name.startswith(name))

    lines = []
    baselines = ("full SFT", "LoRA", "top half", "Spectrum", "paper node", "  + soft-mask", "WiSE-FT")
    tree_steps, grid_steps = [], []
    for world, ms in per_world.items():
        tree = pick("tree search", ms)
        qualifying = [m for m in ms if m.name.startswith(baselines) and m.qualifies]
        best = max(qualifying, key=lambda m: m.score.vers) if qualifying else None
        tree_steps.append(tree.train_steps)
        grid_steps.append(next((m.train_steps for m in ms if m.name == "exhaustive grid"), 0))
        if not tree.qualifies:
            lines.append(f"{world}: the tree's answer does not qualify "
                         f"({tree.choice}, gain share {tree.gain_share:.2f})")
        elif best is None:
            lines.append(f"{world}: no baseline qualifies; the tree's answer keeps Vers {tree.score.vers:.3f}")
        else:
            lines.append(f"{world}: tree Vers {tree.score.vers:.3f} vs best qualifying baseline {best.name.strip()} "
                         f"{best.score.vers:.3f} ({tree.score.vers - best.score.vers:+.3f})")
    if not any(grid_steps):
        return "\n".join(lines)
    ratio = statistics.mean(tree_steps) / statistics.mean(grid_steps)
    lines.append(f"tree steps {statistics.mean(tree_steps):,.0f} vs grid steps {statistics.mean(grid_steps):,.0f}: "
                 f"ratio {ratio:.2f} -> {'at most' if ratio <= 0.5 else 'MORE than'} half")
    return "\n".join(lines)


def format_table(rows: list[tuple[str, list[str], str]]) -> str:
    """A fixed-width table: method, the COLUMNS, then what the method chose."""
    widths = [max(len(r[0]) for r in rows + [("method", [], "")])] + [
        max(len(c), *(len(r[1][i]) for r in rows)) for i, c in enumerate(COLUMNS)]
    header = ["method".ljust(widths[0])] + [c.rjust(w) for c, w in zip(COLUMNS, widths[1:])] + ["choice"]
    lines = ["  ".join(header)]
    for name, cells, choice in rows:
        lines.append("  ".join([name.ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells, widths[1:])] + [choice]))
    return "\n".join(lines)


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f}±{sd:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/toy.yaml",
                        help="a toy-world config (configs/toy.yaml, configs/toy-hard.yaml)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="seeds: of the toy world and its training, or of a real model's training")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override, as the search's key=value (a reduced budget: train.max_steps=20)")
    parser.add_argument("--no-grid", action="store_true",
                        help="leave out the exhaustive grid and Optuna (every node the tree could reach)")
    parser.add_argument("--cache", default="runs/tradeoff",
                        help="folder of the run caches (one JSON file per config and world)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 per process on a shared 2-core machine)")
    parser.add_argument("--device", default="cpu",
                        help="where runs train and are evaluated: cpu or cuda (float32 either way, as the "
                             "toy worlds were calibrated; the caches of the two are kept apart)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(args.config, args.overrides)
    config = replace(config, train=replace(config.train, bf16="off"))
    t = config.train
    print(f"[tradeoff] {args.config}: {t.max_steps} steps per run (batch {t.batch_size}), evaluation every "
          f"{config.eval.every_n_steps} steps on {config.data.max_eval_examples or 'all'} examples per set; "
          f"objective {config.search.objective}; learning rates {learning_rates(config).candidates}; "
          f"{args.threads} thread(s), {args.device}, float32; no Ray", flush=True)
    started = time.time()
    per_world = {}
    toy = (Path(config.model.path).parent / MARKER).is_file()
    world = Path(config.model.path).parent.parent.name if toy else config.name  # <toy worlds>/<world>/seed-<S>/model
    for seed in args.seeds:
        seeded = config_for_seed(config, seed) if toy else replace(config, seed=seed)
        name = f"{world} seed {seed}"
        per_world[name] = bench_world(seeded, world, seed, Path(args.cache), args.device, grid=not args.no_grid)
        print(f"\n== {name} (base model {seeded.model.path})\n{world_table(per_world[name])}\n", flush=True)
    if len(per_world) > 1:
        print(f"== mean ± sd over {', '.join(per_world)}\n{summary_table(per_world)}\n")
    print(verdict(per_world))
    print(f"\n[tradeoff] finished in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
