"""What a whole search trains, before it runs: its runs and steps as bounds, its wall time and GPU time.

Pure Python (no torch, no Ray). The search's shape depends on scores nobody knows yet, so the
figures are bounds (`core/tree.py` and `core/rules.py` are the rules they follow):

  nodes   the tree trains the references and level 1 at least (the search ends when no level-1 node
          is promising); at most, the costliest branch the space and the beam allow: at every level
          the `beam_width` promising nodes (any number of them when `epsilon` > 0) whose subtrees
          cost most, children already in the tree not trained twice (nodes that tie exactly are all
          promising: the bound leaves such ties out). A grid trains every reachable
          node; a full-SFT sweep only full SFT.
  runs    every trained node runs once per learning-rate candidate (one run for a node with its own
          lr), the base model once (evaluation only).
  steps   the runs beyond `lr_keep` stop at the rung (the first evaluation point: a run waits there
          for its node's verdict); high: every kept run trains to the end; low: every kept run is
          stopped at the first evaluation point a stop rule may judge (`min_evals` for the vers and
          uni rules, `prune_after` of the steps for the floor rule). Full SFT, the yardstick, trains
          every run to the end; other references are halved but never pruned.

`SearchCost` puts times on a shape: levels run one after another (a level is expanded once the
one above has ended), and inside a level the runs start in the tree's order on `slots` concurrent
trials, each on `gpus_per_trial` GPUs, each run starting on the first slot free (Tune's FIFO over
`max_concurrent_trials`). GPU time is the sum of the runs' seconds times their GPUs.
"""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass
from typing import Callable

from cofitune_ray.core.node import FULL_SFT_PART, ModelPart
from cofitune_ray.core.settings import LearningRates, SelectionPolicy, StopRules
from cofitune_ray.core.space import SearchSpace


@dataclass(frozen=True)
class RunSchedule:
    """The evaluation points of one run: the steps at which it is evaluated, the last one its end."""

    points: tuple[int, ...]

    @classmethod
    def of(cls, total_steps: int, every_n_steps: int | None, steps_per_epoch: int, at_epoch_end: bool) -> "RunSchedule":
        """The points `training/loop.py` evaluates at: every `every_n_steps`, each epoch's end, and the last step."""
        points = {total_steps}
        for step in range(1, total_steps + 1):
            if (every_n_steps and step % every_n_steps == 0) or (at_epoch_end and step % steps_per_epoch == 0):
                points.add(step)
        return cls(tuple(sorted(points)))

    @property
    def total_steps(self) -> int:
        return self.points[-1]

    def earliest_stop(self, rules: StopRules, kept: bool) -> int:
        """Index (0-based) of the first evaluation point at which a run can be stopped, or the last point.

        A run beyond `lr_keep` is stopped at the rung (the first point); a kept run at the first point
        before its end that a stop rule may judge.
        """
        last = len(self.points) - 1
        if not kept:
            return 0 if last > 0 else last
        candidates = []
        if rules.vers_margin is not None or rules.uni_margin is not None:
            candidates.append(rules.min_evals - 1)
        if rules.prune_after is not None:
            candidates.append(next((i for i, s in enumerate(self.points) if s / self.total_steps >= rules.prune_after),
                                   last))
        return min([min(c, last) for c in candidates] or [last])


@dataclass(frozen=True)
class Run:
    """One learning-rate run of a node as the bounds see it: the steps it trains and the points it reaches."""

    part: ModelPart
    steps: int
    points: int


def node_runs(part: ModelPart, rates: LearningRates, schedule: RunSchedule, rules: StopRules,
              pruned: bool) -> list[Run]:
    """The runs of one node. The runs beyond `lr_keep` stop at the rung (a run waits there for its node's
    verdict); with `pruned` each kept run also stops at the first point a stop rule may judge (the low bound)."""
    if not part.trains:
        return [Run(part, 0, 1)]
    count = len(rates.for_node(part.lr))
    last = len(schedule.points) - 1
    runs = []
    for i in range(count):
        kept = i < rates.keep
        if part.kind == "full" or (kept and not pruned) or (kept and part.kind == "snr"):
            index = last  # full SFT trains every rate to the end; a reference is never pruned
        else:
            index = schedule.earliest_stop(rules, kept)
        runs.append(Run(part, schedule.points[index], index + 1))
    return runs


@dataclass(frozen=True)
class SearchShape:
    """The nodes a search trains, level by level (level 0: the references)."""

    name: str
    levels: tuple[tuple[ModelPart, ...], ...]

    @property
    def nodes(self) -> int:
        return sum(len(level) for level in self.levels)


