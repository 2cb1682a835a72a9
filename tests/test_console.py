"""The console: what a search prints, and where the rest goes.

Without Ray: the driver's log routing. With Ray (marker `ray`): the session's smoke search through the CLI
(`smoke_search.py`: killed after its first trained node, then resumed), both drivers' whole stdout+stderr
checked against the line budget and the patterns that must not be there, and `--verbose` bringing Ray's
worker logs back.
"""

import io
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import ray  # noqa: F401  (configures the "ray" logger, as it is in the CLI)
import ray._private.worker as ray_worker
from transformers.utils import logging as transformers_logging

from cofitune_ray.cluster import dashboard_line
from cofitune_ray.console import TUNE_OUTPUT_ENGINE, console_output, log_locations_line
from cofitune_ray.core.layout import DRIVER_LOG
from cofitune_ray.core.tree import SearchTree
from smoke_search import SMOKE

LINE_BUDGET = 150
SLOW_STEP = "The `callbacks.on_step_begin` operation took 0.503 s, which may be a performance bottleneck."
WORKER_POOL = ("WARNING: 8 PYTHON worker processes have been started on node: {node} with address: 127.0.0.1. This "
               "could be a result of using a large number of actors, or due to tasks blocked in ray.get() calls")
NOISE = ["LOAD_GLOBAL", "RETURN_VALUE", "Failed to query", "TrainingReport(", "'spec/", "9223372036854775807",
         "node_trial_", "may be a performance bottleneck", "worker processes have been started"]


@pytest.fixture
def terminal():
    """A stand-in for Ray's terminal handler on the "ray" logger (Ray's own writes to the stderr of import time)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logging.getLogger("ray").addHandler(handler)
    yield stream
    logging.getLogger("ray").removeHandler(handler)


def test_driver_info_goes_to_the_log_file_warnings_to_both(tmp_path, terminal):
    tune_logger = logging.getLogger("ray.tune.test_console")
    with console_output(tmp_path, verbose=False) as log_dir:
        assert os.environ.items() >= TUNE_OUTPUT_ENGINE.items()
        assert not transformers_logging.is_progress_bar_enabled()
        tune_logger.info("an INFO record")
        tune_logger.warning("a WARNING record")
    assert "a WARNING record" in terminal.getvalue() and "an INFO record" not in terminal.getvalue()
    written = (log_dir / DRIVER_LOG).read_text()
    assert log_dir == tmp_path / "logs" and "an INFO record" in written and "a WARNING record" in written
    assert transformers_logging.is_progress_bar_enabled()  # all restored on exit
    assert "RAY_AIR_NEW_OUTPUT" not in os.environ
    tune_logger.info("after the search")
    assert "after the search" in terminal.getvalue() and "after the search" not in (log_dir / DRIVER_LOG).read_text()


def test_verbose_keeps_info_on_the_terminal(tmp_path, terminal):
    with console_output(tmp_path, verbose=True):
        logging.getLogger("ray.tune.test_console").info("an INFO record")
        assert transformers_logging.is_progress_bar_enabled()
    assert "an INFO record" in terminal.getvalue()
    assert "an INFO record" in (tmp_path / "logs" / DRIVER_LOG).read_text()


def raylet_message(*lines: str) -> None:
    """What the driver's error listener does with a raylet message (`ray._private.worker.listen_error_messages`)."""
    ray_worker.print_to_stdstream({"lines": list(lines), "pid": "raylet", "is_err": False}, ignore_prefix=False)


def test_ray_pace_warnings_go_to_the_log_file_only(tmp_path, terminal, capsys):
    with console_output(tmp_path, verbose=False) as log_dir:
        logging.getLogger("ray.tune.utils.util").warning(SLOW_STEP)
        logging.getLogger("ray.tune.test_console").warning("a WARNING record")
        raylet_message(WORKER_POOL.format(node="first"), "a raylet message about a killed worker")
    assert SLOW_STEP not in terminal.getvalue() and "a WARNING record" in terminal.getvalue()
    shown = capsys.readouterr().out
    assert "worker processes" not in shown and "a raylet message about a killed worker" in shown
    written = (log_dir / DRIVER_LOG).read_text()
    assert SLOW_STEP in written and WORKER_POOL.format(node="first") in written and "killed worker" not in written
    logging.getLogger("ray.tune.utils.util").warning(SLOW_STEP)  # Ray's defaults again after the search
    raylet_message(WORKER_POOL.format(node="second"))  # (Ray shows a message once when only its numbers differ)
    assert SLOW_STEP in terminal.getvalue() and "node: second" in capsys.readouterr().out


