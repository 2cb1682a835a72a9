"""Files written whole: a reader (a resumed search, the user, a test) never sees half of one."""

from __future__ import annotations

import os
from pathlib import Path


def write_whole(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a temporary sibling that replaces it in one step."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