def grid_shape(space: SearchSpace) -> SearchShape:
    """The exhaustive grid: the references, then every node the space can reach, in one level."""
    nodes = [n for n in space.reachable_nodes() if n not in space.references]
    return SearchShape("exhaustive grid", (tuple(space.references), tuple(nodes)))


def sweep_shape() -> SearchShape:
    """Full SFT alone, at every learning-rate candidate: what a user tunes without a search."""
    return SearchShape("full-SFT lr sweep", ((FULL_SFT_PART,),))


def tree_shapes(space: SearchSpace, policy: SelectionPolicy,
                node_cost: Callable[[ModelPart], float]) -> tuple[SearchShape, SearchShape]:
    """(fewest, costliest): the tree ending after level 1, and the branch of largest total `node_cost`."""
    if space.strategy == "grid":
        grid = grid_shape(space)
        return SearchShape("tree (fewest nodes)", grid.levels), SearchShape("tree (most nodes)", grid.levels)
    level, first = space.first_candidates()
    references = tuple(space.references)
    known = frozenset(n.key() for n in references) | {n.key() for n in first}
    frontier = tuple((level, n) for n in first)
    _, deeper = _costliest(space, policy, node_cost, frontier, known, depth=1)
    fewest = (references, tuple(first))
    return (SearchShape("tree (fewest nodes)", fewest),
            SearchShape("tree (most nodes)", fewest + tuple(deeper)))


def _costliest(space: SearchSpace, policy: SelectionPolicy, node_cost: Callable[[ModelPart], float],
               frontier: tuple, known: frozenset, depth: int) -> tuple[float, list[tuple[ModelPart, ...]]]:
    """The costliest continuation below `frontier` (a level's nodes, each with the level that made it)."""
    if policy.max_depth is not None and depth >= policy.max_depth:
        return 0.0, []
    width = len(frontier) if policy.epsilon > 0 else min(policy.beam_width, len(frontier))
    best: tuple[float, list[tuple[ModelPart, ...]]] = (0.0, [])
    for size in range(1, width + 1):
        for promising in itertools.combinations(frontier, size):
            children, seen = [], set(known)
            for level, node in promising:
                if level is None:
                    continue
                next_level, parts = space.expand(node, level)
                for part in parts:
                    if part.key() not in seen:
                        seen.add(part.key())
                        children.append((next_level, part))
            if not children:
                continue
            below, levels = _costliest(space, policy, node_cost, tuple(children), frozenset(seen), depth + 1)
            cost = sum(node_cost(part) for _, part in children) + below
            if cost > best[0]:
                best = (cost, [tuple(part for _, part in children)] + levels)
    return best


@dataclass(frozen=True)
class SearchCost:
    """A search shape's runs, steps and times on a cluster, at one bound (`pruned`: the low one)."""

    shape: SearchShape
    runs: tuple[tuple[Run, ...], ...]  # per level
    seconds: tuple[tuple[float, ...], ...]  # per level, each run's seconds
    slots: int
    gpus_per_trial: float

    @classmethod
    def of(cls, shape: SearchShape, rates: LearningRates, schedule: RunSchedule, rules: StopRules,
           pruned: bool, run_seconds: Callable[[Run], float], slots: int, gpus_per_trial: float,
           max_trials: int | None = None) -> "SearchCost":
        """The runs of every node of `shape`, cut at `max_trials`, timed by `run_seconds`."""
        if slots < 1:
            raise ValueError(f"a search needs at least one trial slot, got {slots}")
        levels, budget = [], max_trials if max_trials is not None else math.inf
        for level in shape.levels:
            runs = [r for part in level for r in node_runs(part, rates, schedule, rules, pruned)]
            runs = runs[: max(0, int(min(budget, len(runs))))]
            budget -= len(runs)
            if runs:
                levels.append(tuple(runs))
        seconds = tuple(tuple(run_seconds(r) for r in level) for level in levels)
        return cls(shape, tuple(levels), seconds, slots, gpus_per_trial)

    @property
    def trials(self) -> int:
        return sum(len(level) for level in self.runs)

    @property
    def steps(self) -> int:
        return sum(r.steps for level in self.runs for r in level)

    @property
    def wall_s(self) -> float:
        """Levels one after another; inside a level each run on the first slot free, in order."""
        return sum(makespan(level, self.slots) for level in self.seconds)

    @property
    def gpu_s(self) -> float:
        """Seconds of every run times the GPUs (or CPUs) it holds."""
        return sum(sum(level) for level in self.seconds) * self.gpus_per_trial


def makespan(durations: tuple[float, ...] | list[float], slots: int) -> float:
    """When the last of `durations` ends, started in order, each on the first of `slots` free."""
    free = [0.0] * min(slots, max(1, len(durations)))
    for d in durations:
        start = heapq.heappop(free)
        heapq.heappush(free, start + d)
    return max(free) if durations else 0.0
