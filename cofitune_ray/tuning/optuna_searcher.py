"""Optuna where it helps: `strategy: optuna` over the node space, and learning-rate tuning of the winners.

`OptunaNodeSearcher` runs the references first, then up to `max_trials` of the nodes the search
space can reach, each at most once, in the order multi-objective TPE (maximise Spec and Vers)
proposes. A node is Optuna's categorical parameters `range` (its layer range or explicit layers),
`modules`, `softmask` and `lr`; the searcher runs the pending node that matches Optuna's proposal
on the most parameters (ties: the parameter listed first, then the space's order), so a proposal
of a node that already ran leads to its nearest unseen neighbour instead of a repeat. Like the
tree's, the budget counts pruned and failed trials; a pruned node is told to Optuna with the score
it was stopped at, a failed one not at all.

`LearningRateTuner` wraps any `TreeSearcher` (tree, grid or optuna): once that search has ended,
it runs `n_trials` learning rates, proposed by TPE over log-uniform [lr_min, lr_max] to maximise
Uni, for each of the best `beam` trained nodes and for the full-SFT reference, so the winner is
compared with an equally tuned full SFT. Each learning rate is a new node (a child of the node
it tunes, with `ModelPart.lr` set) one level below the search's deepest level, in the same tree.

Both keep all of their state in the `SearchTree`: every suggestion rebuilds the Optuna study from
the tree's scored nodes, with a sampler seeded from `seed` and the number of nodes started (or
in the tree, for the tuner). So `save`/`restore` are `TreeSearcher`'s, a restored search
suggests what the uninterrupted one would have, and tree.json, the Pareto front and the ranking
work unchanged.

Wiring: `searcher = OptunaNodeSearcher(space, max_trials=...)` (or a `TreeSearcher`), optionally
`searcher = LearningRateTuner(searcher, n_trials, lr_min, lr_max)`, then
`TuneConfig(search_alg=searcher, scheduler=PromisingChildScheduler(searcher, ...), num_samples=-1)`.
"""

from __future__ import annotations

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.samplers import TPESampler
from optuna.trial import create_trial
from ray.tune.search import Searcher

from cofitune_ray.core.node import ModelPart
from cofitune_ray.core.space import REFERENCE_NODES, SearchSpace, parse_search_space
from cofitune_ray.tuning.searcher import TreeSearcher
from cofitune_ray.core.tree import SearchTree, SelectionPolicy, TreeNode

#: Optuna's parameters for one candidate node, in tie-breaking order.
NODE_PARAMS = ("range", "modules", "softmask", "lr")
#: How often the learning-rate tuner asks again when a proposal rounds to a learning rate already tried.
MAX_LR_ASKS = 100


def sampler_seed(seed: int, count: int) -> int:
    """The sampler seed after `count` nodes: deterministic, and unrelated sequences for different seeds."""
    return seed * 1_000_003 + count


def node_params(spec: ModelPart) -> dict[str, str]:
    """A trained node as Optuna's categorical parameters (see NODE_PARAMS)."""
    lo, hi = spec.layer_range
    return {
        "range": f"({lo:g},{hi:g}]" if spec.layers is None else "layers " + ",".join(map(str, spec.layers)),
        "modules": "+".join(spec.modules),
        "softmask": "on" if spec.softmask else "off",
        "lr": "default" if spec.lr is None else f"{spec.lr:g}",
    }


def candidate_space(space: SearchSpace) -> SearchSpace:
    """A grid space of every node `space` can reach, with the same references: Optuna's candidates."""
    names = {node.key(): name for name, node in REFERENCE_NODES.items()}
    grid = [
        {
            **({"layer_ranges": [list(n.layer_range)]} if n.layers is None else {"layers": [list(n.layers)]}),
            "modules": [list(n.modules)],
            "softmask": [n.softmask],
            "lr": [n.lr],
        }
        for n in space.reachable_nodes()
        if n not in space.references
    ]
    data = {"strategy": "grid", "references": [names[r.key()] for r in space.references], "grid": grid}
    return parse_search_space(data, source=f"{space.source} (every reachable node)")


def closest_node(pending: list[TreeNode], proposal: dict[str, str]) -> TreeNode:
    """The pending node matching `proposal` on the most parameters; ties go to the parameter listed
    first in NODE_PARAMS, then to the earlier node."""

    def match(node: TreeNode) -> tuple:
        same = [node_params(node.part)[p] == proposal[p] for p in NODE_PARAMS]
        return (sum(same), *same)

    return max(pending, key=match)


def is_tuning_node(node: TreeNode) -> bool:
    """Whether a node was added by the learning-rate tuner (a parent but no level; see SearchTree.add_node)."""
    return node.parent is not None and node.level is None


