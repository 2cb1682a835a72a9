"""The search's settings as small dataclasses that check themselves: the one place they are validated.

`config.py` builds them from the `search:` section and reports a `SettingError` under the key
`search.<field>`; the tree, the stop rules and the benchmark build them directly.
Pure Python: no Ray, no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class SettingError(ValueError):
    """A search setting with an impossible value; `field` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class SelectionPolicy:
    """Which nodes of a level are expanded, and when the search stops.

    beam_width: promising nodes kept per level (best first).
    epsilon: also keep nodes whose rank value is within epsilon of the best promising node's.
    min_gain: a child must beat its parent's rank value by more than this to be promising.
    max_depth: deepest level run (None: no limit). max_trials: Tune trials started, each learning-rate
        run of a node being one trial, references included (None: no limit).
    """

    beam_width: int = 1
    epsilon: float = 0.0
    min_gain: float = 0.0
    max_depth: int | None = None
    max_trials: int | None = None

    def __post_init__(self) -> None:
        _check(self.beam_width >= 1, "beam_width", f"must be at least 1, got {self.beam_width}")
        _check(self.epsilon >= 0, "epsilon", f"must be >= 0, got {self.epsilon}")
        _check(self.min_gain >= 0, "min_gain", f"must be >= 0, got {self.min_gain}")
        _check(self.max_depth is None or self.max_depth >= 1, "max_depth", "must be at least 1 or null")
        _check(self.max_trials is None or self.max_trials >= 1, "max_trials", "must be at least 1 or null")


@dataclass(frozen=True)
class LearningRates:
    """The learning rates every trained node is run at, and how many runs survive the first evaluation point.

    candidates: one Tune trial per value for each node without its own `lr`.
    keep: runs of a node kept at its first evaluation point (the best by the objective); the
        others are stopped there (successive halving). Full SFT, the yardstick, keeps every run.
    """

    candidates: tuple[float, ...] = (4e-5,)
    keep: int = 1

    def __post_init__(self) -> None:
        _check(len(self.candidates) >= 1, "lr_candidates", "needs at least one learning rate")
        _check(all(c > 0 and math.isfinite(c) for c in self.candidates), "lr_candidates",
               f"learning rates must be positive numbers, got {list(self.candidates)}")
        _check(len(set(self.candidates)) == len(self.candidates), "lr_candidates",
               f"learning rates must be distinct, got {list(self.candidates)}")
        _check(self.keep >= 1, "lr_keep", f"must be at least 1, got {self.keep}")

    def for_node(self, own_lr: float | None) -> tuple[float, ...]:
        """The learning rates a node is run at: its own (a search space's `learning_rate` rule), else every
        candidate. The one place this precedence is decided."""
        return (own_lr,) if own_lr is not None else self.candidates

    @staticmethod
    def around(lr: float, count: int = 3) -> tuple[float, ...]:
        """`count` values spanning a decade centred on `lr` (log-spaced, three significant digits)."""
        if count == 1:
            return (lr,)
        return tuple(float(f"{lr * 10 ** (i / (count - 1) - 0.5):.3g}") for i in range(count))


@dataclass(frozen=True)
class StopRules:
    """When the scheduler stops a run early (core/rules.py applies them).

    vers_margin: stop a run whose Vers is more than this below the incumbent's (the best node of
        the levels above: under spec_floor the best qualifying one) while its Spec is not higher (None: off).
    prune_after: under spec_floor, from this fraction of a run's steps on, stop it when its best
        gain so far, projected linearly to the end, stays below the floor (None: off).
    uni_margin: under uni, stop a run whose Uni is more than this below the incumbent's (None: off).
    min_evals: evaluation points a run reports before the vers and uni rules judge it.
    """

    vers_margin: float | None = 0.1
    prune_after: float | None = 0.5
    uni_margin: float | None = None
    min_evals: int = 1

    def __post_init__(self) -> None:
        _check(self.vers_margin is None or self.vers_margin >= 0, "vers_margin", "must be >= 0 or null")
        _check(self.prune_after is None or 0 < self.prune_after <= 1, "prune_after", "must be in (0, 1] or null")
        _check(self.uni_margin is None or self.uni_margin >= 0, "uni_margin", "must be >= 0 or null")
        _check(self.min_evals >= 1, "min_evals", f"must be at least 1, got {self.min_evals}")


def _check(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise SettingError(field, message)
