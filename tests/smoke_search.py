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
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cofitune_ray.core.layout import ATTEMPTS_FILE
from ray_processes import cluster_state
from tiny import write_lm_eval_task

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "configs" / "smoke.yaml"
TOY_DATA = REPO / "assets" / "toyworld" / "cliff" / "seed-0" / "data"
LM_EVAL_SET = "upper-lm"
SEARCH_TIMEOUT_S = 900  # the whole smoke search takes 4-5 minutes on 2 cores
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


class SearchDriver:
    """A search's driver process (`command`), its stdout and stderr read line by line into `lines` as they come;
    with `kill_at`, the driver is killed (SIGKILL) at the first line that matches it, the last line kept."""

    def __init__(self, command: list[str], kill_at: re.Pattern | None = None):
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._kill_at = kill_at
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            if self._kill_at is not None and self._kill_at.match(self.lines[-1].strip()):
                self.process.send_signal(signal.SIGKILL)
                return

    def wait(self, timeout: float = SEARCH_TIMEOUT_S) -> int:
        """The driver's return code once it has ended. One that has not ended after `timeout` seconds is killed,
        and the test fails with its last lines, its threads' stacks (SIGUSR1: the CLI's command-line entry) and
        what the cluster holds then."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            printed = len(self.lines)
            self.process.send_signal(signal.SIGUSR1)
            state = cluster_state()
            time.sleep(2)  # the stacks are printed at once; the pipe delivers them
            self.process.kill()
            self.process.wait()
            self._reader.join(timeout=10)
            raise AssertionError(f"the search had not ended after {timeout:g} s; its last lines, then its stacks:\n"
                                 + "\n".join(self.lines[max(0, printed - 40):])
                                 + "\n\nthe cluster then:\n" + state) from None
        finally:  # pytest's own timeout, or an interrupt: no driver left running on the session's cluster
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=10)
        return self.process.returncode


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
    first = SearchDriver(cli(storage, address, versatility), kill_at=FINISHED_TRAINED_NODE)
    first.wait()
    first_lines = first.lines
    finished = FINISHED_TRAINED_NODE.match(first_lines[-1].strip()) if first_lines else None
    assert finished, "the first run ended before any trained node finished:\n" + "\n".join(first_lines)
    finished_before = [finished.group(1)]
    run_dir = storage / "smoke"
    before = attempts(run_dir)
    resumed = SearchDriver(cli(storage, address, versatility, "--resume"))
    assert resumed.wait() == 0, "\n".join(resumed.lines[-60:])
    return ResumedSearch(run_dir, first_lines, resumed.lines, finished_before, before)
