"""The smoke search through the CLI, shared by the end-to-end and console tests (each search costs minutes of Ray
Train start-up on 2 cores, so the session runs the whole smoke search once).

`run_killed_and_resumed`: `python -m cofitune_ray.search --config configs/smoke.yaml`, one versatility set given as
a local lm-evaluation-harness task, its driver killed once the first trained node (not a reference) has finished,
then `--resume` to the end. Both drivers' stdout and stderr are kept, line by line.
"""

import json
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cofitune_ray.core.layout import ATTEMPTS_FILE
from tiny import write_lm_eval_task

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "configs" / "smoke.yaml"
TOY_DATA = REPO / "assets" / "toyworld" / "cliff" / "seed-0" / "data"
LM_EVAL_SET = "upper-lm"
FINISHED_TRAINED_NODE = re.compile(r"^\[cofitune\] (n\d+) (?!base model|full SFT).* -> finished\b")


def lm_eval_versatility(tasks: Path) -> str:
    """The override giving the smoke config's versatility sets with `upper` replaced by the same data as a local
    lm-eval task (its YAML written under `tasks`)."""
    write_lm_eval_task(tasks, "toy_upper", TOY_DATA / "upper" / "eval.jsonl", max_gen_toks=8)
    sets = [{"name": n, "path": str(TOY_DATA / n / "eval.jsonl")} for n in ("copy", "reverse")]
    sets.append({"name": LM_EVAL_SET, "lm_eval": {"task": "toy_upper", "include_path": str(tasks)}})
    return "data.versatility=" + json.dumps(sets)


def cli(storage: Path, address: str, versatility: str, *extra: str, overrides: tuple[str, ...] = ()) -> list[str]:
    """The smoke search's command line on the cluster at `address`; `extra`: options such as --resume."""
    return [sys.executable, "-m", "cofitune_ray.search", "--config", str(SMOKE), f"storage_path={storage}",
            versatility, *overrides, "--address", address, *extra]


def attempts(run_dir: Path) -> dict[str, int]:
    """Training starts per run directory (`node-<run id>`)."""
    return {p.parent.name: len(p.read_text().splitlines()) for p in (run_dir / "nodes").glob(f"*/{ATTEMPTS_FILE}")}


@dataclass(frozen=True)
class ResumedSearch:
    """The smoke search, killed and resumed."""

    run_dir: Path
    first_lines: list[str]  # what the killed driver printed up to its kill
    resumed_lines: list[str]  # what the resuming driver printed, to its end
    finished_before: list[str]  # the trained node whose end the kill followed
    attempts_before: dict[str, int]  # `attempts(run_dir)` between the two drivers

    @property
    def resumed_output(self) -> str:
        return "\n".join(self.resumed_lines) + "\n"


def run_killed_and_resumed(storage: Path, address: str, versatility: str) -> ResumedSearch:
    first = subprocess.Popen(cli(storage, address, versatility), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    first_lines, finished_before = [], []
    for line in first.stdout:
        first_lines.append(line.rstrip("\n"))
        match = FINISHED_TRAINED_NODE.match(line.strip())
        if match:
            finished_before.append(match.group(1))
            break
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    assert finished_before, "the first run ended before any trained node finished:\n" + "\n".join(first_lines)
    run_dir = storage / "smoke"
    before = attempts(run_dir)
    resumed = subprocess.run(cli(storage, address, versatility, "--resume"), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, timeout=1200)
    assert resumed.returncode == 0, resumed.stdout[-6000:]
    return ResumedSearch(run_dir, first_lines, resumed.stdout.splitlines(), finished_before, before)
