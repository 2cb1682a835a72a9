"""Search spaces: which nodes a search may train, written as YAML with recombinable rules.

A *tree* space starts from a root node (never trained itself) and lists levels; each level applies
one expansion rule to a promising node of the level above:

    strategy: tree
    references: [base, full]
    root: {layer_range: [0, 1], modules: all}
    levels:
      - {name: half ranges, split_range: {pieces: 2, overlap: true}}
      - {name: attention vs FFN, split_modules: [attention, ffn]}
      - {name: soft-mask, softmask: [false, true]}

Rules (each level has exactly one):
  split_range: {pieces: N, overlap: bool}  N equal sub-ranges of the node's layer range; with
      overlap, also the windows shifted by half a piece ((0,1] -> (0,.5], (.25,.75], (.5,1]).
  split_modules: [group, ...]  one child per group: `all`, `attention`, `ffn` or a list of
      projection names; groups that are not inside the node's module set are skipped.
  softmask: [false, true]  one child per soft-mask setting.
  learning_rate: [4e-5, 1e-4]  one child per learning rate.

A child identical to its parent is the parent itself and is not a new node. A level whose rule
gives a node no new child does not apply to it: expansion moves on to the next level.

A *grid* space lists the candidate nodes flat, as blocks whose axes are crossed:

    strategy: grid
    references: [base, full]
    grid:
      - {layer_ranges: [[0, 0.5], [0.5, 1]], modules: [all, ffn], softmask: [false], lr: [4e-5]}

Pure Python (PyYAML, no torch, no Ray). Every validation error names the file and the key.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import yaml

from cofitune_ray.core.node import (
    ALL_MODULES,
    ATTENTION_MODULES,
    BASE_PART,
    FFN_MODULES,
    FULL_SFT_PART,
    NodeError,
    ModelPart,
)

MODULE_GROUPS = {"all": ALL_MODULES, "attention": ATTENTION_MODULES, "ffn": FFN_MODULES}
REFERENCE_NODES = {"base": BASE_PART, "full": FULL_SFT_PART}
STRATEGIES = ("tree", "grid")
_DIGITS = 6  # range bounds are rounded so that (0.25 + 0.25) is exactly 0.5 in node keys


class SearchSpaceError(ValueError):
    """A search-space file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class SplitRange:
    """Children on equal sub-ranges of the parent's layer range (plus half-shifted windows)."""

    pieces: int
    overlap: bool = False

    def children(self, parent: ModelPart) -> list[ModelPart]:
        if parent.kind != "partial" or parent.layers is not None:
            return []
        lo, hi = parent.layer_range
        width = (hi - lo) / self.pieces
        stride = width / 2 if self.overlap else width
        count = 2 * self.pieces - 1 if self.overlap else self.pieces
        return [
            parent.with_(layer_range=(round(lo + i * stride, _DIGITS), round(lo + i * stride + width, _DIGITS)), label="")
            for i in range(count)
        ]


@dataclass(frozen=True)
class SplitModules:
    """One child per module group that lies inside the parent's module set."""

    groups: tuple[tuple[str, ...], ...]

    def children(self, parent: ModelPart) -> list[ModelPart]:
        if parent.kind != "partial":
            return []
        return [parent.with_(modules=g, label="") for g in self.groups if set(g) <= set(parent.modules)]


@dataclass(frozen=True)
class ToggleSoftmask:
    """One child per soft-mask setting."""

    values: tuple[bool, ...]

    def children(self, parent: ModelPart) -> list[ModelPart]:
        return [parent.with_(softmask=v, label="") for v in self.values if parent.trains]


@dataclass(frozen=True)
class TuneLearningRate:
    """One child per learning rate."""

    values: tuple[float, ...]

    def children(self, parent: ModelPart) -> list[ModelPart]:
        return [parent.with_(lr=v, label="") for v in self.values if parent.trains]


Rule = Union[SplitRange, SplitModules, ToggleSoftmask, TuneLearningRate]


