"""The CoFiTune search tree: nodes, level-by-level expansion, selection, ranking, Pareto front.

Pure Python (no Ray, no torch). The tree advances one level at a time:
  level 0  the references (base model, full SFT) of the search space;
  level 1  the root's first children (tree space) or every grid node (grid space);
  level d  the children of the promising nodes of level d-1, made by the space's next rule.
A level is expanded once every node of the level above has ended (finished, pruned, failed).

Promising nodes of a level (`SelectionPolicy`): finished nodes that beat their parent's Uni by more
than `min_gain` (level-1 nodes have no trained parent, so they all qualify); of these, the best
`beam_width` by Uni (ties: fewer trained parameters) plus any within `epsilon` of the best.
The search ends when no node is promising, no rule applies, `max_depth` is reached, or
`max_trials` trials have started.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

from cofitune_ray.core.node import ModelPart
from cofitune_ray.core.space import SearchSpace, parse_search_space

#: pending: waiting to run; running; finished: ran to the end; pruned: stopped early by the
#: scheduler (see stop_reason); failed: errored after Tune's retries; not_expanded: never run
#: because the search ended (trial budget) first.
STATUSES = ("pending", "running", "finished", "pruned", "failed", "not_expanded")
ENDED = ("finished", "pruned", "failed", "not_expanded")

#: Keys of one evaluation point kept in a node's history (the metric contract in docs/architecture.md).
EVAL_KEYS = ("eval_index", "spec", "vers", "uni", "spec_rel", "vers_rel", "step", "epoch", "train_loss")
#: Keys of a trial's last result kept as the node's final metrics.
FINAL_KEYS = ("best_spec", "best_vers", "best_uni", "checkpoint", "train_steps", "wall_time_s")


@dataclass
class SelectionPolicy:
    """How many children the tree keeps at each level, and when it stops (the `search:` config)."""

    beam_width: int = 1
    epsilon: float = 0.0
    min_gain: float = 0.0
    max_depth: int | None = None
    max_trials: int | None = None

    def __post_init__(self) -> None:
        if self.beam_width < 1:
            raise ValueError(f"beam_width {self.beam_width} must be at least 1")
        if self.epsilon < 0:
            raise ValueError(f"epsilon {self.epsilon} must not be negative")
        if self.max_depth is not None and self.max_depth < 0:
            raise ValueError(f"max_depth {self.max_depth} must not be negative")
        if self.max_trials is not None and self.max_trials < 1:
            raise ValueError(f"max_trials {self.max_trials} must be at least 1")


@dataclass(frozen=True)
class Score:
    """A node's Spec, Vers and Uni at its best evaluation point."""

    spec: float
    vers: float
    uni: float


@dataclass
class TreeNode:
    """One node of the search and everything its trial produced."""

    id: str
    part: ModelPart
    parent: str | None
    depth: int
    level: int | None  # index of the space level whose rule made it; None for references and grid nodes
    children: list[str] = field(default_factory=list)
    status: str = "pending"
    stop_reason: str | None = None  # why the scheduler pruned it, or the error that failed it
    trial_id: str | None = None
    history: list[dict] = field(default_factory=list)  # metrics at each evaluation point
    final: dict = field(default_factory=dict)
    trained_params: int | None = None
    checkpoint: str | None = None
    promising: bool = False  # selected at its level (and expanded, where a later rule applies)

    @property
    def is_reference(self) -> bool:
        return self.depth == 0

    def score(self) -> Score | None:
        """The best evaluation point: the trial's own best_* if reported, else the best in history."""
        if "best_uni" in self.final:
            return Score(self.final["best_spec"], self.final["best_vers"], self.final["best_uni"])
        points = [p for p in self.history if "uni" in p]
        if not points:
            return None
        best = max(points, key=lambda p: p["uni"])
        return Score(best.get("spec", math.nan), best.get("vers", math.nan), best["uni"])

    def cost(self) -> dict:
        return {k: self.final[k] for k in ("train_steps", "wall_time_s") if k in self.final}

    def to_dict(self) -> dict:
        data = asdict(self)
        data["part"] = self.part.to_dict()
        data["key"] = self.part.key()
        data["cost"] = self.cost()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "TreeNode":
        data = {k: v for k, v in data.items() if k not in ("key", "cost")}
        return cls(**{**data, "part": ModelPart.from_dict(data["part"])})


