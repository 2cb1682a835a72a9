"""The run configuration: typed dataclasses read from YAML and validated before any Ray work.

Every error names the file, the line and the dotted key, e.g.
`configs/x.yaml:14: train.lr: expected a number, got 'fast'`.
Overrides on the command line use the same dotted keys: `train.lr=1e-4`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cofitune_ray.core.objective import Objective
from cofitune_ray.core.settings import LearningRates, SelectionPolicy, SettingError, StopRules


class ConfigError(ValueError):
    """A configuration value that is missing, unknown, of the wrong type or impossible."""


@dataclass
class ModelConfig:
    """The base model: a local Hugging Face directory (or hub id where the hub is reachable)."""

    path: str = ""
    tokenizer: str | None = None  # defaults to `path`
    dtype: str = "float32"  # weights as loaded: float32 | bfloat16 | float16
    trust_remote_code: bool = False


@dataclass
class LmEvalTaskConfig:
    """A task of lm-evaluation-harness used as a versatility set (training/harness.py)."""

    task: str = ""  # a task or group lm-eval knows: `arc_easy`, `hellaswag`, `mmlu`, or one in include_path
    include_path: str | None = None  # a folder of task YAMLs (local data: `dataset_path: json`)
    limit: int | None = None  # documents per task; null = data.max_eval_examples (null there: all)
    metric: str | None = None  # `acc`, `acc_norm`, `exact_match,strict-match`, ...; null = the task's first


@dataclass
class EvalSetConfig:
    """One evaluation set: a data file (or directory) and the metric that scores it, or (versatility only) an
    lm-eval task."""

    name: str = ""
    path: str = ""
    metric: str = "auto"  # auto | exact_match | loglik | choice (sets given by path)
    lm_eval: LmEvalTaskConfig | None = None  # instead of path: the set is this lm-eval task


@dataclass
class ColumnsConfig:
    """The names the data's fields have, where they differ from ours (like LLaMA-Factory's `columns`).

    One mapping for every data entry of the run; a record is an instruction record (instruction, input,
    output) or a chat record (messages), and either may carry choices and answer (multiple choice).
    """

    instruction: str = "instruction"
    input: str = "input"
    output: str = "output"
    messages: str = "messages"  # a list of {role, content} (ShareGPT's {from, value} too)
    choices: str = "choices"
    answer: str = "answer"


@dataclass
class DataConfig:
    """Training and evaluation data: JSONL, JSON, Parquet or `datasets.save_to_disk` directories (training/data.py)."""

    speciality_train: str = ""
    speciality_eval: EvalSetConfig = field(default_factory=EvalSetConfig)
    versatility: list[EvalSetConfig] = field(default_factory=list)
    prompt_template: str = "alpaca"
    max_seq_length: int = 512
    loss_on: str = "response"  # response | sequence
    max_eval_examples: int | None = None  # per set; None = all
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)


@dataclass
class TrainConfig:
    """Optimisation settings; defaults are the paper's."""

    lr: float = 4e-5
    epochs: int = 3
    max_steps: int | None = None  # optimizer steps; caps epochs when set
    batch_size: int = 8  # per worker, per micro-batch
    grad_accum_steps: int = 1
    warmup_ratio: float = 0.03
    schedule: str = "cosine"  # cosine | linear | constant
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float | None = 1.0
    softmask_mode: str = "update"  # update | grad (see docs/softmask.md)
    bf16: str = "auto"  # auto (on with GPUs) | on | off
    activation_checkpointing: bool = False  # recompute each decoder layer in backward: less memory, ~1/3 more compute


@dataclass
class EvalConfig:
    """When and how each node is scored."""

    every_n_steps: int | None = None
    at_epoch_end: bool = True
    batch_size: int = 16
    max_new_tokens: int = 64
    spec_weight: float = 0.5
    vers_weight: float = 0.5


