"""Everything that can be checked before any Ray or GPU time is spent.

Reads the model's config (not its weights), the tokenizer, every data file line by line, and
resolves every node the search space can reach against the model's depth and modules.
"""

from __future__ import annotations

from dataclasses import dataclass

from cofitune_ray.config import Config
from cofitune_ray.training.data import DataError, read_jsonl
from cofitune_ray.training.evaluate import EvalSet
from cofitune_ray.training.importance_job import importance_data
from cofitune_ray.training.model import Architecture, ModelError, load_tokenizer, read_architecture
from cofitune_ray.core.node import NodeError
from cofitune_ray.core.space import SearchSpace, SearchSpaceError, load_search_space


class PreflightError(ValueError):
    """The run cannot start: the message says exactly what to fix."""


@dataclass
class Preflight:
    """What the checks found, for the start-up summary."""

    architecture: Architecture
    space: SearchSpace
    train_examples: int
    eval_examples: dict[str, int]
    uses_softmask: bool


def preflight(config: Config) -> Preflight:
    """Check model, tokenizer, data and search space; raise PreflightError listing every problem."""
    try:
        space = load_search_space(config.search.space)
    except (OSError, SearchSpaceError) as exc:
        raise PreflightError(f"search.space: {exc}") from None
    try:
        arch = read_architecture(config.model.path)
        load_tokenizer(config.model.tokenizer or config.model.path)
    except (ModelError, OSError) as exc:
        raise PreflightError(str(exc)) from None
    problems = []
    for spec in space.reachable_nodes():
        try:
            spec.layer_indices(arch.num_layers)
        except NodeError as exc:
            problems.append(f"{config.search.space}: node {spec.key()}: {exc}")
    counts: dict[str, int] = {}
    try:
        train = read_jsonl(config.data.speciality_train)
        limit = config.data.max_eval_examples
        spec_eval = config.data.speciality_eval
        for name, path, metric in [(spec_eval.name or "speciality", spec_eval.path, spec_eval.metric)] + [
            (v.name, v.path, v.metric) for v in config.data.versatility
        ]:
            counts[name] = len(EvalSet.load(name, path, metric, limit).examples)
        uses_softmask = any(s.softmask for s in space.reachable_nodes())
        if uses_softmask:
            for path in importance_data(config):
                read_jsonl(path)
    except DataError as exc:
        problems.append(str(exc))
        train, uses_softmask = [], False
    if problems:
        raise PreflightError("\n".join(problems))
    return Preflight(arch, space, len(train), counts, uses_softmask)