class OptunaNodeSearcher(TreeSearcher):
    """`strategy: optuna`: the references, then `max_trials` candidate nodes chosen by Optuna.

    space: any search space; its reachable nodes are the candidates (`candidate_space`).
    max_trials: candidate nodes to run on top of the references; None runs every candidate.
    seed: the sampler's seed. startup_trials: scored candidates before TPE takes over from random
        proposals (Optuna's `n_startup_trials`).
    """

    def __init__(self, space: SearchSpace, max_trials: int | None = None, seed: int = 0, startup_trials: int = 10):
        candidates = candidate_space(space)
        budget = None if max_trials is None else max_trials + len(candidates.references)
        super().__init__(candidates, SelectionPolicy(max_trials=budget))
        self.seed, self.startup_trials = seed, startup_trials
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # one study per suggestion: no "study created" lines

    def next_node(self) -> TreeNode | None:
        if self.tree.depth == 0 or not self.tree.runnable():
            return super().next_node()  # the references, in order; or nothing left in the budget
        pending = [n for n in self.tree.at_depth(self.tree.depth) if n.status == "pending"]
        return closest_node(pending, self.propose())

    def propose(self) -> dict[str, str]:
        """Optuna's next proposal, from a study of every scored candidate node of the tree."""
        nodes = self.tree.at_depth(1)
        distributions = {p: CategoricalDistribution(list(dict.fromkeys(node_params(n.part)[p] for n in nodes))) for p in NODE_PARAMS}
        study = optuna.create_study(
            directions=["maximize", "maximize"],
            sampler=TPESampler(n_startup_trials=self.startup_trials, seed=sampler_seed(self.seed, self.tree.trials_started())),
        )
        for node in nodes:
            score = node.score()
            if node.status in ("finished", "pruned") and score is not None:
                study.add_trial(create_trial(params=node_params(node.part), distributions=distributions, values=[score.spec, score.vers]))
        return study.ask(distributions).params


class LearningRateTuner(Searcher):
    """Runs a search, then tunes the learning rate of its best nodes and of full SFT with Optuna.

    search: the searcher to run first (its tree receives the tuning nodes).
    n_trials: learning rates per tuned node. lr_min, lr_max: the log-uniform range.
    beam: how many of the best trained nodes (by the tree's ranking) are tuned.
    default_lr: the learning rate nodes without `lr` were trained with (train.lr); when inside the
        range, each tuned node's own result is told to Optuna as the result at that rate.
    seed, startup_trials: as for `OptunaNodeSearcher` (TPE over one parameter needs fewer).
    """

    def __init__(
        self,
        search: TreeSearcher,
        n_trials: int,
        lr_min: float,
        lr_max: float,
        beam: int = 1,
        default_lr: float | None = None,
        seed: int = 0,
        startup_trials: int = 3,
    ):
        if n_trials < 1:
            raise ValueError(f"n_trials {n_trials} must be at least 1")
        if not 0 < lr_min < lr_max:
            raise ValueError(f"the learning-rate range [{lr_min:g}, {lr_max:g}] needs 0 < lr_min < lr_max")
        if beam < 1:
            raise ValueError(f"beam {beam} must be at least 1")
        super().__init__(metric=search.metric, mode=search.mode)
        self.search = search
        self.n_trials, self.beam = n_trials, beam
        self.distributions = {"lr": FloatDistribution(lr_min, lr_max, log=True)}
        self.default_lr, self.seed, self.startup_trials = default_lr, seed, startup_trials
        optuna.logging.set_verbosity(optuna.logging.WARNING)

    @property
    def tree(self) -> SearchTree:
        return self.search.tree

    def targets(self) -> list[TreeNode]:
        """The nodes whose learning rate is tuned: the best `beam` trained nodes of the search, then full SFT."""
        ranked = [n for n in self.tree.ranking(include_references=False) if not is_tuning_node(n)]
        full = [n for n in self.tree.at_depth(0) if n.part.kind == "full" and n.status == "finished"]
        return ranked[: self.beam] + full

    def tuning_nodes(self, target: TreeNode) -> list[TreeNode]:
        """The learning-rate nodes of one target, in the order they were added."""
        return [c for c in map(self.tree.node, target.children) if is_tuning_node(c)]

    def suggest(self, trial_id: str):
        if not self.tree.finished:
            return self.search.suggest(trial_id)
        open_targets = [t for t in self.targets() if len(self.tuning_nodes(t)) < self.n_trials]
        if not open_targets:
            return None if self.tree.in_flight() else Searcher.FINISHED
        target = min(open_targets, key=lambda t: len(self.tuning_nodes(t)))
        depth = 1 + max(n.depth for n in self.tree.nodes.values() if not is_tuning_node(n))
        node = self.tree.add_node(target.part.with_(lr=self.propose(target), label=""), target.id, depth)
        return self.search.start_trial(node, trial_id)

    def propose(self, target: TreeNode) -> float:
        """A learning rate for `target` that no node of the tree has, from a study of its scored ones."""
        study = optuna.create_study(
            direction="maximize",
            sampler=TPESampler(n_startup_trials=self.startup_trials, seed=sampler_seed(self.seed, len(self.tree.nodes))),
        )
        low, high = self.distributions["lr"].low, self.distributions["lr"].high
        points = [(n.part.lr, n) for n in self.tuning_nodes(target)]
        if self.default_lr is not None and low <= self.default_lr <= high:
            points.append((self.default_lr, target))
        for lr, node in points:
            score = node.score()
            if node.status in ("finished", "pruned") and score is not None:
                study.add_trial(create_trial(params={"lr": lr}, distributions=self.distributions, value=score.uni))
        keys = {n.part.key() for n in self.tree.nodes.values()}
        for _ in range(MAX_LR_ASKS):
            # Three significant digits keep node keys readable; the clamp keeps the rounded rate in range.
            lr = min(max(float(f"{study.ask(self.distributions).params['lr']:.3g}"), low), high)
            if target.part.with_(lr=lr).key() not in keys:
                return lr
        raise RuntimeError(f"Optuna proposed no untried learning rate for {target.part.key()} in {MAX_LR_ASKS} asks")

    def node_for_trial(self, trial_id: str) -> TreeNode | None:
        return self.search.node_for_trial(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.search.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.search.on_trial_complete(trial_id, result, error)

    def save(self, checkpoint_path: str) -> None:
        self.search.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.search.restore(checkpoint_path)
