"""A fixed score table for search tests: (Spec, Vers) per node key; Uni is their mean.

The values follow the paper's story on the `search_spaces/cofitune.yaml` tree: middle-plus wins
level 1, (25%, 50%] level 2, FFN level 3, up+down level 4, and soft-mask on the fine level.
"""

from cofitune_ray.core.node import ATTENTION_MODULES, FFN_MODULES, ModelPart


def key(lo: float, hi: float, modules=None, softmask: bool = False) -> str:
    spec = ModelPart(layer_range=(lo, hi), softmask=softmask, **({"modules": modules} if modules else {}))
    return spec.key()


UP_DOWN = ("up_proj", "down_proj")

#: node key -> (spec, vers)
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


def trained_params(spec: ModelPart) -> int:
    """A stand-in parameter count: proportional to the layers and modules trained."""
    if spec.kind == "base":
        return 0
    lo, hi = spec.layer_range if spec.kind == "partial" else (0.0, 1.0)
    return round(1000 * (hi - lo) * len(spec.modules))


def evaluation_points(spec: ModelPart, table: dict, num_evals: int = 1, default=None) -> list[dict]:
    """The results one trial reports: Spec, Vers and Uni rise to the table's values at the last point."""
    spec_value, vers_value = table.get(spec.key(), default) if default else table[spec.key()]
    points = []
    for i in range(1, num_evals + 1):
        lag = 0.02 * (num_evals - i)
        s, v = spec_value - lag, vers_value - lag
        points.append({"eval_index": i, "spec": s, "vers": v, "uni": (s + v) / 2, "trained_params": trained_params(spec)})
    points[-1].update(final=True, best_spec=spec_value, best_vers=vers_value, best_uni=(spec_value + vers_value) / 2)
    return points