@dataclass(frozen=True)
class Level:
    """One level of a tree space: a name for reports and the rule that makes its nodes."""

    name: str
    rule: Rule


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space. `data` is the YAML mapping it was built from (kept for JSON state)."""

    strategy: str
    references: tuple[ModelPart, ...]
    root: ModelPart | None
    levels: tuple[Level, ...]
    grid_nodes: tuple[ModelPart, ...]
    source: str
    data: dict

    def expand(self, parent: ModelPart, after_level: int) -> tuple[int | None, list[ModelPart]]:
        """The first level after `after_level` that gives `parent` new children, and those children.

        Returns (None, []) when no later level applies. Children equal to the parent are dropped.
        """
        for index in range(after_level + 1, len(self.levels)):
            children = [c for c in self.levels[index].rule.children(parent) if c.key() != parent.key()]
            if children:
                return index, children
        return None, []

    def first_candidates(self) -> tuple[int | None, list[ModelPart]]:
        """The level-1 nodes: the root's first children (tree) or every grid node (grid)."""
        if self.strategy == "grid":
            return None, list(self.grid_nodes)
        return self.expand(self.root, -1)

    def reachable_nodes(self) -> list[ModelPart]:
        """Every node some branch of the search could train, references first, without duplicates."""
        seen: dict[str, ModelPart] = {n.key(): n for n in self.references}
        level, frontier = self.first_candidates()
        queue = [(level, n) for n in frontier]
        while queue:
            level, node = queue.pop(0)
            if node.key() in seen:
                continue
            seen[node.key()] = node
            if level is not None:
                next_level, children = self.expand(node, level)
                queue.extend((next_level, c) for c in children)
        return list(seen.values())


def load_search_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space YAML file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SearchSpaceError(f"{path}: cannot read search space: {exc}") from exc
    return parse_search_space(data, source=str(path))


def parse_search_space(data, source: str = "<search space>") -> SearchSpace:
    """Validate a search-space mapping (as loaded from YAML); errors name `source` and the key."""
    where = _Where(source)
    if not isinstance(data, dict):
        raise where.error("", "the search space must be a mapping")
    strategy = data.get("strategy", "tree")
    if strategy not in STRATEGIES:
        raise where.error("strategy", f"{strategy!r} is not one of {', '.join(STRATEGIES)}")
    allowed = {"strategy", "references", "root", "levels"} if strategy == "tree" else {"strategy", "references", "grid"}
    where.no_unknown_keys("", data, allowed)
    references = _parse_references(data.get("references", ["base", "full"]), where)
    if strategy == "tree":
        if "levels" not in data:
            raise where.error("levels", "a tree space needs a list of levels")
        root = _node(data.get("root", {}), where, "root")
        levels = _parse_levels(data["levels"], where)
        grid_nodes: tuple[ModelPart, ...] = ()
    else:
        if "grid" not in data:
            raise where.error("grid", "a grid space needs a list of grid blocks")
        root, levels = None, ()
        grid_nodes = _parse_grid(data["grid"], where, references)
    return SearchSpace(strategy, references, root, levels, grid_nodes, source, data)


class _Where:
    """Builds error messages that name the file and the key."""

    def __init__(self, source: str):
        self.source = source

    def error(self, key: str, problem: str) -> SearchSpaceError:
        return SearchSpaceError(f"{self.source}: {key + ': ' if key else ''}{problem}")

    def no_unknown_keys(self, key: str, mapping: dict, allowed: set[str]) -> None:
        unknown = sorted(set(mapping) - allowed)
        if unknown:
            raise self.error(key or unknown[0], f"unknown key(s) {', '.join(map(str, unknown))}; expected {', '.join(sorted(allowed))}")

    def list_of(self, key: str, value, min_len: int = 1) -> list:
        if not isinstance(value, list) or len(value) < min_len:
            raise self.error(key, f"expected a list of at least {min_len} item(s), got {value!r}")
        return value

    def no_duplicates(self, key: str, items: list, name=lambda x: x) -> None:
        seen = set()
        for i, item in enumerate(items):
            if name(item) in seen:
                raise self.error(f"{key}[{i}]", f"duplicate {name(item)}")
            seen.add(name(item))


