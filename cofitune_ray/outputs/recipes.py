"""The winner's recipe for the tools users scale with: axolotl and LLaMA-Factory.

Written next to `best_model/` in `recipes/`:

  axolotl.yaml      `unfrozen_parameters`: regexes that select exactly the trained parameters under
                    axolotl's rules (a `.` is a literal dot unless it starts `.+`; a pattern matches
                    from the start of a name; `$` ends it), plus the learning rate and schedule.
  llamafactory.yaml only when LLaMA-Factory's options select exactly the trained parameters:
                    `finetuning_type: full`, or `finetuning_type: freeze` with
                    `freeze_trainable_layers` (n > 0: the last n layers, n < 0: the first -n) and
                    `freeze_trainable_modules` (whole blocks of a layer, e.g. `self_attn`, `mlp`,
                    each selecting every parameter whose name contains `.<layer>.<block>`).
  README.md         what the files are, and why llamafactory.yaml is missing when it is (e.g. a
                    middle layer range, or up_proj without gate_proj): never an approximation.

Pure functions of the winner's part, its trained parameter names, the model's parameter names, its
learning rate and the run's config; `outputs/results.py` calls `write_recipes`.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from cofitune_ray.config import Config
from cofitune_ray.core.node import ModelPart

AXOLOTL_FILE = "axolotl.yaml"
LLAMAFACTORY_FILE = "llamafactory.yaml"
README_FILE = "README.md"

#: A parameter inside a decoder layer: `<stack>.<layer index>.<rest>`, e.g. model.layers.3.mlp.up_proj.weight.
_LAYER_PARAMETER = re.compile(r"^(?P<stack>.+\.layers)\.(?P<layer>\d+)\.(?P<rest>.+)$")
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_.]+$")  # no character a regex would read specially, apart from '.'


def axolotl_patterns(trained_names: list[str]) -> list[str]:
    """Regexes that match exactly `trained_names` under axolotl's `unfrozen_parameters` rules.

    Parameters of decoder layers are grouped by the layers they occur in, e.g.
    `^model.layers.(2|3).mlp.(up_proj|down_proj).weight$`; any other name is listed as `^name$`.
    """
    layers_of: dict[tuple[str, str], list[str]] = {}  # (stack, rest) -> layer indices
    patterns = []
    for name in trained_names:
        if not _PLAIN_NAME.match(name):
            raise ValueError(f"parameter name {name!r} has characters a regex would not read literally")
        match = _LAYER_PARAMETER.match(name)
        if match:
            layers_of.setdefault((match["stack"], match["rest"]), []).append(match["layer"])
        else:
            patterns.append(f"^{name}$")
    rests_of: dict[tuple[str, tuple[str, ...]], list[str]] = {}  # (stack, layers) -> rests trained in all of them
    for (stack, rest), layers in layers_of.items():
        rests_of.setdefault((stack, tuple(layers)), []).append(rest)
    for (stack, layers), rests in rests_of.items():
        modules_of: dict[tuple[str, str], list[str]] = {}  # (block, leaf) -> modules: self_attn.{q,k}_proj.weight
        for rest in rests:
            *block, module, leaf = rest.split(".") if rest.count(".") >= 2 else (rest, "", "")
            modules_of.setdefault((".".join(block), leaf), []).append(module)
        for (block, leaf), modules in modules_of.items():
            tail = f"{block}.{_either(modules)}.{leaf}" if leaf else block
            patterns.append(f"^{stack}.{_either(layers)}.{tail}$")
    return patterns


def _either(items: list[str]) -> str:
    return items[0] if len(items) == 1 else "(" + "|".join(items) + ")"


def llamafactory_method(trained_names: list[str], parameter_names: list[str]) -> tuple[dict | None, str]:
    """LLaMA-Factory's options that select exactly `trained_names`, or (None, why they cannot)."""
    trained = set(trained_names)
    if trained == set(parameter_names):
        return {"finetuning_type": "full"}, ""
    located = {name: _LAYER_PARAMETER.match(name) for name in parameter_names}
    outside = [name for name in trained_names if not located[name]]
    if outside:
        return None, f"it trains {outside[0]}, outside the decoder layers, together with only part of the layers"
    num_layers = 1 + max(int(m["layer"]) for m in located.values() if m)
    layers = sorted({int(located[name]["layer"]) for name in trained_names})
    count = len(layers)
    if layers == list(range(num_layers - count, num_layers)):
        trainable_layers = count
    elif layers == list(range(count)):
        trainable_layers = -count
    else:
        return None, (f"it trains layer(s) {', '.join(map(str, layers))} of a {num_layers}-layer model, and "
                      f"freeze_trainable_layers selects only the first or the last n layers")
    blocks = sorted({located[name]["rest"].split(".")[0] for name in trained_names})
    selected = {name for name in parameter_names
                if any(f".{layer}.{block}" in name for layer in layers for block in blocks)}
    extra = [name for name in parameter_names if name in selected - trained]
    if extra:
        return None, (f"freeze_trainable_modules selects whole blocks ({', '.join(blocks)}) of a layer, which would "
                      f"also train {extra[0]} ({len(extra)} tensors the node leaves frozen)")
    return {"finetuning_type": "freeze", "freeze_trainable_layers": trainable_layers,
            "freeze_trainable_modules": ",".join(blocks)}, ""


