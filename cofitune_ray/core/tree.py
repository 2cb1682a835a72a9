"""The CoFiTune search tree: nodes and their learning-rate runs, expansion, selection, ranking, Pareto front.

Pure Python (no Ray, no torch). The tree advances one level at a time:
  level 0  the references (base model, full SFT) of the search space;
  level 1  the root's first children (tree space) or every grid node (grid space);
  level d  the children of the promising nodes of level d-1, made by the space's next rule.
A level is expanded once every node of the level above has ended (finished, pruned, failed).

Runs. A trained node without its own `lr` is run once per candidate learning rate
(`LearningRates`), each run one Tune trial; the base model has one run (evaluation only). The runs
of a trained node are compared at their first evaluation point (the *rung*): the best `keep` of them
are the node's *kept* runs, the scheduler stops the others there (core/rules.py). A run that reaches
the rung before its node's verdict is known *waits* there, without training, until every run of the
node has reached the rung (or failed) and the reference is final: what a run trains never depends on
when its siblings ran, so the same config, seed and data give the same tree at any concurrency. Under spec_floor
they are compared on what they project to (`Objective.rung_value`: the gain so far, extended linearly
to the end of the run, decides whether a run qualifies; then Vers), not on the gain reached so far,
which would always favour the fastest rate.
Full SFT is never compared at the rung: every one of its runs trains to the end and is kept,
because its best gain is the yardstick of the objective, and a user tuning full SFT would judge its
learning rates at the end of the budget (a rate ahead at the rung is not always ahead at the end).
A node's score is the best evaluation point of its kept runs under the objective
(core/objective.py); the objective compares gains with the reference: the base model's Spec and the
best Spec full SFT reached.

Promising nodes of a level (`SelectionPolicy`): nodes that beat their parent under the objective by
more than `min_gain` (level-1 nodes have no trained parent) and, under spec_floor, qualify, or gain
speciality while no trained node qualifies yet; of these the best `beam_width` (ties: fewer trained
parameters), plus any within `epsilon` of the best. The search ends when no node is promising, no rule
applies, `max_depth` is reached, or `max_trials` trials have started.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

from cofitune_ray.core.files import write_whole
from cofitune_ray.core.node import ModelPart
from cofitune_ray.core.objective import Objective, Reference, Score, reference_from
from cofitune_ray.core.settings import LearningRates, SelectionPolicy
from cofitune_ray.core.space import SearchSpace, parse_search_space


class Status(str, Enum):
    """What state a node or a run is in; saved in tree.json as its value ("finished", ...).

    pending: waiting to run; running; finished: ran to the end; stopped (runs only): lost the
    learning-rate comparison at the rung; pruned: stopped by a stop rule (a node: its best kept run
    was; see stop_reason); failed: no kept run produced a score; not_expanded: never run because the
    search ended (trial budget) first.
    """

    PENDING = "pending"
    RUNNING = "running"
    FINISHED = "finished"
    STOPPED = "stopped"
    PRUNED = "pruned"
    FAILED = "failed"
    NOT_EXPANDED = "not_expanded"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    __hash__ = str.__hash__  # a member and its value are one key: tree.json's strings find the members


#: A node's statuses once it has ended, and a run's.
ENDED = (Status.FINISHED, Status.PRUNED, Status.FAILED, Status.NOT_EXPANDED)
RUN_ENDED = (Status.FINISHED, Status.STOPPED, Status.PRUNED, Status.FAILED, Status.NOT_EXPANDED)
#: A run the scheduler stopped early: at the rung (stopped) or by a stop rule (pruned).
STOPPED_EARLY = (Status.STOPPED, Status.PRUNED)

#: Keys of one evaluation point kept in a run's history (the metric contract in docs/architecture.md).
EVAL_KEYS = ("eval_index", "spec", "vers", "uni", "spec_rel", "vers_rel", "step", "epoch", "train_loss")
#: The evaluation point at which the runs of a node are compared.
RUNG = 1


@dataclass
class Run:
    """One learning-rate run of a node (one Tune trial) and what it produced.

    history: one dict per evaluation point (EVAL_KEYS, plus `set_scores`: each eval set's score).
    checkpoints: eval_index (as text) -> the delta checkpoint directory of that point (until deleted).
    total_steps: the optimizer steps the run was planned for; train_steps: the steps it trained.
    """

    id: str
    lr: float | None
    status: Status = Status.PENDING
    stop_reason: str | None = None
    trial_id: str | None = None
    history: list[dict] = field(default_factory=list)
    checkpoints: dict[str, str] = field(default_factory=dict)
    total_steps: int | None = None
    train_steps: int = 0
    wall_time_s: float = 0.0

    @property
    def ended(self) -> bool:
        return self.status in RUN_ENDED

    def rung_point(self) -> dict | None:
        """The evaluation point the runs of a node are compared at, once reported."""
        return next((p for p in self.history if p["eval_index"] == RUNG), None)

    def rung_done(self) -> float:
        """The share of its planned steps the run had trained at its rung point (1.0 when unknown)."""
        point = self.rung_point()
        return point["step"] / self.total_steps if point and point.get("step") and self.total_steps else 1.0

    def steps_saved(self) -> int:
        """Planned steps this run did not train because it was stopped early."""
        if self.status not in STOPPED_EARLY or self.total_steps is None:
            return 0
        return max(0, self.total_steps - self.train_steps)


@dataclass
class TreeNode:
    """One node of the search (a part of the model to train) and its runs."""

    id: str
    part: ModelPart
    parent: str | None
    depth: int
    level: int | None  # index of the space level whose rule made it; None for references and grid nodes
    runs: list[Run] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    status: Status = Status.PENDING
    stop_reason: str | None = None  # why the node was pruned or failed
    trained_params: int | None = None
    promising: bool = False  # selected at its level (and expanded, where a later rule applies)

    @property
    def is_reference(self) -> bool:
        return self.depth == 0

    @property
    def is_yardstick(self) -> bool:
        """Whether this is full SFT, whose best gain the objective measures nodes against: its runs are
        never compared at the rung, every one trains to the end and is kept."""
        return self.part.kind == "full"

    def run(self, run_id: str) -> Run:
        return next(r for r in self.runs if r.id == run_id)

    def cost(self) -> dict:
        """Every run counts: trials started, optimizer steps trained, steps saved by early stops, wall time."""
        started = [r for r in self.runs if r.status not in (Status.PENDING, Status.NOT_EXPANDED)]
        return {
            "trials": len(started),
            "train_steps": sum(r.train_steps for r in started),
            "steps_saved": sum(r.steps_saved() for r in started),
            "wall_time_s": sum(r.wall_time_s for r in started),
        }

    def to_dict(self) -> dict:
        data = asdict(self)
        data["part"] = self.part.to_dict()
        data["key"] = self.part.key()
        data["cost"] = self.cost()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "TreeNode":
        data = {k: v for k, v in data.items() if k not in ("key", "cost", "score")}
        runs = [Run(**{**r, "status": Status(r["status"])}) for r in data.pop("runs")]
        return cls(**{**data, "part": ModelPart.from_dict(data["part"]), "runs": runs,
                      "status": Status(data["status"])})


@dataclass(frozen=True)
class BestPoint:
    """A node's best evaluation point: which run, which point, its score and checkpoint."""

    run: Run
    point: dict
    score: Score

    @property
    def checkpoint(self) -> str | None:
        return self.run.checkpoints.get(str(self.point["eval_index"]))


class SearchTree:
    """The state of one search: every node and run, the level being run, and why the search ended."""

    def __init__(self, space: SearchSpace, policy: SelectionPolicy | None = None,
                 objective: Objective | None = None, learning_rates: LearningRates | None = None):
        self.space = space
        self.policy = policy or SelectionPolicy()
        self.objective = objective or Objective()
        self.learning_rates = learning_rates or LearningRates()
        self.nodes: dict[str, TreeNode] = {}
        self._run_nodes: dict[str, str] = {}  # run id -> its node's id (a run id is a name, never parsed)
        self.depth = 0
        self.end_reason: str | None = None
        for part in space.references:
            self._add(part, parent=None, depth=0, level=None)
        self._advance()

    # ---- queries -------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        """True once the search has ended (`end_reason` says why)."""
        return self.end_reason is not None

    def node(self, node_id: str) -> TreeNode:
        return self.nodes[node_id]

    def node_of_run(self, run_id: str) -> TreeNode:
        return self.nodes[self._run_nodes[run_id]]

    def run(self, run_id: str) -> Run:
        return self.node_of_run(run_id).run(run_id)

    def at_depth(self, depth: int) -> list[TreeNode]:
        return [n for n in self.nodes.values() if n.depth == depth]

    def reference_node(self, kind: str) -> TreeNode | None:
        """The reference node of a kind ("base" or "full"), if the space has one."""
        return next((n for n in self.at_depth(0) if n.part.kind == kind), None)

    def reference(self) -> Reference:
        """The base model's Spec and the best Spec full SFT has reached so far (every run, every point)."""
        base, full = self.reference_node("base"), self.reference_node("full")
        base_points = [p for r in base.runs for p in r.history] if base else []
        full_specs = [p["spec"] for r in full.runs for p in r.history] if full else []
        return reference_from(base_points[0]["spec"] if base_points else None, full_specs)

    def reference_final(self) -> bool:
        """Whether the reference can no longer change (the base model and full SFT have ended)."""
        return all(n.status in ENDED for n in (self.reference_node("base"), self.reference_node("full")) if n)

    def point_score(self, point: dict) -> Score:
        return Score(point["spec"], point["vers"], point["uni"])

    def point_value(self, point: dict, reference: Reference | None = None) -> tuple[int, float]:
        return self.objective.value(self.point_score(point), reference or self.reference())

    def kept_runs(self, node: TreeNode, reference: Reference | None = None) -> list[Run]:
        """The runs of a node that won the comparison at the rung (all of them when there are few enough,
        and every run of full SFT).

        Runs are ordered by their rung point under the objective (ties: the earlier run); failed runs
        and runs without a rung point are never kept.
        """
        reference = reference or self.reference()
        candidates = [r for r in node.runs if r.status != Status.FAILED and r.rung_point() is not None]
        ranked = sorted(candidates, key=lambda r: self._rung_key(node, r, reference))
        return ranked if node.is_yardstick else ranked[: self.learning_rates.keep]

    def best_point(self, node: TreeNode, reference: Reference | None = None) -> BestPoint | None:
        """The node's best evaluation point over its kept runs (ties: the earlier point)."""
        reference = reference or self.reference()
        best = None
        for run in self.kept_runs(node, reference):
            for point in run.history:
                value = self.point_value(point, reference)
                if best is None or value > best[0]:
                    best = (value, run, point)
        return BestPoint(best[1], best[2], self.point_score(best[2])) if best else None

    def score(self, node: TreeNode) -> Score | None:
        """The node's score: its best point's Spec, Vers and Uni (None before any evaluation)."""
        best = self.best_point(node)
        return best.score if best else None

    def qualifies(self, node: TreeNode) -> bool:
        score = self.score(node)
        return score is not None and self.objective.qualifies(score, self.reference())

    def compared_at_rung(self, node: TreeNode) -> bool:
        """Whether the node's runs are compared at the rung (more runs than `keep`; never full SFT's)."""
        return not node.is_yardstick and len(node.runs) > self.learning_rates.keep

    def rung_decided(self, node: TreeNode) -> bool:
        """Whether the rung's verdict on the node is known: the reference is final, and every run of the node
        that will run has reported its rung point or ended (a run the trial budget never starts does not count)."""
        if not self.reference_final():
            return False
        startable = {r.id for _, r in self.runnable()}
        return all(r.rung_point() is not None or r.ended or (r.status == Status.PENDING and r.id not in startable)
                   for r in node.runs)

    def waits_at_rung(self, run_id: str) -> bool:
        """Whether a running run has reached the rung and must wait there, without training, for its node's
        verdict (a run whose rung point is its last has nothing left to train and does not wait)."""
        node, run = self.node_of_run(run_id), self.run(run_id)
        return (run.status == Status.RUNNING and bool(run.history) and run.history[-1]["eval_index"] == RUNG
                and run.rung_done() < 1 and self.compared_at_rung(node) and not self.rung_decided(node))

    def runnable(self) -> list[tuple[TreeNode, Run]]:
        """Pending runs of the current level that the trial budget allows: best parent first, then
        creation order, each node's runs together."""
        nodes = sorted((n for n in self.at_depth(self.depth) if n.status in (Status.PENDING, Status.RUNNING)),
                       key=self.run_priority)
        pending = [(n, r) for n in nodes for r in n.runs if r.status == Status.PENDING]
        budget = self.policy.max_trials
        if budget is not None:
            pending = pending[: max(0, budget - self.trials_started())]
        return pending

    def run_priority(self, node: TreeNode) -> tuple:
        """Sort key for running pending nodes: children of the best parent first, then creation order."""
        parent = self.nodes[node.parent] if node.parent else None
        return (self._rank_key(parent) if parent and self.score(parent) else (0,), int(node.id[1:]))

    def in_flight(self) -> list[Run]:
        return [r for n in self.nodes.values() for r in n.runs if r.status == Status.RUNNING]

    def trials_started(self) -> int:
        return sum(r.status not in (Status.PENDING, Status.NOT_EXPANDED) for n in self.nodes.values() for r in n.runs)

    def scored(self, include_references: bool = True) -> list[TreeNode]:
        """Nodes with a score that have ended (finished or pruned)."""
        nodes = [n for n in self.nodes.values()
                 if n.status in (Status.FINISHED, Status.PRUNED) and self.score(n) is not None]
        return [n for n in nodes if include_references or not n.is_reference]

    def ranking(self, include_references: bool = True) -> list[TreeNode]:
        """Scored nodes, best first under the objective; ties: fewer trained parameters, then creation order."""
        return sorted(self.scored(include_references), key=self._rank_key)

    def best(self) -> TreeNode | None:
        """The search's answer: the best scored node, references included (full SFT when nothing beats it)."""
        ranked = self.ranking()
        return ranked[0] if ranked else None

    def incumbent(self, depth: int) -> TreeNode | None:
        """The node a running node of `depth` must beat: the best scored node of the levels above it (under
        spec_floor, a qualifying one). Those levels have ended, so it does not depend on which nodes of the
        node's own level happened to end first."""
        ranked = [n for n in self.ranking() if n.depth < depth]
        return ranked[0] if ranked and self.qualifies(ranked[0]) else None

    def pareto_front(self) -> list[TreeNode]:
        """Scored nodes that no other scored node beats on both Spec and Vers, by Spec descending."""
        nodes = self.scored()
        scores = {n.id: self.score(n) for n in nodes}
        front = [n for n in nodes if not any(_dominates(scores[o.id], scores[n.id]) for o in nodes if o is not n)]
        return sorted(front, key=lambda n: (-scores[n.id].spec, -scores[n.id].vers))

    def select_promising(self, depth: int) -> list[TreeNode]:
        """The nodes of `depth` worth expanding (see the module docstring)."""
        reference = self.reference()
        any_qualifies = any(self.qualifies(n) for n in self.scored(include_references=False))
        eligible = [
            n for n in self.ranking()
            if n.depth == depth and n.status == Status.FINISHED
            and (self.qualifies(n) or not any_qualifies) and self._beats_parent(n, reference)
        ]
        if not eligible:
            return []
        best_value = self.objective.value(self.score(eligible[0]), reference)
        return [
            n for i, n in enumerate(eligible)
            if i < self.policy.beam_width
            or _within(self.objective.value(self.score(n), reference), best_value, self.policy.epsilon)
        ]

    def steps_saved(self) -> int:
        return sum(n.cost()["steps_saved"] for n in self.nodes.values())

    def disposable_checkpoints(self) -> list[str]:
        """Checkpoints no ranking can need any more: on nodes of ended levels, all but each node's best point.

        A level has ended once the tree is deeper (or the search has ended), and the reference is final then.
        """
        if not self.reference_final():
            return []
        reference = self.reference()
        paths = []
        for node in self.nodes.values():
            if node.depth >= self.depth and not self.finished:
                continue
            best = self.best_point(node, reference)
            keep = best.checkpoint if best else None
            paths += [path for run in node.runs for path in run.checkpoints.values() if path != keep]
        return paths

    def forget_checkpoints(self, paths: list[str]) -> None:
        """Drop deleted checkpoints from the runs' records."""
        gone = set(paths)
        for node in self.nodes.values():
            for run in node.runs:
                run.checkpoints = {k: v for k, v in run.checkpoints.items() if v not in gone}

    # ---- updates from trials ------------------------------------------------------------------
    def start(self, run_id: str, trial_id: str) -> None:
        node, run = self.node_of_run(run_id), self.run(run_id)
        if run.status != Status.PENDING:
            raise ValueError(f"run {run_id} is {run.status}, not pending")
        run.status, run.trial_id = Status.RUNNING, trial_id
        if node.status == Status.PENDING:
            node.status = Status.RUNNING

    def record(self, run_id: str, metrics: dict) -> None:
        """Keep one evaluation point (a result with `eval_index`); a repeated index replaces the old one.

        An ended run's points are final: what a trial Tune restarted after its driver died reports for a run the
        search had already stopped or finished is not kept.
        """
        node, run = self.node_of_run(run_id), self.run(run_id)
        if run.ended:
            return
        if metrics.get("trained_params") is not None:
            node.trained_params = int(metrics["trained_params"])
        if metrics.get("total_steps") is not None:
            run.total_steps = int(metrics["total_steps"])
        if "eval_index" not in metrics:
            return
        point = {k: metrics[k] for k in EVAL_KEYS if k in metrics}
        point["set_scores"] = _set_scores(metrics)
        run.history = sorted([p for p in run.history if p["eval_index"] != point["eval_index"]] + [point],
                             key=lambda p: p["eval_index"])
        if metrics.get("checkpoint"):
            run.checkpoints[str(point["eval_index"])] = metrics["checkpoint"]
        run.train_steps = max(run.train_steps, int(metrics.get("step") or 0))
        run.wall_time_s = max(run.wall_time_s, float(metrics.get("train_time_s") or 0.0))

    def stop(self, run_id: str, status: str, reason: str) -> None:
        """The scheduler stopped a run: `stopped` (lost the learning-rate comparison) or `pruned` (a stop rule)."""
        if status not in STOPPED_EARLY:
            raise ValueError(f"a run is stopped as 'stopped' or 'pruned', not {status!r}")
        run = self.run(run_id)
        run.status, run.stop_reason = status, reason

    def complete(self, run_id: str, result: dict) -> None:
        """The run's trial ended without error; `result` is its last result. A stopped run stays stopped."""
        run = self.run(run_id)
        self.record(run_id, result)
        run.train_steps = int(result.get("train_steps", run.train_steps))
        run.wall_time_s = float(result.get("wall_time_s", run.wall_time_s))
        if run.status == Status.RUNNING:
            run.status = Status.FINISHED if run.history else Status.FAILED
            if not run.history:
                run.stop_reason = "the trial reported no evaluation point"
        self._end_node_if_done(self.node_of_run(run_id))
        self._advance()

    def fail(self, run_id: str, error: str) -> None:
        """The run's trial errored (after Tune's retries): the run is recorded failed."""
        run = self.run(run_id)
        run.status, run.stop_reason = Status.FAILED, error
        self._end_node_if_done(self.node_of_run(run_id))
        self._advance()

    # ---- expansion ------------------------------------------------------------------------
    def _end_node_if_done(self, node: TreeNode) -> None:
        if node.status not in (Status.PENDING, Status.RUNNING) or not all(r.ended for r in node.runs):
            return
        best = self.best_point(node)
        if best is None:
            reasons = {r.stop_reason for r in node.runs if r.stop_reason}
            node.status, node.stop_reason = Status.FAILED, "; ".join(sorted(reasons)) or "no run produced a score"
        elif best.run.status == Status.PRUNED:
            node.status, node.stop_reason = Status.PRUNED, best.run.stop_reason
        else:
            node.status = Status.FINISHED

    def _advance(self) -> None:
        """Expand the next level once the current one has ended; end the search when nothing is left."""
        while not self.finished and not self.in_flight():
            budget = self.policy.max_trials
            if budget is not None and self.trials_started() >= budget:
                self._end("max_trials reached")
            elif any(n.status in (Status.PENDING, Status.RUNNING) for n in self.at_depth(self.depth)):
                return
            elif self.policy.max_depth is not None and self.depth >= self.policy.max_depth:
                self._end("max_depth reached")
            else:
                self._expand_level()

    def _expand_level(self) -> None:
        if self.depth == 0:
            level, parts = self.space.first_candidates()
            parents: list[tuple[TreeNode | None, int | None, list[ModelPart]]] = [(None, level, parts)]
        else:
            promising = self.select_promising(self.depth)
            if not promising:
                self._end("no promising node")
                return
            parents = []
            for node in promising:
                node.promising = True
                level, parts = (None, []) if node.level is None else self.space.expand(node.part, node.level)
                parents.append((node, level, parts))
        known = {n.part.key() for n in self.nodes.values()}
        added = 0
        for parent, level, parts in parents:
            for part in parts:
                if part.key() not in known:
                    known.add(part.key())
                    self._add(part, parent, self.depth + 1, level)
                    added += 1
        if not added:
            self._end("search space exhausted")
            return
        self.depth += 1

    def _add(self, part: ModelPart, parent: TreeNode | None, depth: int, level: int | None) -> TreeNode:
        node_id = f"n{len(self.nodes)}"
        if not part.trains:
            runs = [Run(node_id, None)]
        else:
            lrs = self.learning_rates.for_node(part.lr)
            runs = [Run(f"{node_id}-lr{lr:.3g}", lr) for lr in lrs]
        node = TreeNode(node_id, part, parent.id if parent else None, depth, level, runs)
        self.nodes[node.id] = node
        self._run_nodes.update((run.id, node.id) for run in runs)
        if parent is not None:
            parent.children.append(node.id)
        return node

    def _end(self, reason: str) -> None:
        self.end_reason = reason
        for node in self.nodes.values():
            for run in node.runs:
                if run.status == Status.PENDING:
                    run.status = Status.NOT_EXPANDED
            if node.status == Status.PENDING:
                node.status = Status.NOT_EXPANDED
            self._end_node_if_done(node)

    def _beats_parent(self, node: TreeNode, reference: Reference) -> bool:
        parent = self.nodes[node.parent] if node.parent else None
        parent_score = self.score(parent) if parent else None
        if parent_score is None:
            return True
        return self.objective.beats(self.score(node), parent_score, reference, self.policy.min_gain)

    def _rank_key(self, node: TreeNode) -> tuple:
        primary, secondary = self.objective.value(self.score(node), self.reference())
        trained = node.trained_params if node.trained_params is not None else math.inf
        return (-primary, -secondary, trained, int(node.id[1:]))

    def _rung_key(self, node: TreeNode, run: Run, reference: Reference) -> tuple:
        primary, secondary = self.objective.rung_value(self.point_score(run.rung_point()), reference, run.rung_done())
        return (-primary, -secondary, node.runs.index(run))

    # ---- JSON state -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        best = self.best()
        reference = self.reference()
        nodes = []
        for node in self.nodes.values():
            data = node.to_dict()
            best_point = self.best_point(node, reference)
            data["score"] = None if best_point is None else {
                **asdict(best_point.score), "run": best_point.run.id, "lr": best_point.run.lr,
                "eval_index": best_point.point["eval_index"], "checkpoint": best_point.checkpoint,
                "qualifies": self.objective.qualifies(best_point.score, reference),
            }
            nodes.append(data)
        return {
            "space": {"source": self.space.source, "data": self.space.data},
            "policy": asdict(self.policy),
            "objective": asdict(self.objective),
            "learning_rates": {"candidates": list(self.learning_rates.candidates), "keep": self.learning_rates.keep},
            "reference": asdict(reference),
            "depth": self.depth,
            "end_reason": self.end_reason,
            "best": best.id if best else None,
            "pareto_front": [n.id for n in self.pareto_front()],
            "nodes": nodes,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "SearchTree":
        tree = cls.__new__(cls)
        tree.space = parse_search_space(data["space"]["data"], source=data["space"]["source"])
        tree.policy = SelectionPolicy(**data["policy"])
        tree.objective = Objective(**data["objective"])
        rates = data["learning_rates"]
        tree.learning_rates = LearningRates(tuple(rates["candidates"]), rates["keep"])
        tree.nodes = {n["id"]: TreeNode.from_dict(n) for n in data["nodes"]}
        tree._run_nodes = {run.id: node.id for node in tree.nodes.values() for run in node.runs}
        tree.depth = data["depth"]
        tree.end_reason = data["end_reason"]
        return tree

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def save(self, path: str | Path) -> None:
        """Write the tree as JSON to `path` whole: a reader (the user, a test) never sees half a file."""
        write_whole(path, self.to_json())

    @classmethod
    def from_json(cls, text: str) -> "SearchTree":
        return cls.from_dict(json.loads(text))


def describe_runs(tree: SearchTree, node: TreeNode) -> str:
    """What happened to each learning-rate run of a node, e.g. 'lr 1e-04 kept; lr 3e-04 stopped at step 50'."""
    if not node.part.trains:
        return ""
    kept = tree.kept_runs(node)
    parts = []
    for run in node.runs:
        if run.status in STOPPED_EARLY:
            what = f"{run.status} at step {run.train_steps}"
        elif run.status == Status.FAILED:
            what = str(run.status)
        else:
            what = "kept" if run in kept else str(run.status)
        parts.append(f"lr {run.lr:.3g} {what}")
    return "; ".join(parts)


def _set_scores(metrics: dict) -> dict[str, float]:
    """Each eval set's score from the worker's flat metrics (`spec/score`, `vers/<set>/score`)."""
    scores = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if parts[-1] == "score" and parts[0] in ("spec", "vers"):
            scores["/".join(parts[1:-1]) or "speciality"] = value
    return scores


def _within(value: tuple[int, float], best: tuple[int, float], epsilon: float) -> bool:
    return value[0] == best[0] and value[1] >= best[1] - epsilon


def _dominates(a: Score, b: Score) -> bool:
    return a.spec >= b.spec and a.vers >= b.vers and (a.spec > b.spec or a.vers > b.vers)
