"""The layers of the package: the pure search core imports neither Ray nor torch."""

import subprocess
import sys


def test_core_imports_neither_ray_nor_torch():
    code = (
        "import sys; import cofitune_ray.core, cofitune_ray.core.node, cofitune_ray.core.space, cofitune_ray.core.tree; "
        "heavy = sorted(m for m in ('ray', 'torch', 'transformers') if m in sys.modules); "
        "assert not heavy, heavy"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