def recipe_files(part: ModelPart, trained_names: list[str], parameter_names: list[str], lr: float,
                 config: Config) -> dict[str, str]:
    """The recipe files (name -> text): axolotl.yaml, README.md, and llamafactory.yaml when it is exact."""
    unknown = sorted(set(trained_names) - set(parameter_names))
    if unknown:
        raise ValueError(f"trained parameters the model does not have: {unknown[:3]}")
    wanted = set(trained_names)
    trained = [name for name in parameter_names if name in wanted]  # model order
    t, s = config.train, config.scaling
    header = [
        f"Recipe for the CoFiTune winner {part.describe()} ({part.key()}),",
        f"written by cofitune-ray from the run '{config.name}' on {config.model.path}.",
        f"It trains exactly {len(trained)} parameter tensors; every other parameter stays frozen.",
        f"The search used {s.num_workers} worker(s): global batch = micro batch x accumulation x "
        f"{s.num_workers} = {t.batch_size * t.grad_accum_steps * s.num_workers}; keep it when you scale out.",
        "Add your datasets and output directory.",
    ]
    if part.softmask:
        header.append("NOTE: the node soft-masks its updates by unit importance; this tool cannot, so this recipe "
                      "trains the same parameters without soft-masking.")
    files = {AXOLOTL_FILE: _yaml(header, {"base_model": config.model.path,
                                          "unfrozen_parameters": axolotl_patterns(trained),
                                          **_axolotl_training(lr, config)})}
    method, why_not = llamafactory_method(trained, parameter_names)
    if method is not None:
        files[LLAMAFACTORY_FILE] = _yaml(header, {"model_name_or_path": config.model.path, "stage": "sft",
                                                  "do_train": True, **method, **_llamafactory_training(lr, config)})
    readme = [
        f"# Recipes for the winner: {part.describe()}",
        "",
        f"`{part.key()}` trains {len(trained)} parameter tensors, learning rate {lr:g}.",
        "",
        f"- `{AXOLOTL_FILE}`: axolotl; `unfrozen_parameters` matches exactly those tensors.",
        f"- `{LLAMAFACTORY_FILE}`: LLaMA-Factory ({method['finetuning_type']} tuning), exactly those tensors."
        if method else
        f"- no `{LLAMAFACTORY_FILE}`: LLaMA-Factory cannot select exactly this node: {why_not}. "
        f"Use `{AXOLOTL_FILE}`, or train this node with cofitune-ray.",
    ]
    if part.softmask:
        readme += ["", "Neither tool soft-masks updates by unit importance: the recipes train the same parameters "
                       "without it."]
    files[README_FILE] = "\n".join(readme) + "\n"
    return files


def _axolotl_training(lr: float, config: Config) -> dict:
    t = config.train
    settings = {"learning_rate": lr, "lr_scheduler": t.schedule, "warmup_ratio": t.warmup_ratio,
                "optimizer": "adamw_torch", "weight_decay": t.weight_decay, "adam_beta1": t.betas[0],
                "adam_beta2": t.betas[1], "max_grad_norm": t.grad_clip or 0.0, "num_epochs": t.epochs}
    if t.max_steps:
        settings["max_steps"] = t.max_steps
    return {**settings, "micro_batch_size": t.batch_size, "gradient_accumulation_steps": t.grad_accum_steps,
            "sequence_len": config.data.max_seq_length, "train_on_inputs": config.data.loss_on == "sequence",
            "bf16": "auto" if t.bf16 == "auto" else t.bf16 == "on"}


def _llamafactory_training(lr: float, config: Config) -> dict:
    t = config.train
    settings = {"learning_rate": lr, "lr_scheduler_type": t.schedule, "warmup_ratio": t.warmup_ratio,
                "weight_decay": t.weight_decay, "adam_beta1": t.betas[0], "adam_beta2": t.betas[1],
                "max_grad_norm": t.grad_clip or 0.0, "num_train_epochs": float(t.epochs)}
    if t.max_steps:
        settings["max_steps"] = t.max_steps
    return {**settings, "per_device_train_batch_size": t.batch_size,
            "gradient_accumulation_steps": t.grad_accum_steps, "cutoff_len": config.data.max_seq_length,
            "train_on_prompt": config.data.loss_on == "sequence", "bf16": t.bf16 != "off"}


def _yaml(header: list[str], body: dict) -> str:
    return "".join(f"# {line}\n" for line in header) + yaml.safe_dump(body, sort_keys=False, width=1000)


def write_recipes(out_dir: Path, part: ModelPart, trained_names: list[str], parameter_names: list[str], lr: float,
                  config: Config) -> dict[str, Path]:
    """Write `recipe_files` into `out_dir`; return their paths by file name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, text in recipe_files(part, trained_names, parameter_names, lr, config).items():
        paths[name] = out_dir / name
        paths[name].write_text(text)
    return paths