def _parse_references(value, where: _Where) -> tuple[ModelPart, ...]:
    names = where.list_of("references", value, min_len=0)
    for i, name in enumerate(names):
        if name not in REFERENCE_NODES:
            raise where.error(f"references[{i}]", f"{name!r} is not one of {', '.join(REFERENCE_NODES)}")
    where.no_duplicates("references", names)
    return tuple(REFERENCE_NODES[n] for n in names)


def _parse_levels(value, where: _Where) -> tuple[Level, ...]:
    levels = []
    for i, level in enumerate(where.list_of("levels", value)):
        key = f"levels[{i}]"
        if not isinstance(level, dict):
            raise where.error(key, "a level is a mapping with a name and one rule")
        rule_keys = [k for k in level if k in _RULE_PARSERS]
        if len(rule_keys) != 1:
            raise where.error(key, f"a level needs exactly one rule among {', '.join(_RULE_PARSERS)}")
        where.no_unknown_keys(key, level, {"name", *rule_keys})
        rule_key = rule_keys[0]
        rule = _RULE_PARSERS[rule_key](level[rule_key], where, f"{key}.{rule_key}")
        levels.append(Level(str(level.get("name", rule_key)), rule))
    return tuple(levels)


def _parse_split_range(value, where: _Where, key: str) -> SplitRange:
    if not isinstance(value, dict):
        raise where.error(key, "expected a mapping {pieces: N, overlap: bool}")
    where.no_unknown_keys(key, value, {"pieces", "overlap"})
    pieces, overlap = value.get("pieces"), value.get("overlap", False)
    if not isinstance(pieces, int) or isinstance(pieces, bool) or pieces < 2:
        raise where.error(f"{key}.pieces", f"expected an integer >= 2, got {pieces!r}")
    if not isinstance(overlap, bool):
        raise where.error(f"{key}.overlap", f"expected true or false, got {overlap!r}")
    return SplitRange(pieces, overlap)


def _parse_split_modules(value, where: _Where, key: str) -> SplitModules:
    groups = tuple(_modules(g, where, f"{key}[{i}]") for i, g in enumerate(where.list_of(key, value, 2)))
    where.no_duplicates(key, list(groups), name="+".join)
    return SplitModules(groups)


def _parse_softmask(value, where: _Where, key: str) -> ToggleSoftmask:
    values = where.list_of(key, value)
    for i, v in enumerate(values):
        if not isinstance(v, bool):
            raise where.error(f"{key}[{i}]", f"expected true or false, got {v!r}")
    where.no_duplicates(key, values)
    return ToggleSoftmask(tuple(values))


def _parse_learning_rate(value, where: _Where, key: str) -> TuneLearningRate:
    values = [_learning_rate(v, where, f"{key}[{i}]") for i, v in enumerate(where.list_of(key, value))]
    where.no_duplicates(key, values)
    return TuneLearningRate(tuple(values))


_RULE_PARSERS = {
    "split_range": _parse_split_range,
    "split_modules": _parse_split_modules,
    "softmask": _parse_softmask,
    "learning_rate": _parse_learning_rate,
}


