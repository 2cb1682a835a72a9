"""Everything that can be checked before any Ray or GPU time is spent.

Reads the model's config (and checks that its weight files exist, without loading them), the
tokenizer, every data entry record by record, builds every lm-eval task with its data, resolves every
node the search space can reach against the model's depth and modules, and makes the memory plan
(`plan/memory.py`): with `scaling.strategy: auto`, a plan in which nothing fits is an error. When all is well,
it tokenises the training set into the search's cache (`training/tokenized.py`), or finds it there.
"""

from __future__ import annotations

from dataclasses import dataclass

from cofitune_ray.config import Config, objective
from cofitune_ray.core.node import NodeError
from cofitune_ray.core.space import SearchSpace, SearchSpaceError, load_search_space
from cofitune_ray.plan.memory import MemoryPlan, PlanError, memory_plan
from cofitune_ray.training.data import DataError, read_examples
from cofitune_ray.training.model import Architecture, ModelError, check_weights, load_tokenizer, read_architecture
from cofitune_ray.training.prompt import CHAT
from cofitune_ray.training.tokenized import TrainingSet, training_set


class PreflightError(ValueError):
    """The run cannot start: the message says exactly what to fix."""


@dataclass
class Preflight:
    """What the checks found, for the start-up lines."""

    architecture: Architecture
    space: SearchSpace
    train_examples: int
    eval_examples: dict[str, int]  # examples per evaluation set: the Spec set first, then the Vers sets
    uses_softmask: bool
    memory: MemoryPlan
    truncated: int  # training sequences longer than data.max_seq_length
    left_out: int  # of those, sequences with no response token left (not trained on)
    max_seq_length: int
    strategy: str  # ddp | fsdp: `scaling.strategy` with `auto` resolved by the memory plan
    tokenized: TrainingSet  # the training set's cache entry (built now, or found)
    eval_sets_tokenized: tuple[int, int]  # (evaluation sets tokenised now, sets given by path): the others were cached

    def lines(self) -> list[str]:
        """What the search will run on, in words, and a warning when training sequences do not fit."""
        arch = self.architecture
        (spec_name, spec_size), *vers = self.eval_examples.items()
        lines = [f"preflight ok: {arch.model_type} with {arch.num_layers} layers; "
                 f"{self.train_examples} training examples; "
                 f"Spec set {spec_name} ({spec_size} examples); "
                 f"Vers sets {', '.join(f'{name} ({size})' for name, size in vers)}; "
                 f"{len(self.space.reachable_nodes())} reachable nodes"]
        if self.truncated:
            lines.append(f"warning: {self.truncated} of {self.train_examples} training sequences are longer than "
                         f"data.max_seq_length ({self.max_seq_length} tokens) and are truncated; "
                         f"{self.left_out} of them keep no response token and are left out")
        entry = self.tokenized
        now, total = self.eval_sets_tokenized
        lines.append(f"training set {'tokenized' if entry.built else 'already tokenized'}: {entry.rows} sequences in "
                     f"{entry.directory}; evaluation sets tokenized now: {now} of {total}")
        return lines


def preflight(config: Config) -> Preflight:
    """Check model, tokenizer, data and search space; raise PreflightError listing every problem."""
    try:
        space = load_search_space(config.search.space)
    except (OSError, SearchSpaceError) as exc:
        raise PreflightError(f"search.space: {exc}") from None
    # torch comes in with the evaluation sets: a config or search-space error above is reported without it
    from cofitune_ray.training.evaluate import EvalSet, tokenize_eval_sets, versatility_set
    from cofitune_ray.training.harness import HarnessTask
    from cofitune_ray.training.softmask.importance import importance_data
    from cofitune_ray.training.spectrum import safetensors_files

    try:
        arch = read_architecture(config.model.path)
        check_weights(config.model.path)
        tokenizer = load_tokenizer(config.model.tokenizer or config.model.path)
    except (ModelError, OSError) as exc:
        raise PreflightError(str(exc)) from None
    problems = []
    if config.data.prompt_template == CHAT and not getattr(tokenizer, "chat_template", None):
        problems.append(f"data.prompt_template: 'chat' formats through the tokenizer's chat template, but the "
                        f"tokenizer {config.model.tokenizer or config.model.path} has none; name another template")
    if objective(config).needs_full_sft and not any(r.kind == "full" for r in space.references):
        problems.append(f"search.objective: spec_floor measures speciality against full SFT, but the search space "
                        f"{config.search.space} has no 'full' reference; add `full` to its references or set "
                        f"search.objective: uni")
    for spec in space.reachable_nodes():
        if spec.kind == "snr":  # its layers come from the base weights, once Ray is up (training/spectrum.py)
            continue
        try:
            spec.layer_indices(arch.num_layers)
        except NodeError as exc:
            problems.append(f"{config.search.space}: node {spec.key()}: {exc}")
    spectrum = [part for part in space.references if part.kind == "snr"]
    for part in spectrum:
        if part.snr_layer_count(arch.num_layers) == 0:
            problems.append(f"{config.search.space}: references: {{snr: {part.top_percent:g}}} selects no layer of a "
                            f"{arch.num_layers}-layer model (floor({arch.num_layers} x {part.top_percent:g}%) = 0)")
    if spectrum:
        try:
            safetensors_files(config.model.path)
        except ModelError as exc:
            problems.append(str(exc))
    counts: dict[str, int] = {}
    try:
        chat = config.data.prompt_template == CHAT
        train = read_examples(config.data.speciality_train, config.data.columns, chat)
        spec_eval = config.data.speciality_eval
        spec_name = spec_eval.name or "speciality"
        spec_set = EvalSet.load(spec_name, spec_eval.path, spec_eval.metric, config.data.max_eval_examples,
                                config.data.columns, chat)
        counts[spec_name] = len(spec_set.examples)
        vers_sets = [versatility_set(config, i) for i in range(len(config.data.versatility))]
        for chosen in vers_sets:
            counts[chosen.name] = chosen.load() if isinstance(chosen, HarnessTask) else len(chosen.examples)
        uses_softmask = any(s.softmask for s in space.reachable_nodes())
        if uses_softmask and not importance_data(config):
            problems.append("importance.data: soft-masking nodes need general data to compute importance on, "
                            "and every versatility set is an lm-eval task")
        elif uses_softmask:
            for path in importance_data(config):
                read_examples(path, config.data.columns, chat)
    except DataError as exc:
        problems.append(str(exc))
    if problems:
        raise PreflightError("\n".join(problems))
    memory = memory_plan(config, arch, space)
    try:
        strategy = memory.strategy(config.scaling.strategy)
    except PlanError as exc:
        raise PreflightError(f"scaling.strategy: auto: {exc}") from None
    harness_sets = [f"data.versatility[{i}] ({v.name})" for i, v in enumerate(config.data.versatility) if v.lm_eval]
    if strategy == "fsdp" and harness_sets:
        raise PreflightError(f"{', '.join(harness_sets)}: an lm-eval task is scored by one worker on the whole model, "
                             "which scaling.strategy fsdp shards over the workers: use ddp, or a set given by path")
    tokenized = training_set(config, tokenizer, train)
    eval_sets_tokenized = tokenize_eval_sets(config, tokenizer, spec_set, vers_sets)
    return Preflight(arch, space, len(train), counts, uses_softmask, memory, truncated=tokenized.truncated,
                     left_out=tokenized.lost_all_labels, max_seq_length=config.data.max_seq_length, strategy=strategy,
                     tokenized=tokenized, eval_sets_tokenized=eval_sets_tokenized)
