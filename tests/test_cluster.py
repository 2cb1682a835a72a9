"""A stopped trial's Ray Train run gives its CPUs back (on the session cluster, set up as the CLI's own)."""

import sys
import time

import pytest
import ray.cloudpickle
import ray.train
from ray import tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from cofitune_ray.cluster import (
    API_SERVER_ENV,
    PREEMPTION_WATCHER_ENV,
    TRAIN_POLL_ENV,
    cluster_address,
    local_cluster_options,
    train_poll_interval,
    worker_env,
)
from ray_processes import actors_started

pytestmark = pytest.mark.ray
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import tests/


def endless_training(config):
    step = 0
    while True:  # only Tune's stop ends it
        step += 1
        ray.train.report({"step": step})
        time.sleep(0.5)


def trial(config):
    TorchTrainer(endless_training,
                 scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.5}),
                 run_config=ray.train.RunConfig(name=f"train-{tune.get_context().get_trial_id()}",
                                                storage_path=config["storage"], callbacks=[TuneReportCallback()])).fit()


def test_auto_joins_the_cluster_ray_job_submit_names():
    job_env = {"RAY_ADDRESS": "10.0.0.7:6379"}  # what Ray's job supervisor gives the entrypoint
    assert cluster_address("auto", job_env) == "10.0.0.7:6379"
    assert cluster_address(None, job_env) == "10.0.0.7:6379"
    assert cluster_address("10.0.0.9:6379", job_env) == "10.0.0.9:6379"
    assert cluster_address("auto", {}) == "auto" and cluster_address("auto", {"RAY_ADDRESS": "auto"}) == "auto"
    assert cluster_address(None, {}) is None and cluster_address(None, {"RAY_ADDRESS": ""}) is None


def test_worker_environment_polls_ten_workers_a_second_and_keeps_what_the_user_set():
    assert worker_env(False, False, 1, {}) == {TRAIN_POLL_ENV: "0.1"}
    assert worker_env(True, False, 1, {TRAIN_POLL_ENV: "0.3"}) == {"RAY_TRAIN_ENABLE_STATE_TRACKING": "1",
                                                                   TRAIN_POLL_ENV: "0.3"}
    # ten worker calls a second per run, and never less often than Ray's own 2 s
    assert [train_poll_interval(n) for n in (1, 2, 8, 20, 64)] == ["0.1", "0.2", "0.8", "2", "2"]
    assert worker_env(False, False, 8, {})[TRAIN_POLL_ENV] == "0.8"
    # a local cluster of the search's own: no preemption watcher, unless the user asks for it
    assert worker_env(False, True, 2, {}) == {TRAIN_POLL_ENV: "0.2", PREEMPTION_WATCHER_ENV: "0"}
    assert worker_env(False, True, 2, {PREEMPTION_WATCHER_ENV: "1"})[PREEMPTION_WATCHER_ENV] == "1"


def test_local_cluster_options_name_the_dashboard_for_every_worker():
    options = local_cluster_options(8300, {"A": "1"})
    assert options["include_dashboard"] and options["dashboard_port"] == 8300
    assert options["runtime_env"]["env_vars"] == {"A": "1", API_SERVER_ENV: "http://127.0.0.1:8300"}


def test_a_stopped_trial_frees_its_train_workers_cpus(ray_cluster, tmp_path):
    total = ray_cluster.cluster_resources()["CPU"]
    tuner = tune.Tuner(tune.with_resources(trial, {"cpu": 0.5}), param_space={"storage": str(tmp_path)},
                       run_config=tune.RunConfig(storage_path=str(tmp_path), stop={"training_iteration": 2}))
    assert not tuner.fit().errors
    deadline = time.time() + 120  # the cleaner polls every second; a loaded machine is slow
    while ray_cluster.available_resources().get("CPU", 0) < total and time.time() < deadline:
        time.sleep(1)
    assert ray_cluster.available_resources().get("CPU", 0) == total  # no placement group left behind
    # the local cluster's environment (`worker_env`, as the CLI's) reached Ray Train: its run started no watcher
    started = actors_started()
    assert "TrainController" in started and "PreemptionWatcher" not in started
