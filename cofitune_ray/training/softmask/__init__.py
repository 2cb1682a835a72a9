"""Soft-masking, CoFiTune's fine level, in one place (docs/softmask.md).

`mask` scales each trained row by (1 - the importance of the unit it feeds), in the `grad` or `update`
mode; `importance` computes unit importance (virtual masks, two dropout passes, normalisation) and
caches it on storage; `job` runs that computation as a cached Ray Train job. `ImportanceRef`, here,
is what a run is given to find a computed importance: this module imports nothing heavy, so passing
one around costs no torch import.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImportanceRef:
    """Where a run's cached importance lives and the key it must match."""

    directory: str
    key: dict
