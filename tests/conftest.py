"""Shared pytest fixtures."""

import shutil
import tempfile

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    """One small local Ray cluster for the whole test session, shared by every `ray` test."""
    import ray

    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Unix socket paths are limited
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir)
    yield ray
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)