def test_verbose_shows_ray_pace_warnings(tmp_path, terminal, capsys):
    with console_output(tmp_path, verbose=True):
        logging.getLogger("ray.tune.utils.util").warning(SLOW_STEP)
        raylet_message(WORKER_POOL.format(node="third"))
    assert SLOW_STEP in terminal.getvalue() and "node: third" in capsys.readouterr().out


def test_dashboard_line_says_how_to_get_in():
    assert dashboard_line("127.0.0.1:8265", token_auth=True) == (
        "[cofitune] Ray dashboard: http://127.0.0.1:8265 (it asks for the cluster's token: `ray get-auth-token` "
        "prints it)")
    assert dashboard_line("127.0.0.1:8265", token_auth=False) == "[cofitune] Ray dashboard: http://127.0.0.1:8265"


def test_log_locations_line(tmp_path):
    line = log_locations_line(tmp_path / "logs", "/tmp/ray/session_1", verbose=False)
    assert line == (f"[cofitune] logs: Ray's workers and Ray Train in /tmp/ray/session_1/logs, this driver's in "
                    f"{tmp_path}/logs/driver.log; not shown here (--verbose shows them)")


def run_cli(storage: Path, address: str, *extra: str) -> list[str]:
    """Every line the smoke search prints (stdout and stderr); `extra`: options, then key=value overrides."""
    command = [sys.executable, "-m", "cofitune_ray.search", "--config", str(SMOKE), "--address", address, *extra,
               f"storage_path={storage}"]
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=2300)
    assert done.returncode == 0, done.stdout[-5000:]
    return done.stdout.splitlines()


@pytest.mark.ray
@pytest.mark.timeout(2400)  # a whole smoke search: minutes, and several times that on a loaded shared machine
def test_the_default_console_is_the_search_own_lines(resumed_smoke):
    """The session's smoke search (`smoke_search.py`): its first driver, killed after the first trained node, and
    the driver that resumed it to the end."""
    run_dir, drivers = resumed_smoke.run_dir, (resumed_smoke.first_lines, resumed_smoke.resumed_lines)
    lines = [line for driver in drivers for line in driver]
    text = "\n".join(lines)
    assert len(lines) < LINE_BUDGET, text
    for pattern in NOISE:
        assert pattern not in text, pattern
    own = [line for line in lines if line.startswith("[cofitune] ")]
    for driver in drivers:
        first = next(line for line in driver if line.startswith("[cofitune] "))
        assert first.startswith("[cofitune] preflight ok: llama with 8 layers; 2000 training examples; Spec set "
                                "cipher"), first
        assert any(line.startswith("[cofitune] logs: ") and str(run_dir / "logs" / DRIVER_LOG) in line
                   for line in driver)
    assert "[cofitune] evaluating the base model" in resumed_smoke.first_lines
    assert any(line.startswith("[cofitune] importance: computed by the first soft-masked run") for line in own)
    tree = SearchTree.from_json((run_dir / "tree.json").read_text())
    for depth in range(tree.depth + 1):
        assert any(line.startswith(f"[cofitune] level {depth} (") for line in own), depth
    started = [n for n in tree.nodes.values() if any(run.trial_id for run in n.runs)]
    assert started and all(any(line.startswith(f"[cofitune] {n.id} ") for line in own) for n in started)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert any(line.startswith("CoFiTune search done") for line in lines)
    assert any(line.startswith("Answer: ") for line in lines) and summary["best"]["id"] in tree.nodes
    assert lines[-1] == f"Results: {run_dir}"
    names = {m.group(1) for line in lines for m in [re.match(r"^  (\S+)\s+(RUNNING|PAUSED)\s", line)] if m}
    assert names and all(re.fullmatch(r"n\d+(-lr\S+)?", name) for name in names), names
    runs = {run.id for n in tree.nodes.values() for run in n.runs if run.trial_id}
    assert {p.name for p in (run_dir / "tune").iterdir() if p.is_dir()} == runs
    driver_log = (run_dir / "logs" / DRIVER_LOG).read_text()
    for info in ("Connecting to existing Ray cluster", "Wrote the latest version of all result files"):
        assert info not in text and info in driver_log, info  # Ray's and Tune's INFO records: in the log file


@pytest.mark.ray
def test_verbose_shows_ray_logs(ray_cluster, tmp_path):
    storage = tmp_path  # one trial, the base model's: no importance to compute
    lines = run_cli(storage, ray_cluster.get_runtime_context().gcs_address, "--verbose", "name=verbose",
                    "search.max_trials=1")
    text = "\n".join(lines)
    assert "(RayTrainWorker pid=" in text and "(TrainController pid=" in text
    assert "TrainingReport(" in text  # Ray Train's per-report INFO line, with its metric dict
    assert lines[-1] == f"Results: {storage / 'verbose'}"
