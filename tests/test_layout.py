"""The layers of the package: the pure core imports neither Ray nor torch, and no layer imports one above it."""

import subprocess
import sys


def test_core_imports_neither_ray_nor_torch():
    code = (
        "import sys, pkgutil, importlib, cofitune_ray.core; "
        "[importlib.import_module(f'cofitune_ray.core.{m.name}') "
        "for m in pkgutil.iter_modules(cofitune_ray.core.__path__)]; "
        "heavy = sorted(m for m in ('ray', 'torch', 'transformers') if m in sys.modules); "
        "assert not heavy, heavy"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_layers_import_only_the_layers_beneath_them():
    import ast
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "cofitune_ray"
    allowed = {"core": {"core"}, "training": {"core", "training", "config"},
               "tuning": {"core", "training", "tuning", "config"}, "outputs": {"core", "training", "outputs", "config"}}
    wrong = []
    for layer, may in allowed.items():
        for module in (package / layer).glob("*.py"):
            for node in ast.walk(ast.parse(module.read_text())):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cofitune_ray."):
                    target = node.module.split(".")[1]
                    if target not in may:
                        wrong.append(f"{layer}/{module.name} imports cofitune_ray.{target}")
    assert not wrong, wrong