class SearchTree:
    """The state of one search: every node, the level being run, and why the search ended."""

    def __init__(self, space: SearchSpace, policy: SelectionPolicy | None = None):
        self.space = space
        self.policy = policy or SelectionPolicy()
        self.nodes: dict[str, TreeNode] = {}
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

    def at_depth(self, depth: int) -> list[TreeNode]:
        return [n for n in self.nodes.values() if n.depth == depth]

    def runnable(self) -> list[TreeNode]:
        """Pending nodes of the current level that the trial budget allows, best parent first."""
        pending = [n for n in self.at_depth(self.depth) if n.status == "pending"]
        pending.sort(key=self.run_priority)
        budget = self.policy.max_trials
        if budget is not None:
            pending = pending[: max(0, budget - self.trials_started())]
        return pending

    def run_priority(self, node: TreeNode) -> tuple[float, int]:
        """Sort key for running pending nodes: children of the best parent first, then creation order."""
        parent_score = self.nodes[node.parent].score() if node.parent else None
        return (-parent_score.uni if parent_score else 0.0, int(node.id[1:]))

    def in_flight(self) -> list[TreeNode]:
        return [n for n in self.nodes.values() if n.status == "running"]

    def trials_started(self) -> int:
        return sum(n.status in ("running", "finished", "pruned", "failed") for n in self.nodes.values())

    def ranking(self, include_references: bool = True) -> list[TreeNode]:
        """Finished nodes with a score, best first: Uni, then fewer trained parameters."""
        nodes = [n for n in self.nodes.values() if n.status == "finished" and n.score() is not None]
        if not include_references:
            nodes = [n for n in nodes if not n.is_reference]
        return sorted(nodes, key=_rank_key)

    def best(self) -> TreeNode | None:
        """The best finished trained node that is not a reference (the search's answer)."""
        ranked = self.ranking(include_references=False)
        return ranked[0] if ranked else None

    def pareto_front(self) -> list[TreeNode]:
        """Finished nodes that no other finished node beats on both Spec and Vers, by Spec descending."""
        nodes = self.ranking()
        front = [
            n
            for n in nodes
            if not any(_dominates(o.score(), n.score()) for o in nodes if o is not n)
        ]
        return sorted(front, key=lambda n: (-n.score().spec, -n.score().vers))

    def select_promising(self, depth: int) -> list[TreeNode]:
        """The nodes of `depth` worth expanding (see the module docstring)."""
        policy = self.policy
        eligible = [n for n in self.ranking() if n.depth == depth and self._gain_over_parent(n) > policy.min_gain]
        if not eligible:
            return []
        band = eligible[0].score().uni - policy.epsilon
        return [n for i, n in enumerate(eligible) if i < policy.beam_width or n.score().uni >= band]

    # ---- updates from trials ------------------------------------------------------------------
    def start(self, node_id: str, trial_id: str) -> None:
        node = self.nodes[node_id]
        if node.status != "pending":
            raise ValueError(f"node {node_id} is {node.status}, not pending")
        node.status, node.trial_id = "running", trial_id

    def record(self, node_id: str, metrics: dict) -> None:
        """Keep one evaluation point (a result with `eval_index`); a repeated index replaces the old one."""
        node = self.nodes[node_id]
        if metrics.get("trained_params") is not None:
            node.trained_params = int(metrics["trained_params"])
        if "eval_index" not in metrics:
            return
        point = {k: metrics[k] for k in EVAL_KEYS if k in metrics}
        node.history = [p for p in node.history if p["eval_index"] != point["eval_index"]] + [point]
        node.history.sort(key=lambda p: p["eval_index"])

    def prune(self, node_id: str, reason: str) -> None:
        """The scheduler stopped this node's trial: it ends pruned and is never expanded."""
        node = self.nodes[node_id]
        node.status, node.stop_reason = "pruned", reason

    def complete(self, node_id: str, result: dict) -> None:
        """The trial ended without error; `result` is its last result. A pruned node stays pruned."""
        node = self.nodes[node_id]
        self.record(node_id, result)
        node.final.update({k: result[k] for k in FINAL_KEYS if k in result})
        node.checkpoint = result.get("checkpoint", node.checkpoint)
        if node.status == "running":
            if node.score() is None:
                node.status, node.stop_reason = "failed", "the trial reported no evaluation point"
            else:
                node.status = "finished"
        self._advance()

    def fail(self, node_id: str, error: str) -> None:
        """The trial errored (after Tune's retries): the node is recorded failed and not expanded."""
        node = self.nodes[node_id]
        node.status, node.stop_reason = "failed", error
        self._advance()

    def add_node(self, part: ModelPart, parent_id: str | None, depth: int) -> TreeNode:
        """Add a pending node outside the level-by-level expansion, e.g. learning-rate tuning after
        the search ended (tuning/optuna_searcher.py). Such a node has a parent and no `level`; the caller
        starts and ends it. The tree's depth grows to `depth`; a key already in the tree is refused."""
        if any(n.part.key() == part.key() for n in self.nodes.values()):
            raise ValueError(f"node {part.key()} is already in the tree")
        node = self._add(part, self.nodes[parent_id] if parent_id else None, depth, level=None)
        self.depth = max(self.depth, depth)
        return node

    # ---- expansion ------------------------------------------------------------------------
    def _advance(self) -> None:
        """Expand the next level once the current one has ended; end the search when nothing is left."""
        while not self.finished and not self.in_flight():
            budget = self.policy.max_trials
            if budget is not None and self.trials_started() >= budget:
                self._end("max_trials reached")
            elif any(n.status == "pending" for n in self.at_depth(self.depth)):
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
        node = TreeNode(f"n{len(self.nodes)}", part, parent.id if parent else None, depth, level)
        self.nodes[node.id] = node
        if parent is not None:
            parent.children.append(node.id)
        return node

    def _end(self, reason: str) -> None:
        for node in self.nodes.values():
            if node.status == "pending":
                node.status = "not_expanded"
        self.end_reason = reason

    def _gain_over_parent(self, node: TreeNode) -> float:
        if node.parent is None:
            return math.inf
        parent_score = self.nodes[node.parent].score()
        return node.score().uni - parent_score.uni if parent_score else math.inf

    # ---- JSON state -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        best = self.best()
        return {
            "space": {"source": self.space.source, "data": self.space.data},
            "policy": asdict(self.policy),
            "depth": self.depth,
            "end_reason": self.end_reason,
            "best": best.id if best else None,
            "pareto_front": [n.id for n in self.pareto_front()],
            "nodes": [n.to_dict() for n in self.nodes.values()],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "SearchTree":
        tree = cls.__new__(cls)
        tree.space = parse_search_space(data["space"]["data"], source=data["space"]["source"])
        tree.policy = SelectionPolicy(**data["policy"])
        tree.nodes = {n["id"]: TreeNode.from_dict(n) for n in data["nodes"]}
        tree.depth = data["depth"]
        tree.end_reason = data["end_reason"]
        return tree

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "SearchTree":
        return cls.from_dict(json.loads(text))


def _rank_key(node: TreeNode) -> tuple[float, float, int]:
    trained = node.trained_params if node.trained_params is not None else math.inf
    return (-node.score().uni, trained, int(node.id[1:]))


def _dominates(a: Score, b: Score) -> bool:
    return a.spec >= b.spec and a.vers >= b.vers and (a.spec > b.spec or a.vers > b.vers)
