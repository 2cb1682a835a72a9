"""Fixed score tables for search tests, and an executor that plays them back as runs.

`PAPER_SCORES` follows the paper's story on the `search_spaces/cofitune.yaml` tree under the `uni`
objective: middle-plus wins level 1, (25%, 50%] level 2, FFN level 3, up+down level 4, and
soft-mask on the fine level. `table_results` turns a table entry into the results one learning-rate
run reports; `TableExecutor` serves them to `core.drive.drive`, and the Ray tests' trainable
reports the same results to Tune, so both paths see identical runs.
"""

from cofitune_ray.core.node import ATTENTION_MODULES, FFN_MODULES, ModelPart

STEPS_PER_EVAL = 10


def key(lo: float, hi: float, modules=None, softmask: bool = False) -> str:
    part = ModelPart(layer_range=(lo, hi), softmask=softmask, **({"modules": modules} if modules else {}))
    return part.key()


UP_DOWN = ("up_proj", "down_proj")

#: node key -> (spec, vers) at the node's best learning rate
PAPER_SCORES = {
    "base": (0.10, 0.70),
    "full|mask=off": (0.90, 0.30),
    key(0, 0.5): (0.60, 0.40),
    key(0.25, 0.75): (0.70, 0.50),
    key(0.5, 1): (0.50, 0.30),
    key(0.25, 0.5): (0.70, 0.60),
    key(0.5, 0.75): (0.60, 0.50),
    key(0.25, 0.5, ATTENTION_MODULES): (0.55, 0.65),
    key(0.25, 0.5, FFN_MODULES): (0.75, 0.65),
    key(0.25, 0.5, UP_DOWN): (0.78, 0.72),
    key(0.25, 0.5, UP_DOWN, softmask=True): (0.76, 0.80),
}

#: The nodes a beam-1 search of the paper tree trains, level by level.
PAPER_PATH_BEAM_1 = [
    ["base", "full|mask=off"],
    [key(0, 0.5), key(0.25, 0.75), key(0.5, 1)],
    [key(0.25, 0.5), key(0.5, 0.75)],
    [key(0.25, 0.5, ATTENTION_MODULES), key(0.25, 0.5, FFN_MODULES)],
    [key(0.25, 0.5, UP_DOWN)],
    [key(0.25, 0.5, UP_DOWN, softmask=True)],
]


def trained_params(part: ModelPart) -> int:
    """A stand-in parameter count: proportional to the layers and modules trained."""
    if part.kind == "base":
        return 0
    lo, hi = part.layer_range if part.kind == "partial" else (0.0, 1.0)
    return round(1000 * (hi - lo) * len(part.modules))


def lr_effect(lr: float | None, best_lr: float) -> tuple[float, float]:
    """(spec, vers) offsets at the last evaluation point of a run at `lr` against the table's values at `best_lr`.

    A lower rate learns less and forgets less; a higher one learns as much and forgets more.
    """
    if lr is None or lr == best_lr:
        return 0.0, 0.0
    return (-0.20, +0.05) if lr < best_lr else (0.0, -0.15)


def spec_at(point: int, evals: int, end: float, base: float, slow: bool) -> float:
    """Spec at evaluation point `point` of `evals` for a run ending at `end`: 0.1 below per point still to
    come, or, for a slow (lower) rate, a straight line up from the base model's Spec."""
    if slow:
        return base + (end - base) * point / evals
    return end - 0.1 * (evals - point)


def table_results(part: ModelPart, lr: float | None, table: dict, num_evals: int = 2, default=None,
                  best_lr: float = 1e-4) -> list[dict]:
    """The results of one run: evaluation points rising to the table's values at the last one, then a final result.

    Spec climbs by 0.1 per point (a rate below `best_lr`: in a straight line from the base model's
    Spec, so learning slowly) and Vers falls by 0.02 per point, so earlier points have more Vers and
    less Spec, as in real runs.
    """
    spec_value, vers_value = table.get(part.key(), default) if default else table[part.key()]
    d_spec, d_vers = lr_effect(lr, best_lr) if part.trains else (0.0, 0.0)
    slow = part.trains and lr is not None and lr < best_lr
    base_spec = (table.get("base", default) if default else table["base"])[0]
    evals = num_evals if part.trains else 1
    total = STEPS_PER_EVAL * evals if part.trains else 0
    results = []
    for i in range(1, evals + 1):
        lag = evals - i
        s = round(spec_at(i, evals, spec_value + d_spec, base_spec, slow), 6)
        v = round(vers_value + d_vers + 0.02 * lag, 6)
        results.append({"eval_index": i, "spec": s, "vers": v, "uni": (s + v) / 2,
                        "step": STEPS_PER_EVAL * i if part.trains else 0,
                        "total_steps": total, "trained_params": trained_params(part),
                        "checkpoint": f"ckpt/{part.key()}/{lr}/{i}" if part.trains else None})
    results.append({"final": True, "train_steps": total, "total_steps": total, "wall_time_s": float(evals),
                    "trained_params": trained_params(part)})
    return results


class TableExecutor:
    """Plays table results back as runs (`core.drive.Executor`); records which runs started and how far they got."""

    def __init__(self, table: dict, num_evals: int = 2, default=None, best_lr: float = 1e-4):
        self.table, self.num_evals, self.default, self.best_lr = table, num_evals, default, best_lr
        self.started: list[str] = []
        self.consumed: dict[str, int] = {}

    def run(self, node, run):
        self.started.append(run.id)
        self.consumed[run.id] = 0
        for result in table_results(node.part, run.lr, self.table, self.num_evals, self.default, self.best_lr):
            self.consumed[run.id] += 1
            yield result