def _parse_grid(value, where: _Where, references: tuple[ModelPart, ...]) -> tuple[ModelPart, ...]:
    nodes: list[tuple[str, ModelPart]] = []
    for b, block in enumerate(where.list_of("grid", value)):
        key = f"grid[{b}]"
        if not isinstance(block, dict):
            raise where.error(key, "a grid block is a mapping of axes")
        where.no_unknown_keys(key, block, {"layer_ranges", "layers", "modules", "softmask", "lr"})
        # Explicit layer index lists ("layers") stand beside fractional ranges as one axis.
        ranges = [(f"layer_ranges[{i}]", {"layer_range": r}) for i, r in enumerate(block.get("layer_ranges") or [])]
        ranges += [(f"layers[{i}]", {"layers": ids}) for i, ids in enumerate(block.get("layers") or [])]
        if not ranges:
            raise where.error(key, "a grid block needs layer_ranges or layers")
        modules = [_modules(m, where, f"{key}.modules[{i}]") for i, m in enumerate(where.list_of(f"{key}.modules", block.get("modules", ["all"])))]
        masks = where.list_of(f"{key}.softmask", block.get("softmask", [False]))
        lrs = [None if v is None else _learning_rate(v, where, f"{key}.lr[{i}]") for i, v in enumerate(where.list_of(f"{key}.lr", block.get("lr", [None])))]
        for (axis, layers), mods, mask, lr in itertools.product(ranges, modules, masks, lrs):
            spec = {**layers, "modules": list(mods), "softmask": mask, "lr": lr}
            nodes.append((key, _node(spec, where, f"{key}.{axis}")))
    seen = {n.key() for n in references}
    for key, node in nodes:
        if node.key() in seen:
            raise where.error(key, f"duplicate node {node.key()}")
        seen.add(node.key())
    return tuple(node for _, node in nodes)


def _node(value, where: _Where, key: str) -> ModelPart:
    if not isinstance(value, dict):
        raise where.error(key, "a node is a mapping with layer_range or layers, modules, softmask, lr")
    where.no_unknown_keys(key, value, {"layer_range", "layers", "modules", "softmask", "lr"})
    layers = value.get("layers")
    if layers is not None and not (isinstance(layers, list) and layers and all(isinstance(i, int) and not isinstance(i, bool) for i in layers)):
        raise where.error(key, f"layers must be a list of 0-based layer indices, got {layers!r}")
    layer_range = value.get("layer_range", [0, 1])
    if not (isinstance(layer_range, list) and len(layer_range) == 2 and all(_is_number(x) for x in layer_range)):
        raise where.error(key, f"layer_range must be [lo, hi] fractions, got {layer_range!r}")
    lo, hi = (float(x) for x in layer_range)
    if not (0.0 <= lo < hi <= 1.0):
        raise where.error(key, f"layer_range ({lo:g}, {hi:g}] must lie inside (0, 1] with lo < hi")
    softmask = value.get("softmask", False)
    if not isinstance(softmask, bool):
        raise where.error(key, f"softmask must be true or false, got {softmask!r}")
    lr = value.get("lr")
    try:
        return ModelPart(
            layer_range=(lo, hi),
            layers=tuple(layers) if layers is not None else None,
            modules=_modules(value.get("modules", "all"), where, f"{key}.modules"),
            softmask=softmask,
            lr=None if lr is None else _learning_rate(lr, where, f"{key}.lr"),
        )
    except NodeError as exc:
        raise where.error(key, str(exc)) from exc


def _modules(value, where: _Where, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        if value not in MODULE_GROUPS:
            raise where.error(key, f"{value!r} is not a module group ({', '.join(MODULE_GROUPS)}) or a list of modules")
        return MODULE_GROUPS[value]
    names = where.list_of(key, value)
    unknown = [m for m in names if m not in ALL_MODULES]
    if unknown:
        raise where.error(key, f"unknown module(s) {', '.join(map(str, unknown))}; valid modules: {', '.join(ALL_MODULES)}")
    where.no_duplicates(key, names)
    return tuple(m for m in ALL_MODULES if m in names)


def _learning_rate(value, where: _Where, key: str) -> float:
    # PyYAML reads 4e-5 (no dot) as a string, so numeric strings are accepted too.
    try:
        lr = float(value) if isinstance(value, str) or _is_number(value) else float("nan")
    except ValueError:
        lr = float("nan")
    if not lr > 0 or lr == float("inf"):
        raise where.error(key, f"a learning rate must be a positive number, got {value!r}")
    return lr


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
