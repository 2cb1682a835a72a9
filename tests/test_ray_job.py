"""The search as a Ray job on a running cluster (`ray start --head` + `ray job submit`), watched
through the Jobs API with the cluster's auth token and through its Prometheus metrics endpoint;
and `--dashboard` printing a dashboard URL that answers."""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from ray_processes import descendants, running
from smoke_search import SMOKE

pytestmark = pytest.mark.ray
BIN = Path(sys.executable).parent
QUICK = ["train.max_steps=6", "eval.every_n_steps=null", "data.max_eval_examples=8"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def auth_token() -> str:
    return (Path.home() / ".ray" / "auth_token").read_text().strip()


def get(url: str, token: str | None = None, timeout: float = 10) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def head_node():
    """A `ray start --head --block` cluster with the dashboard; stopped (only this one) afterwards."""
    # Every port explicit: another cluster on this machine (the test session's) holds the defaults,
    # and a head whose dashboard agent cannot bind its port takes no jobs ("No available agent").
    ports = {name: free_port() for name in ("port", "dashboard", "metrics", "agent_http", "agent_grpc", "runtime_env",
                                            "client", "node_manager", "object_manager")}
    temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")
    # Token auth explicitly on: the head makes the token, `ray job submit` sends it from ~/.ray/auth_token.
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token"}
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={ports['port']}", "--num-cpus=2",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={ports['dashboard']}",
         f"--metrics-export-port={ports['metrics']}", f"--dashboard-agent-listen-port={ports['agent_http']}",
         f"--dashboard-agent-grpc-port={ports['agent_grpc']}", f"--runtime-env-agent-port={ports['runtime_env']}",
         f"--ray-client-server-port={ports['client']}", f"--node-manager-port={ports['node_manager']}",
         f"--object-manager-port={ports['object_manager']}", f"--temp-dir={temp_dir}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    dashboard = f"http://127.0.0.1:{ports['dashboard']}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if get(f"{dashboard}/api/version", auth_token())[0] == 200:
                break
        except (OSError, FileNotFoundError):
            pass
        time.sleep(2)
    else:
        head.kill()
        pytest.fail("the Ray head did not come up: " + (head.stdout.read() if head.stdout else ""))
    yield {"dashboard": dashboard, "metrics": f"http://127.0.0.1:{ports['metrics']}/metrics", "env": env}
    # Only this cluster's processes: `ray stop` would stop the test session's cluster too. `ray start --block` takes
    # 30 s to stop gracefully once it has run a job, so everything it started is killed.
    processes = [head.pid, *descendants(head.pid)]
    for pid in processes:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    head.wait(timeout=60)
    deadline = time.time() + 30
    while time.time() < deadline and any(map(running, processes)):
        time.sleep(0.2)
    assert not any(map(running, processes)), [p for p in processes if running(p)]


def test_search_runs_as_a_ray_job_and_publishes_metrics(head_node, tmp_path):
    # Three trials (the base model and full SFT's two runs) are a whole search to the Jobs API and the metrics;
    # every trial more costs seconds of Ray Train start-up (test_search_e2e runs the whole smoke tree).
    entrypoint = (f"{sys.executable} -m cofitune_ray.search --config {SMOKE} --address auto "
                  f"storage_path={tmp_path} search.max_trials=3 " + " ".join(QUICK))
    for _ in range(30):  # the head's job agent may start a little after the dashboard answers
        submitted = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", head_node["dashboard"], "--no-wait", "--",
             *entrypoint.split()], env=head_node["env"], capture_output=True, text=True, timeout=120)
        if "No available agent" not in submitted.stdout + submitted.stderr:
            break
        time.sleep(2)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    job_id = re.search(r"raysubmit_\w+", submitted.stdout).group(0)
    token = auth_token()
    assert get(f"{head_node['dashboard']}/api/jobs/{job_id}")[0] in (401, 403)  # the token is required
    metric_seen, status, deadline = None, None, time.time() + 900
    while time.time() < deadline:
        status = json.loads(get(f"{head_node['dashboard']}/api/jobs/{job_id}", token)[1])["status"]
        if metric_seen is None:
            code, text = get(head_node["metrics"])
            found = re.search(r"^ray_cofitune_nodes_finished\{[^}]*\} (\S+)", text, re.M) if code == 200 else None
            metric_seen = float(found.group(1)) if found else None
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(3)
    logs = json.loads(get(f"{head_node['dashboard']}/api/jobs/{job_id}/logs", token)[1])["logs"]
    assert status == "SUCCEEDED", logs[-3000:]
    assert logs.strip().splitlines()[-1] == f"Results: {tmp_path / 'smoke'}"
    assert metric_seen is not None and metric_seen >= 0
    assert json.loads((tmp_path / "smoke" / "summary.json").read_text())["end_reason"] == "max_trials reached"


def test_dashboard_flag_prints_a_url_that_answers(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    search = subprocess.Popen(
        [sys.executable, "-m", "cofitune_ray.search", "--config", str(SMOKE), "--dashboard",
         f"storage_path={tmp_path}", *QUICK],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        url = None
        for line in search.stdout:
            found = re.match(r"\[cofitune\] Ray dashboard: (http://\S+)", line.strip())
            if found:
                url = found.group(1)
                break
        assert url, "no dashboard URL printed"
        code, body = get(f"{url}/api/version", auth_token())
        assert code == 200 and "ray_version" in body
    finally:
        search.send_signal(signal.SIGINT)  # ray.init's atexit shutdown stops the local cluster
        try:
            search.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(search.pid, signal.SIGKILL)
            search.wait(timeout=60)