@dataclass
class ImportanceConfig:
    """Unit importance for soft-masking (CoFiTune's fine level; docs/softmask.md)."""

    data: list[str] = field(default_factory=list)  # data files; empty = the versatility eval sets
    max_examples: int = 256
    batch_size: int = 8
    temperature: float = 0.1
    dropout: float = 0.1


@dataclass
class WorkerScaling:
    """Ray Train workers for each node."""

    strategy: str = "ddp"  # ddp (a full model copy per worker) | fsdp (sharded by rows) | auto (the memory plan picks)
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    trial_cpus: float = 0.5  # the Tune trial driver itself
    # memory of one GPU (of one worker process with use_gpu false): the memory plan's budget
    gpu_memory_gb: float = 80.0


@dataclass
class SearchConfig:
    """The search: strategy, space, objective, learning rates, selection and stop rules (README, docs)."""

    strategy: str = "tree"  # tree | grid | optuna
    space: str = "search_spaces/cofitune.yaml"
    objective: str = "spec_floor"  # spec_floor (qualify at the speciality floor, then most Vers) | uni
    spec_floor: float = 0.9  # share of full SFT's speciality gain a node needs to qualify
    lr_candidates: list[float] | None = None  # one run per value for each node; null: 3 over a decade around train.lr
    lr_keep: int = 1  # runs of a trained node kept at its first eval point, the others stopped (full SFT: all kept)
    beam_width: int = 1
    epsilon: float = 0.0
    min_gain: float = 0.0
    max_depth: int | None = None
    max_trials: int | None = None  # Tune trials (each learning-rate run of a node is one), references included
    max_concurrent_trials: int = 1
    max_failures: int = 1
    vers_margin: float | None = 0.1  # stop a run this far below the incumbent's Vers while its Spec is not higher
    prune_after: float | None = 0.5  # from this share of its steps, stop a run that projects below the floor
    uni_margin: float | None = None  # (objective uni) stop a run this far below the incumbent's Uni
    min_evals: int = 1  # evaluation points before the vers and uni rules judge a run


@dataclass
class Config:
    """A whole run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    importance: ImportanceConfig = field(default_factory=ImportanceConfig)
    scaling: WorkerScaling = field(default_factory=WorkerScaling)
    search: SearchConfig = field(default_factory=SearchConfig)
    name: str = "cofitune"
    storage_path: str = "runs"
    seed: int = 0
    source: str = field(default="<defaults>", metadata={"internal": True})

    def to_dict(self) -> dict:
        """Plain data (JSON/YAML-able); `config_from_dict` reads it back."""
        data = dataclasses.asdict(self)
        data.pop("source")
        return data


_CHOICES = {
    "model.dtype": ("float32", "bfloat16", "float16"),
    "data.loss_on": ("response", "sequence"),
    "train.schedule": ("cosine", "linear", "constant"),
    "train.softmask_mode": ("update", "grad"),
    "train.bf16": ("auto", "on", "off"),
    "scaling.strategy": ("ddp", "fsdp", "auto"),
    "search.strategy": ("tree", "grid", "optuna"),
}
_METRICS = ("auto", "exact_match", "loglik", "choice")


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
                search_space: str | None = None) -> Config:
    """Read, override and validate a YAML config; relative data/model paths resolve against its folder.

    `search_space`: a search-space file given on the command line (`--search-space`), which replaces `search.space`.
    """
    path = Path(path)
    if search_space:
        overrides = [*overrides, f"search.space={Path(search_space).resolve()}"]
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text()
    try:
        root = yaml.compose(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if root is not None and not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{path}:{root.start_mark.line + 1}: the top level must be a mapping of keys")
    config = _build(Config, root, str(path), "")
    config.source = str(path)
    _resolve_paths(config, path.parent)  # before overrides: paths given on the command line stay relative to the cwd
    apply_overrides(config, overrides)
    validate(config)
    return config


def config_from_dict(data: dict, source: str = "<dict>") -> Config:
    """A config from plain data (as made by `Config.to_dict`), validated."""
    node = yaml.compose(yaml.safe_dump(data))
    config = _build(Config, node, source, "")
    config.source = source
    validate(config)
    return config


def apply_overrides(config: Config, overrides: list[str] | tuple[str, ...]) -> None:
    """Apply `dotted.key=value` overrides; the value is parsed as YAML (`1e-4`, `[a, b]`, `null`)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.lr=1e-4")
        *parents, leaf = key.split(".")
        target: Any = config
        for i, part in enumerate(parents):
            target = _child(target, part, ".".join(parents[: i + 1]), "command line")
        _child(target, leaf, key, "command line")  # the key must exist
        hint = typing.get_type_hints(type(target))[leaf]
        try:
            node = yaml.compose(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"command line: {key}: the value {raw!r} is not valid YAML ({problem})") from None
        value = _build(hint, node, "command line", key)
        setattr(target, leaf, value)


