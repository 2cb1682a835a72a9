"""Which run starts next: the tree's own order (`TreeOrder`), or Optuna's (`OptunaOrder`, `strategy: optuna`).

Both are `NodeOrder`s: `next_run(tree)` picks a pending run of the tree's current level, the call the
Ray searcher (`tuning/searcher.py`) and the in-process loop (`core/drive.py`) make alike.

The tree's order: children of the best parent first, then creation order, each node's runs together
(`SearchTree.runnable`).

Optuna's order:

The candidates are every node the search space can reach, flat (`SearchSpace.as_grid`); the
references run first. Each candidate is Optuna's categorical parameters `range` (its layer range or
explicit layers), `modules`, `softmask` and `lr` (its own learning rate, or "candidates" when the
search's learning-rate runs apply). Optuna's multi-objective TPE (maximise Spec and Vers) proposes a
point; the next node is the pending one that matches the proposal on the most parameters (ties: the
parameter listed first, then the earlier node), so a proposal of a node that already ran leads to
its nearest unseen neighbour. A node's learning-rate runs then all start before the next node.
The budget is the tree's `max_trials` (every run a trial, references included).

All state stays in the `SearchTree`: every proposal rebuilds the study from the tree's scored
nodes with a sampler seeded from `seed` and the number of trials started, so a restored search
proposes what the uninterrupted one would have. Pure Python (Optuna, imported when Optuna's order is
used; no Ray, no torch).
"""

from __future__ import annotations

from typing import Protocol

from cofitune_ray.core.node import ModelPart
from cofitune_ray.core.tree import Run, SearchTree, Status, TreeNode


class NodeOrder(Protocol):
    """Picks the next run to start (the tree's own order, or Optuna's)."""

    def next_run(self, tree: SearchTree) -> tuple[TreeNode, Run] | None: ...


class TreeOrder:
    """The tree's order: children of the best parent first, each node's runs together."""

    def next_run(self, tree: SearchTree) -> tuple[TreeNode, Run] | None:
        runnable = tree.runnable()
        return runnable[0] if runnable else None


#: Optuna's parameters for one candidate node, in tie-breaking order.
NODE_PARAMS = ("range", "modules", "softmask", "lr")


def sampler_seed(seed: int, count: int) -> int:
    """The sampler seed after `count` trials: deterministic, and unrelated sequences for different seeds."""
    return seed * 1_000_003 + count


def node_params(part: ModelPart) -> dict[str, str]:
    """A trained node as Optuna's categorical parameters (see NODE_PARAMS)."""
    lo, hi = part.layer_range
    return {
        "range": f"({lo:g},{hi:g}]" if part.layers is None else "layers " + ",".join(map(str, part.layers)),
        "modules": "+".join(part.modules),
        "softmask": "on" if part.softmask else "off",
        "lr": "candidates" if part.lr is None else f"{part.lr:g}",
    }


def closest_node(pending: list[TreeNode], proposal: dict[str, str]) -> TreeNode:
    """The pending node matching `proposal` on the most parameters; ties go to the parameter listed
    first in NODE_PARAMS, then to the earlier node."""

    def match(node: TreeNode) -> tuple:
        same = [node_params(node.part)[p] == proposal[p] for p in NODE_PARAMS]
        return (sum(same), *same)

    return max(pending, key=match)


class OptunaOrder:
    """Picks the next run of a grid tree by Optuna's proposals (a `NodeOrder`).

    seed: the sampler's seed. startup_trials: scored candidates before TPE takes over from random
    proposals (Optuna's `n_startup_trials`).
    """

    def __init__(self, seed: int = 0, startup_trials: int = 10):
        import optuna

        self.seed, self.startup_trials = seed, startup_trials
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # one study per proposal: no "study created" lines

    def next_run(self, tree: SearchTree) -> tuple[TreeNode, Run] | None:
        runnable = tree.runnable()
        if not runnable:
            return None
        if tree.depth == 0:
            return runnable[0]  # the references, in order
        started = [(n, r) for n, r in runnable if n.status == Status.RUNNING]
        if started:
            return started[0]  # finish starting the runs of a node before choosing the next node
        pending = list({n.id: n for n, _ in runnable}.values())
        node = closest_node(pending, self.propose(tree))
        return next((n, r) for n, r in runnable if n is node)

    def propose(self, tree: SearchTree) -> dict[str, str]:
        """Optuna's next proposal, from a study of every scored candidate node of the tree."""
        import optuna
        from optuna.distributions import CategoricalDistribution
        from optuna.samplers import TPESampler
        from optuna.trial import create_trial

        nodes = tree.at_depth(1)
        distributions = {p: CategoricalDistribution(list(dict.fromkeys(node_params(n.part)[p] for n in nodes)))
                         for p in NODE_PARAMS}
        study = optuna.create_study(
            directions=["maximize", "maximize"],
            sampler=TPESampler(n_startup_trials=self.startup_trials,
                               seed=sampler_seed(self.seed, tree.trials_started())),
        )
        for node in tree.scored(include_references=False):
            score = tree.score(node)
            study.add_trial(create_trial(params=node_params(node.part), distributions=distributions,
                                         values=[score.spec, score.vers]))
        return study.ask(distributions).params
