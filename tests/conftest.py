"""Shared fixtures: one real Ray cluster per test session (ray.init costs 6-16 s on 2 cores)."""

import os
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/tiny.py and friends

from smoke_search import lm_eval_versatility, run_killed_and_resumed  # noqa: E402


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster with 2 logical CPUs, shared by every Ray test in the session."""
    import ray

    from cofitune_ray.cluster import TRAIN_POLL_ENV, local_cluster_options, worker_env

    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Unix socket paths are limited
    # Ray Train's controller learns of a report (and records its checkpoint) when it polls the workers (in the
    # product every 0.1 s for one worker, 0.2 s for two: `cluster.train_poll_interval`; 2 s in Ray). On a fast machine
    # a toy run's last 10 steps took less than Ray's 2 s, so the worker-kill test found no run with its checkpoint
    # recorded and training left. The cluster's processes inherit this environment, and the CLI keeps a value it
    # finds set (`cluster.worker_env`).
    os.environ[TRAIN_POLL_ENV] = "0.1"
    os.environ.update(worker_env(False, True, 2, os.environ))  # the rest as the CLI's own local clusters
    # with the dashboard, as the CLI's own clusters: Ray Train frees the CPUs of the trials Tune stops
    ray.init(address="local", num_cpus=2, _temp_dir=temp_dir, log_to_driver=False, **local_cluster_options())
    yield ray
    ray.shutdown()


PROJECT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def smoke_versatility(tmp_path_factory) -> str:
    """The smoke search's versatility override, with an lm-evaluation-harness set (`smoke_search.py`)."""
    return lm_eval_versatility(tmp_path_factory.mktemp("lm_eval_tasks"))


@pytest.fixture(scope="session")
def resumed_smoke(ray_cluster, tmp_path_factory, smoke_versatility):
    """The whole smoke search, its driver killed after the first trained node and resumed: one search for the
    end-to-end and the console tests (`smoke_search.ResumedSearch`)."""
    address = ray_cluster.get_runtime_context().gcs_address
    return run_killed_and_resumed(tmp_path_factory.mktemp("storage"), address, smoke_versatility)
