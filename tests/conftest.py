"""Shared fixtures: one real Ray cluster per test session (ray.init costs 6-16 s on 2 cores)."""

import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/tiny.py and friends


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster with 2 logical CPUs, shared by every Ray test in the session."""
    import ray

    from cofitune_ray.cluster import local_cluster_options

    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Unix socket paths are limited
    # with the dashboard, as the CLI's own clusters: Ray Train frees the CPUs of the trials Tune stops
    ray.init(address="local", num_cpus=2, _temp_dir=temp_dir, log_to_driver=False, **local_cluster_options())
    yield ray
    ray.shutdown()

PROJECT = Path(__file__).resolve().parent.parent
