"""The Ray cluster a search runs on: a local one of its own, or a running one it joins.

Ray Train needs the cluster's state API. When Tune stops a trial (a learning-rate run that lost,
a pruned node), it kills the trial's process, and with it the run's TrainController; the run's
worker placement group lives as long as the job, holding its CPUs, until Ray Train's
`PlacementGroupCleaner` sees through the state API that the controller is gone and removes it.
Without that, every stopped run keeps its CPUs and a small cluster soon has none left for the next
run: the search waits forever (seen on `configs/smoke.yaml`, 2 CPUs, after two stopped runs). The
state API is served by the dashboard process, and the cleaner finds it from the environment: with
several Ray clusters on one machine it otherwise gives up ("Found multiple active Ray instances"),
and with no dashboard it warns once a second ("Failed to query Ray Train Controller actor state").
"""

from __future__ import annotations

import os
import socket

import ray
from ray._private.authentication.authentication_utils import is_token_auth_enabled

# Read by Ray's state API client (the cleaner's) before any address lookup.
API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"
#: How often Ray Train's controller polls its workers, in seconds (`train_poll_interval`).
TRAIN_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
#: Ray Train's preemption watcher: one more process per run (about 1 CPU-second to start on a 2-core machine), which
#: reports nodes that the cluster drains. A local cluster of the search's own is one machine that nothing drains,
#: so there it is off; a cluster the search joins keeps Ray's default.
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def local_cluster_options(dashboard_port: int | None = None, env_vars: dict | None = None) -> dict:
    """`ray.init(address="local", ...)` arguments for a cluster on which Ray Train frees stopped runs.

    The dashboard on 127.0.0.1 at `dashboard_port` (default: a free port), and its address in every
    worker's environment, next to `env_vars`.
    """
    port = dashboard_port or _free_port()
    return {
        "include_dashboard": True,
        "dashboard_host": "127.0.0.1",
        "dashboard_port": port,
        "runtime_env": {"env_vars": {**(env_vars or {}), API_SERVER_ENV: f"http://127.0.0.1:{port}"}},
    }


def cluster_address(address: str | None, environ) -> str | None:
    """The cluster to join (None: start a local one): `address`, else `RAY_ADDRESS`.

    `auto` becomes `RAY_ADDRESS` when that names a cluster, as it does under `ray job submit`: the
    cleaner's state API lookup needs the concrete address when the machine runs several clusters.
    """
    from_env = environ.get("RAY_ADDRESS") or None
    if address is None or (address == "auto" and from_env not in (None, "auto")):
        return from_env
    return address


def dashboard_line(url: str, token_auth: bool) -> str:
    """The start-up line that names the dashboard and, when the cluster asks for a token, how to get it."""
    line = f"[cofitune] Ray dashboard: http://{url}"
    if token_auth:
        line += " (it asks for the cluster's token: `ray get-auth-token` prints it)"
    return line


def train_poll_interval(workers: int) -> str:
    """Seconds between Ray Train's controller's polls of a run of `workers` workers: ten worker calls a second.

    The controller learns of every report, of the run's end and of a lost worker only when it polls, and each poll
    is a call to every worker. Ray's default, 2 s, made each trial end 1-2 s late, its slot idle meanwhile
    (configs/smoke.yaml on 2 cores: 3.5 s of teardown per trial at 2 s, 0.7 s at 0.1 s; docs/benchmarks.md). So a
    one-worker run is polled every 0.1 s, an 8-worker run every 0.8 s, and from 20 workers on Ray's 2 s holds.
    """
    return f"{min(2.0, workers / 10):g}"


def worker_env(tracked: bool, local: bool, workers: int, environ) -> dict[str, str]:
    """The environment the search gives its Ray workers: Ray Train's run tracking when a dashboard shows the runs
    (without one, the tracking only logs that it cannot query state), the controller's poll interval for runs of
    `workers` workers, and on a `local` cluster of the search's own no preemption watcher. A value the user set in
    `environ` is kept."""
    env = {"RAY_TRAIN_ENABLE_STATE_TRACKING": "1"} if tracked else {}
    env[TRAIN_POLL_ENV] = environ.get(TRAIN_POLL_ENV, train_poll_interval(workers))
    if local:
        env[PREEMPTION_WATCHER_ENV] = environ.get(PREEMPTION_WATCHER_ENV, "0")
    return env


def connect(address: str | None, dashboard: bool, verbose: bool, workers: int) -> str | None:
    """Join the given cluster, or start a local one, for runs of `workers` Ray Train workers; returns Ray's session
    directory.

    `dashboard`: the local dashboard on its usual port 8265, Ray Train runs tracked on it. Ray's
    workers' output reaches this terminal only when `verbose` (see `console.py`).
    """
    address = cluster_address(address, os.environ)
    env = worker_env(bool(address or dashboard), address is None, workers, os.environ)
    os.environ.update(env)  # the driver's own Ray Train runs (the base model's evaluation) read it here
    if address:
        if address != "auto" and "://" not in address:
            env["RAY_ADDRESS"] = address  # the cleaner's state API lookup starts from this cluster
        context = ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=verbose)
    else:
        # address="local": always a new cluster of our own, never one found running on the machine
        context = ray.init(address="local", log_to_driver=verbose,
                           **local_cluster_options(8265 if dashboard else None, env))
    if context.dashboard_url:
        print(dashboard_line(context.dashboard_url, is_token_auth_enabled()), flush=True)
    else:
        print("[cofitune] warning: this Ray cluster runs no dashboard, so Ray Train cannot free the CPUs of "
              "the runs Tune stops and the search may wait for them forever; start its head with the "
              "dashboard (`ray start --head --include-dashboard=true`)", flush=True)
    return context.address_info.get("session_dir")
