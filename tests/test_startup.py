"""The CLI answers at once: `--help` and config errors import neither torch, Ray nor transformers.

A user writes a config by trial and error; each try should answer in a fraction of a second, not
after the 3-4 s those libraries take to import. This checks what is imported (Python's
`-X importtime` log of the real command in a subprocess), not a time.
"""

import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "ray", "transformers", "peft", "datasets", "matplotlib", "optuna")


def imported_modules(*args: str, cwd=None) -> tuple[set[str], subprocess.CompletedProcess]:
    """The top-level names of every module a `python -X importtime -m ...` run imported, and the run."""
    run = subprocess.run([sys.executable, "-X", "importtime", "-m", *args], capture_output=True, text=True,
                         timeout=120, cwd=cwd)
    names = set()
    for line in run.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names, run


@pytest.mark.parametrize("command", [
    ("cofitune_ray.search", "--help"),
    ("cofitune_ray.plan", "--help"),
    ("cofitune_ray.plan.cost", "--help"),
    ("cofitune_ray.search", "--config", "nope.yaml"),
    ("cofitune_ray.plan", "--config", "nope.yaml"),
])
def test_cli_answers_without_heavy_imports(command):
    names, run = imported_modules(*command)
    assert "cofitune_ray" in names  # the log is read right
    assert not names & set(HEAVY), f"{' '.join(command)} imported {sorted(names & set(HEAVY))}"
    if "--help" in command:
        assert run.returncode == 0 and "usage:" in run.stdout
    else:
        assert run.returncode == 2 and "nope.yaml: config file not found" in run.stderr


TOY = Path(__file__).resolve().parents[1] / "configs" / "toy.yaml"


def test_config_override_and_search_space_errors_answer_without_heavy_imports(tmp_path):
    bad_key = tmp_path / "bad.yaml"
    bad_key.write_text("name: x\nmodel: {path: m}\ntrain: {lrr: 1.0e-4}\n")
    space = tmp_path / "space.yaml"
    space.write_text("references: [base, full]\nlevels: [[not, a, level]]\n")
    cases = {
        "unknown key": (["--config", str(bad_key)], "train.lrr"),
        "bad override": (["--config", str(TOY), "train.lr=fast"], "train.lr"),
        "bad search space": (["--config", str(TOY), f"search.space={space}"], "search.space"),
    }
    for case, (args, named) in cases.items():
        names, run = imported_modules("cofitune_ray.search", *args)
        assert run.returncode == 2 and named in run.stderr, (case, run.stderr)
        assert "Traceback" not in run.stderr, case
        assert not names & set(HEAVY), f"{case}: imported {sorted(names & set(HEAVY))}"
