"""The layers of the package: the pure core imports neither Ray nor torch, and no layer imports one above it."""

import ast
import re
import subprocess
import sys
from pathlib import Path


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
    package = Path(__file__).resolve().parents[1] / "cofitune_ray"
    allowed = {"core": {"core"}, "training": {"core", "training", "config"},
               "tuning": {"core", "training", "tuning", "config"}, "outputs": {"core", "training", "outputs", "config"},
               "plan": {"core", "training", "plan", "config"}}
    wrong = []
    for layer, may in allowed.items():
        for module in (package / layer).glob("*.py"):
            for node in ast.walk(ast.parse(module.read_text())):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cofitune_ray."):
                    target = node.module.split(".")[1]
                    if target not in may:
                        wrong.append(f"{layer}/{module.name} imports cofitune_ray.{target}")
    assert not wrong, wrong


PACKAGE = Path(__file__).resolve().parents[1] / "cofitune_ray"
ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"
#: A package-internal name in a table's imports column: a layer (`core`), a module of one (`core.tree`), or a
#: module beside the layers (`config`).
_INTERNAL = re.compile(r"\b(?:(?:core|training|tuning|outputs|toyworld|realworld|plan)(?:\.[a-z_]+)*"
                       r"|config|preflight|cluster|console|search)\b")


def _internal_imports(path: Path) -> set[str]:
    """The package modules a module imports, as `core.tree` or `config`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
            [a.name for a in node.names] if isinstance(node, ast.Import) else []
        found |= {n[len("cofitune_ray."):] for n in names if n.startswith("cofitune_ray.")}
    return found


def _documented_modules() -> dict[str, str | None]:
    """Every module a table row of docs/architecture.md names (`core/tree.py`), with its imports cell if any."""
    rows = {}
    for line in ARCHITECTURE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        match = re.fullmatch(r"`([a-z_/]+\.py)`", cells[0]) if line.startswith("|") else None
        if match:
            rows[match.group(1)] = cells[2] if len(cells) > 2 else None
    return rows


def test_config_imports_nothing_of_training():
    """`config.py` sits beneath the layers that read it: no arrow from it up into training/."""
    assert not {m for m in _internal_imports(PACKAGE / "config.py") if m.split(".")[0] != "core"}


def test_architecture_doc_names_every_module_and_only_modules_that_exist():
    documented = _documented_modules()
    modules = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
               if p.name not in ("__init__.py", "__main__.py")}
    assert sorted(set(documented) - modules) == [], "docs/architecture.md names modules that do not exist"
    assert sorted(modules - set(documented)) == [], "modules missing from docs/architecture.md"


def test_architecture_doc_lists_each_modules_imports():
    wrong = []
    for path, cell in _documented_modules().items():
        if cell is None:
            continue
        declared = set(_INTERNAL.findall(cell))
        actual = _internal_imports(PACKAGE / path) - {path[:-3].replace("/", ".")}
        covered = lambda name, names: any(name == d or name.startswith(d + ".") for d in names)  # noqa: E731
        missing = sorted(a for a in actual if not covered(a, declared))
        extra = sorted(d for d in declared if not any(covered(a, {d}) for a in actual))
        if missing or extra:
            wrong.append(f"{path}: not listed {missing}, listed but not imported {extra}")
    assert not wrong, "\n".join(wrong)


def test_statuses_are_written_only_as_the_enum():
    """A node's or run's status is `core.tree.Status`, never a string literal spelled out again elsewhere."""
    from cofitune_ray.core.tree import Status

    values = {s.value for s in Status}
    found = []
    for path in list(PACKAGE.rglob("*.py")) + list((PACKAGE.parent / "benchmarks").glob("*.py")):
        tree = ast.parse(path.read_text())
        definition = {id(n) for c in ast.walk(tree) if isinstance(c, ast.ClassDef) and c.name == "Status"
                      for n in ast.walk(c)}  # the enum's own values
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in values and id(node) not in definition:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {node.value!r}")
    assert not found, "\n".join(found)


def test_run_directory_names_are_spelled_only_in_the_layout_module():
    """Every file name of a run directory comes from `core.layout` (docstrings may describe them)."""
    from cofitune_ray.core import layout

    names = {v for k, v in vars(layout).items() if k.endswith("_FILE") or k == "DRIVER_LOG"}
    names |= set(layout.REPORT_FILES.values())
    found = []
    for path in [*PACKAGE.rglob("*.py"), *(PACKAGE.parent / "benchmarks").glob("*.py"),
                 *(PACKAGE.parent / "scripts").glob("*.py")]:
        if path.name == "layout.py" and path.parent.name == "core":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and n.body
                      and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                found += [f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {name}" for name in names
                          if name in node.value]
    assert not found, "\n".join(found)
