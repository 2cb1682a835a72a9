"""What the search optimises: how evaluation points, runs and nodes are compared (`search.objective`).

`spec_floor` (the default; the paper's aim, "marginal speciality loss"):
    A point's speciality *gain* is its Spec minus the base model's Spec. The full-SFT reference's
    gain G is the highest gain full SFT reaches (over all its learning-rate runs and evaluation
    points). A point *qualifies* when its gain is at least `spec_floor` x G, with G > 0.
    Qualifying points rank by Vers; every other point ranks after them, by gain. So the base model
    (gain 0) can only win when no trained node gains speciality, and full SFT wins when no trained
    part keeps more Vers at the floor.
`uni`:
    The weighted mean of Spec and Vers (`eval.spec_weight`, `eval.vers_weight`), as the worker
    reports it. Every point "qualifies"; points rank by Uni.

Between nodes with the same value, fewer trained parameters rank first (the tree applies that).
Pure Python: no Ray, no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cofitune_ray.core.settings import SettingError

OBJECTIVES = ("spec_floor", "uni")


@dataclass(frozen=True)
class Score:
    """The scores of one evaluation point: Spec, Vers and their weighted mean Uni (all in [0, 1])."""

    spec: float
    vers: float
    uni: float


@dataclass(frozen=True)
class Reference:
    """What `spec_floor` measures gains against: the base model's Spec and full SFT's best gain.

    full_gain is None while full SFT has no evaluation point (nothing can qualify yet).
    """

    base_spec: float = 0.0
    full_gain: float | None = None


@dataclass(frozen=True)
class Objective:
    """The objective of a search: `spec_floor` (with its floor) or `uni`."""

    name: str = "spec_floor"
    spec_floor: float = 0.9

    def __post_init__(self) -> None:
        if self.name not in OBJECTIVES:
            raise SettingError("objective", f"{self.name!r} is not one of {', '.join(OBJECTIVES)}")
        if not 0 < self.spec_floor <= 1:
            raise SettingError("spec_floor", f"must be in (0, 1], got {self.spec_floor}")

    @property
    def needs_full_sft(self) -> bool:
        """Whether the objective measures gains against the full-SFT reference."""
        return self.name == "spec_floor"

    def gain(self, score: Score, reference: Reference) -> float:
        """The point's speciality gain over the base model."""
        return score.spec - reference.base_spec

    def floor_gain(self, reference: Reference) -> float | None:
        """The gain a point needs to qualify, or None when nothing can qualify (no positive G yet)."""
        if reference.full_gain is None or reference.full_gain <= 0:
            return None
        return self.spec_floor * reference.full_gain

    def qualifies(self, score: Score, reference: Reference) -> bool:
        """Whether a point meets the speciality floor (always true under `uni`)."""
        if self.name == "uni":
            return True
        floor = self.floor_gain(reference)
        return floor is not None and self.gain(score, reference) >= floor - 1e-12

    def value(self, score: Score, reference: Reference) -> tuple[int, float]:
        """A sort key, larger is better: (1, Vers) for a qualifying point, (0, gain) otherwise; (1, Uni) under uni."""
        if self.name == "uni":
            return (1, score.uni)
        if self.qualifies(score, reference):
            return (1, score.vers)
        return (0, self.gain(score, reference))

    def rung_value(self, score: Score, reference: Reference, done: float) -> tuple[int, float]:
        """A sort key for comparing a node's learning-rate runs at the rung, where a run has trained
        `done` (in (0, 1]) of its steps: under spec_floor, its gain projected linearly to the end of its
        steps (at most the gain of a perfect Spec) decides whether it qualifies, then its Vers there.

        A fast rate is ahead in speciality early on and a slower one catches up, usually keeping more
        Vers; judged on the gain reached so far the fast rate would always win. Under uni: `value`.
        """
        if self.name == "uni" or not 0 < done < 1:
            return self.value(score, reference)
        floor = self.floor_gain(reference)
        projected = self.projected_gain(self.gain(score, reference), reference, done)
        if floor is not None and projected >= floor - 1e-12:
            return (1, score.vers)
        return (0, projected)

    def projected_gain(self, gain: float, reference: Reference, done: float) -> float:
        """A gain reached after `done` (in (0, 1]) of a run's steps, extended linearly to its end; at most
        the gain of a perfect Spec."""
        return min(gain / done, 1.0 - reference.base_spec) if 0 < done < 1 else gain

    def scalar(self, score: Score, reference: Reference) -> float:
        """One number with the same order as `value` (for Tune's table): 1 + Vers if qualifying, else gain / 2."""
        if self.name == "uni":
            return score.uni
        primary, secondary = self.value(score, reference)
        return 1.0 + secondary if primary else secondary / 2.0

    def beats(self, a: Score, b: Score, reference: Reference, margin: float = 0.0) -> bool:
        """Whether `a` is better than `b` by more than `margin` (in the units of their shared rank value).

        A qualifying point beats a non-qualifying one whatever the margin.
        """
        (pa, va), (pb, vb) = self.value(a, reference), self.value(b, reference)
        return pa > pb or (pa == pb and va > vb + margin)

    def explain(self, score: Score, reference: Reference) -> str:
        """Why a point ranks where it does, in words (for the summary and the report)."""
        if self.name == "uni":
            return f"Uni {score.uni:.3f}"
        gain = self.gain(score, reference)
        if reference.full_gain is None or reference.full_gain <= 0:
            return f"speciality gain {gain:+.3f} (full SFT gained no speciality: no floor)"
        share = gain / reference.full_gain
        if self.qualifies(score, reference):
            return f"qualifies: {share:.0%} of full SFT's speciality gain, Vers {score.vers:.3f}"
        return f"below the floor: {share:.0%} of full SFT's speciality gain (needs {self.spec_floor:.0%})"


def reference_from(base_spec: float | None, full_specs: list[float]) -> Reference:
    """The reference from the base model's Spec (None: unknown, taken as 0) and every Spec full SFT reached."""
    base = 0.0 if base_spec is None or math.isnan(base_spec) else base_spec
    specs = [s for s in full_specs if not math.isnan(s)]
    return Reference(base, max(specs) - base if specs else None)
