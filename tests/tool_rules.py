"""Which parameters axolotl and LLaMA-Factory train for a config, re-implemented from their docs and source.

axolotl: `unfrozen_parameters` (src/axolotl/utils/freeze.py); LLaMA-Factory: freeze tuning
(`_setup_freeze_tuning` in src/llamafactory/model/adapter.py, options in hparams/finetuning_args.py).
"""

import re


def axolotl_selects(patterns: list[str], names: list[str]) -> set[str]:
    """axolotl's `unfrozen_parameters`: a trailing `[a:b]` is a slice of the tensor (not part of the regex);
    every `.` not followed by `+` is a literal dot; a pattern matches from the start of the name (re.match)."""
    selected = set()
    for pattern in patterns:
        assert not re.search(r"\[[0-9]*(:[0-9]*)?\]$", pattern), "a slice would train only part of a tensor"
        regex = re.compile(re.sub(r"\.(?!\+)", r"\\.", pattern))
        selected |= {name for name in names if regex.match(name)}
    return selected


def llamafactory_selects(recipe: dict, names: list[str], num_layers: int) -> set[str]:
    """LLaMA-Factory: `full` trains everything; `freeze` trains, in the last n layers (n > 0) or the first
    -n (n < 0), every parameter whose name contains `.<layer>.<module>` for a module of the comma-separated
    freeze_trainable_modules (each a first name component after a layer index, or `all`)."""
    if recipe["finetuning_type"] == "full":
        return set(names)
    assert recipe["finetuning_type"] == "freeze" and not recipe.get("freeze_extra_modules")
    n = recipe["freeze_trainable_layers"]
    layer_ids = range(max(0, num_layers - n), num_layers) if n > 0 else range(min(-n, num_layers))
    modules = [m.strip() for m in recipe["freeze_trainable_modules"].split(",")]
    hidden = {name.split(".0.")[-1].split(".")[0] for name in names if ".0." in name}
    assert set(modules) <= hidden | {"all"}, f"LLaMA-Factory would refuse modules {modules} (has {hidden})"
    keys = [f".{i}.{'' if m == 'all' else m}" for m in modules for i in layer_ids]
    return {name for name in names if any(key in name for key in keys)}