def _child(obj: Any, name: str, key: str, source: str) -> Any:
    if not dataclasses.is_dataclass(obj) or name not in _public_fields(type(obj)):
        valid = ", ".join(_public_fields(type(obj))) if dataclasses.is_dataclass(obj) else "none"
        raise ConfigError(f"{source}: unknown key '{key}' (valid here: {valid})")
    return getattr(obj, name)


def _public_fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")]


def _where(source: str, node: yaml.Node | None) -> str:
    return f"{source}:{node.start_mark.line + 1}" if node is not None and source != "command line" else source


def _build(hint: Any, node: yaml.Node | None, source: str, key: str) -> Any:
    """Turn a YAML node into a value of type `hint`, or raise ConfigError naming file:line and key."""
    where = _where(source, node)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if _is_null(node):
            if type(None) in args:
                return None
            raise ConfigError(f"{where}: {key}: a value is required")
        (inner,) = [a for a in args if a is not type(None)]
        return _build(inner, node, source, key)
    if dataclasses.is_dataclass(hint):
        if node is None:
            return hint()
        if not isinstance(node, yaml.MappingNode):
            raise ConfigError(f"{where}: {key or 'config'}: expected a mapping of keys")
        names = _public_fields(hint)
        hints = typing.get_type_hints(hint)
        values = {}
        for key_node, value_node in node.value:
            name = key_node.value
            dotted = f"{key}.{name}" if key else name
            if name not in names:
                raise ConfigError(
                    f"{_where(source, key_node)}: unknown key '{dotted}' (valid here: {', '.join(names)})"
                )
            if name in values:
                raise ConfigError(f"{_where(source, key_node)}: key '{dotted}' is given twice")
            values[name] = _build(hints[name], value_node, source, dotted)
        return hint(**values)
    if _is_null(node):
        raise ConfigError(f"{where}: {key}: a value is required")
    if origin is list:
        (item_hint,) = typing.get_args(hint)
        if not isinstance(node, yaml.SequenceNode):
            raise ConfigError(f"{where}: {key}: expected a list")
        return [_build(item_hint, item, source, f"{key}[{i}]") for i, item in enumerate(node.value)]
    if not isinstance(node, yaml.ScalarNode):
        raise ConfigError(f"{where}: {key}: expected a single value, "
                          f"got a {'list' if isinstance(node, yaml.SequenceNode) else 'mapping'}")
    value = yaml.safe_load(yaml.serialize(node))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key}: expected true or false, got {node.value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {key}: expected a whole number, got {node.value!r}")
        return value
    if hint is float:
        if isinstance(value, str):
            try:  # YAML 1.1 reads 4e-5 (no dot) as a string
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {key}: expected a number, got {node.value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: {key}: expected text, got {node.value!r}")
        return str(value)
    raise TypeError(f"unsupported config type {hint!r} for {key}")


def _is_null(node: yaml.Node | None) -> bool:
    return node is None or (isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null")


#: Where the project's own search spaces live (a relative `search.space` is also looked up here).
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _resolve_paths(config: Config, base: Path) -> None:
    """Paths relative to the config file's folder become absolute (when the file exists there).

    `storage_path` always resolves against the config's folder; a relative `search.space` that is
    found neither there nor in the cwd is looked up in the project (e.g. `search_spaces/grid.yaml`).
    """

    def resolve(p: str | None) -> str | None:
        if not p:
            return p
        candidate = base / p
        return str(candidate.resolve()) if not Path(p).is_absolute() and candidate.exists() else p

    config.model.path = resolve(config.model.path)
    config.model.tokenizer = resolve(config.model.tokenizer)
    config.data.speciality_train = resolve(config.data.speciality_train)
    config.data.speciality_eval.path = resolve(config.data.speciality_eval.path)
    for item in config.data.versatility:
        item.path = resolve(item.path)
        if item.lm_eval is not None:
            item.lm_eval.include_path = resolve(item.lm_eval.include_path)
    config.importance.data = [resolve(p) for p in config.importance.data]
    config.search.space = resolve(config.search.space)
    if not Path(config.search.space).exists() and (PROJECT_ROOT / config.search.space).exists():
        config.search.space = str(PROJECT_ROOT / config.search.space)
    config.storage_path = str((base / config.storage_path).resolve())


def validate(config: Config) -> None:
    """Check values that are well-typed but impossible; raise ConfigError naming the key."""
    src = config.source
    errors: list[str] = []

    def need(ok: bool, key: str, message: str) -> None:
        if not ok:
            errors.append(f"{src}: {key}: {message}")

    for key, allowed in _CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        need(value in allowed, key, f"{value!r} is not one of {', '.join(allowed)}")
    need(bool(config.model.path), "model.path", "the base model directory is required")
    need(bool(config.data.speciality_train), "data.speciality_train", "a data file or directory is required")
    need(bool(config.data.speciality_eval.path), "data.speciality_eval.path", "a data file or directory is required")
    need(bool(config.data.versatility), "data.versatility", "at least one versatility eval set is required")
    sets = [config.data.speciality_eval, *config.data.versatility]
    need(config.data.speciality_eval.lm_eval is None, "data.speciality_eval.lm_eval",
         "only versatility sets may be lm-eval tasks (the speciality set is your data)")
    for i, item in enumerate(config.data.versatility):
        key = f"data.versatility[{i}]"
        need(bool(item.name), f"{key}.name", "a name is required")
        task = item.lm_eval
        if task is None:
            need(bool(item.path), f"{key}.path", "a data file or directory (or an lm_eval task) is required")
            continue
        need(not item.path, key, "give either path (a data file or directory) or lm_eval (a task), not both")
        need(item.metric == "auto", f"{key}.metric",
             "applies to sets given by path; an lm-eval set names its metric in lm_eval.metric")
        need(bool(task.task), f"{key}.lm_eval.task", "a task name is required, e.g. arc_easy")
        need(task.limit is None or task.limit >= 1, f"{key}.lm_eval.limit", "must be at least 1 or null")
        need(task.include_path is None or Path(task.include_path).is_dir(), f"{key}.lm_eval.include_path",
             f"{task.include_path!r} is not a folder")
        need(importlib.util.find_spec("lm_eval") is not None, f"{key}.lm_eval",
             "needs lm-evaluation-harness, which is not installed: pip install 'cofitune-ray[lmeval]'")
    names = [s.name for s in config.data.versatility]
    need(len(set(names)) == len(names), "data.versatility", f"set names must be unique, got {names}")
    for s in sets:
        need(s.metric in _METRICS, "metric", f"{s.metric!r} is not one of {', '.join(_METRICS)}")
    need(config.data.max_seq_length >= 8, "data.max_seq_length", "must be at least 8")
    need(config.data.max_eval_examples is None or config.data.max_eval_examples > 0,
         "data.max_eval_examples", "must be positive or null")
    t = config.train
    need(t.lr > 0 and math.isfinite(t.lr), "train.lr", f"must be a positive number, got {t.lr}")
    need(t.epochs >= 1, "train.epochs", "must be at least 1")
    need(t.max_steps is None or t.max_steps >= 1, "train.max_steps", "must be at least 1 or null")
    need(t.batch_size >= 1, "train.batch_size", "must be at least 1")
    need(t.grad_accum_steps >= 1, "train.grad_accum_steps", "must be at least 1")
    need(0 <= t.warmup_ratio < 1, "train.warmup_ratio", "must be in [0, 1)")
    need(t.weight_decay >= 0, "train.weight_decay", "must be >= 0")
    need(len(t.betas) == 2 and all(0 <= b < 1 for b in t.betas), "train.betas", "must be two numbers in [0, 1)")
    need(t.grad_clip is None or t.grad_clip > 0, "train.grad_clip", "must be positive or null")
    e = config.eval
    need(e.every_n_steps is None or e.every_n_steps >= 1, "eval.every_n_steps", "must be at least 1 or null")
    need(e.every_n_steps is not None or e.at_epoch_end, "eval",
         "no evaluation point: set every_n_steps or at_epoch_end")
    need(e.batch_size >= 1, "eval.batch_size", "must be at least 1")
    need(e.max_new_tokens >= 1, "eval.max_new_tokens", "must be at least 1")
    need(e.spec_weight >= 0 and e.vers_weight >= 0 and e.spec_weight + e.vers_weight > 0,
         "eval.spec_weight", "weights must be >= 0 and not both 0")
    imp = config.importance
    need(imp.max_examples >= 1, "importance.max_examples", "must be at least 1")
    need(imp.batch_size >= 1, "importance.batch_size", "must be at least 1")
    need(imp.temperature > 0, "importance.temperature", "must be positive")
    need(0 < imp.dropout < 1, "importance.dropout", "must be in (0, 1): two identical passes give no signal")
    sc = config.scaling
    need(sc.num_workers >= 1, "scaling.num_workers", "must be at least 1")
    need(sc.cpus_per_worker > 0, "scaling.cpus_per_worker", "must be positive")
    need(sc.gpus_per_worker > 0, "scaling.gpus_per_worker", "must be positive")
    need(sc.trial_cpus > 0, "scaling.trial_cpus", "must be positive")
    need(sc.gpu_memory_gb > 0, "scaling.gpu_memory_gb", "must be positive")
    s = config.search
    need(s.max_concurrent_trials >= 1, "search.max_concurrent_trials", "must be at least 1")
    need(s.max_failures >= 0, "search.max_failures", "must be >= 0")
    for build in (selection_policy, objective, learning_rates, stop_rules):
        try:
            build(config)
        except SettingError as exc:
            errors.append(f"{src}: search.{exc.field}: {exc.message}")
    need(bool(config.name) and "/" not in config.name, "name", "must be a non-empty name without '/'")
    if errors:
        raise ConfigError("\n".join(errors))


def selection_policy(config: Config) -> SelectionPolicy:
    """The tree's selection policy from the `search:` section."""
    s = config.search
    return SelectionPolicy(s.beam_width, s.epsilon, s.min_gain, s.max_depth, s.max_trials)


def objective(config: Config) -> Objective:
    """The search objective from the `search:` section."""
    return Objective(config.search.objective, config.search.spec_floor)


def learning_rates(config: Config) -> LearningRates:
    """The learning rates every node runs at: `search.lr_candidates`, else three over a decade around `train.lr`."""
    candidates = config.search.lr_candidates
    rates = tuple(candidates) if candidates is not None else LearningRates.around(config.train.lr)
    return LearningRates(rates, config.search.lr_keep)


def stop_rules(config: Config) -> StopRules:
    """The scheduler's stop rules from the `search:` section."""
    s = config.search
    return StopRules(s.vers_margin, s.prune_after, s.uni_margin, s.min_evals)
