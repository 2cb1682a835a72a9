"""The k8s/ manifests, rendered and validated the way a Kubernetes API server would see them.

Rendering and validation live in `tests/kustomize.py`; this file holds the manifests' tests: the
objects each overlay renders, their schemas, and the project's own rules (autoscaling shape, GPU
groups, the entrypoint's config, shared storage, concurrency, FSDP pods).
"""

from __future__ import annotations

import copy
import importlib.util
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import ray
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from kustomize import (
    REPO,
    KustomizeError,
    cel_paths,
    check_object_meta,
    crd_errors,
    crd_schema,
    json6902,
    present,
    render,
    res_id,
    split_image,
)

K8S = REPO / "k8s"
OVERLAYS = ("cpu-smoke", "gpu", "gpu-fsdp")
GPU_OVERLAYS = ("gpu", "gpu-fsdp")
K8S_VERSION = "1.37.0"  # schemas shipped with kubernetes-validate
IMAGE_APP_DIR = "/home/ray/cofitune"  # where the Dockerfile puts this repository


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: render(K8S / "overlays" / name) for name in OVERLAYS}


def one(resources: list[dict], kind: str) -> dict:
    (found,) = [r for r in resources if r["kind"] == kind]
    return found


def raycluster_from(rayjob: dict) -> dict:
    """The RayCluster object the operator creates from the RayJob's rayClusterSpec."""
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": rayjob["metadata"]["name"] + "-cluster"},
        "spec": copy.deepcopy(rayjob["spec"]["rayClusterSpec"]),
    }


def pod_templates(rayjob: dict) -> dict[str, dict]:
    cluster = rayjob["spec"]["rayClusterSpec"]
    templates = {"head": cluster["headGroupSpec"]["template"]}
    for group in cluster.get("workerGroupSpecs", []):
        templates[f"worker:{group['groupName']}"] = group["template"]
    if "submitterPodTemplate" in rayjob["spec"]:
        templates["submitter"] = rayjob["spec"]["submitterPodTemplate"]
    return templates


def ray_templates(rayjob: dict) -> dict[str, dict]:
    return {k: v for k, v in pod_templates(rayjob).items() if k != "submitter"}


def gpu_groups(rayjob: dict) -> list[dict]:
    return [
        g
        for g in rayjob["spec"]["rayClusterSpec"].get("workerGroupSpecs", [])
        if any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {})
               for c in g["template"]["spec"]["containers"])
    ]


def quantity(value: Any) -> float:
    """A Kubernetes quantity (cpu '500m', memory '4Gi', plain numbers) as a float."""
    text = str(value)
    suffixes = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for suffix in sorted(suffixes, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * suffixes[suffix]
    return float(text)


def parse_entrypoint(entrypoint: str) -> dict:
    """The search CLI: python -m cofitune_ray.search [--config F] [--search-space F] [--resume]
    [--address A] [--dashboard] [key=value ...]; anything else is an error."""
    argv = shlex.split(entrypoint)
    assert argv[:3] == ["python", "-m", "cofitune_ray.search"], f"entrypoint must run the search module: {argv}"
    parsed: dict[str, Any] = {"config": None, "search_space": None, "resume": False, "address": None,
                              "dashboard": False, "overrides": []}
    args = iter(argv[3:])
    for arg in args:
        if arg in ("--config", "--search-space", "--address"):
            parsed[arg[2:].replace("-", "_")] = next(args)
        elif arg in ("--resume", "--dashboard"):
            parsed[arg[2:]] = True
        elif "=" in arg and not arg.startswith("-"):
            parsed["overrides"].append(arg)
        else:
            raise AssertionError(f"unknown argument {arg!r} in entrypoint {entrypoint!r}")
    return parsed


def mount_of(template: dict, path: str) -> tuple[dict, dict] | None:
    """(volume, volumeMount) of the first container's mount that contains `path`."""
    container = template["spec"]["containers"][0]
    volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        root = mount["mountPath"].rstrip("/")
        if path == root or path.startswith(root + "/"):
            return volumes[mount["name"]], mount
    return None


def config_file(resources: list[dict], rayjob: dict, path: str, tmp_path: Path) -> Path:
    """The file the entrypoint's --config names, as this repository or the overlay provides it."""
    if path.startswith(IMAGE_APP_DIR + "/"):
        return REPO / path[len(IMAGE_APP_DIR) + 1 :]
    found = mount_of(rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"], path)
    assert found, f"--config {path} is neither in the image ({IMAGE_APP_DIR}) nor on a head volume"
    volume, mount = found
    assert "configMap" in volume, f"--config {path} must come from a ConfigMap, got volume {volume}"
    maps = [r for r in resources if r["kind"] == "ConfigMap" and r["metadata"]["name"] == volume["configMap"]["name"]]
    assert maps, f"ConfigMap {volume['configMap']['name']} is mounted but not in the rendered overlay"
    key = path[len(mount["mountPath"].rstrip("/")) + 1 :]
    assert key in maps[0]["data"], f"ConfigMap {volume['configMap']['name']} has no key {key!r}"
    local = tmp_path / key
    local.write_text(maps[0]["data"][key])
    return local


def pinned_ray() -> Requirement:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    (req,) = [Requirement(d) for d in pyproject["project"]["dependencies"] if Requirement(d).name == "ray"]
    return req


# --------------------------------------------------------------------------- rendering tests


def test_overlays_render_the_expected_objects(rendered):
    for name, resources in rendered.items():
        kinds = sorted(r["kind"] for r in resources)
        expected = ["PersistentVolumeClaim", "PodMonitor", "RayJob", "Service"]
        if name in GPU_OVERLAYS:
            expected.append("ConfigMap")
        assert kinds == sorted(expected), name
    storage = {name: one(rendered[name], "PersistentVolumeClaim")["spec"]["resources"]["requests"]["storage"]
               for name in OVERLAYS}
    assert storage == {"cpu-smoke": "5Gi", "gpu": "500Gi", "gpu-fsdp": "2Ti"}
    names = {name: one(rendered[name], "RayJob")["metadata"]["name"] for name in OVERLAYS}
    assert names == {"cpu-smoke": "cofitune-smoke", "gpu": "cofitune-search", "gpu-fsdp": "cofitune-fsdp"}
    for name in GPU_OVERLAYS:
        assert len(gpu_groups(one(rendered[name], "RayJob"))) == 1
    # gpu-fsdp merges its config into the gpu overlay's ConfigMap
    assert sorted(one(rendered["gpu-fsdp"], "ConfigMap")["data"]) == ["search-fsdp.yaml", "search.yaml"]


def _external_kustomize() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_renderer_matches_real_kustomize(overlay, rendered):
    command = _external_kustomize()
    if command is None:
        pytest.skip("neither kustomize nor kubectl on PATH: cannot cross-check the Python renderer")
    result = subprocess.run([*command, str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    theirs = {res_id(d): d for d in yaml.safe_load_all(result.stdout) if d}
    ours = {res_id(d): d for d in rendered[overlay]}
    assert ours == theirs


def test_renderer_refuses_what_it_does_not_implement(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: []\nnamePrefix: x-\n")
    with pytest.raises(KustomizeError, match="namePrefix"):
        render(tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [cm.yaml]\npatches:\n"
        "  - target: {version: v1, kind: ConfigMap}\n    patch: |-\n      data: {a: b}\n"
    )
    (tmp_path / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n")
    with pytest.raises(KustomizeError, match="JSON 6902"):
        render(tmp_path)


def test_json6902_semantics():
    doc = {"a": {"list": [1, 2]}, "b": 1}
    for op in (
        {"op": "add", "path": "/a/list/-", "value": 3},
        {"op": "add", "path": "/a/list/0", "value": 0},
        {"op": "replace", "path": "/b", "value": 2},
        {"op": "add", "path": "/a/x~1y", "value": True},
        {"op": "remove", "path": "/a/list/1"},
        {"op": "test", "path": "/b", "value": 2},
    ):
        json6902(doc, op, Path("t"))
    assert doc == {"a": {"list": [0, 2, 3], "x/y": True}, "b": 2}
    with pytest.raises(KustomizeError):
        json6902(doc, {"op": "replace", "path": "/missing", "value": 1}, Path("t"))
    with pytest.raises(KustomizeError):
        json6902(doc, {"op": "add", "path": "/nope/deeper", "value": 1}, Path("t"))


# --------------------------------------------------------------------------- schema validation


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rayjob_and_its_raycluster_match_the_kuberay_crds(overlay, rendered):
    rayjob = one(rendered[overlay], "RayJob")
    assert rayjob["apiVersion"] == "ray.io/v1"
    assert crd_errors(rayjob, crd_schema("RayJob")) == []
    assert crd_errors(raycluster_from(rayjob), crd_schema("RayCluster")) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_field_with_an_unchecked_cel_rule_is_set(overlay, rendered):
    # CEL rules (x-kubernetes-validations) are not evaluated here; prove none applies.
    rayjob = one(rendered[overlay], "RayJob")
    for kind, obj in (("RayJob", rayjob), ("RayCluster", raycluster_from(rayjob))):
        paths = cel_paths(crd_schema(kind))
        assert paths, f"expected the {kind} CRD to carry CEL rules"
        assert [p for p in paths if present(obj, p)] == []


def test_validation_catches_wrong_fields(rendered):
    cluster = raycluster_from(one(rendered["gpu"], "RayJob"))
    schema = crd_schema("RayCluster")
    assert crd_errors(cluster, schema) == []

    typo = copy.deepcopy(cluster)
    group = typo["spec"]["workerGroupSpecs"][-1]
    group["minReplica"] = group.pop("minReplicas")
    errors = crd_errors(typo, schema)
    assert any("minReplica" in e and "spec.workerGroupSpecs.1" in e for e in errors), errors

    wrong_type = copy.deepcopy(cluster)
    wrong_type["spec"]["workerGroupSpecs"][-1]["maxReplicas"] = "4"
    assert any("spec.workerGroupSpecs.1.maxReplicas" in e and "integer" in e for e in crd_errors(wrong_type, schema))

    wrong_enum = copy.deepcopy(cluster)
    wrong_enum["spec"]["autoscalerOptions"]["version"] = "v3"
    assert any("autoscalerOptions.version" in e for e in crd_errors(wrong_enum, schema))

    bad_quantity = copy.deepcopy(cluster)
    bad_quantity["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = [2]
    assert any("limits.cpu" in e for e in crd_errors(bad_quantity, schema))

    duplicate_port = copy.deepcopy(cluster)
    ports = duplicate_port["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]
    ports.append({"name": "again", "containerPort": ports[0]["containerPort"]})
    assert any("list-type=map" in e for e in crd_errors(duplicate_port, schema))

    bad_name = copy.deepcopy(cluster)
    bad_name["metadata"]["name"] = "Cofitune_Search"
    assert any("DNS-1123" in e for e in crd_errors(bad_name, schema))


def test_a_broken_copy_of_k8s_fails(tmp_path):
    broken = tmp_path / "k8s"
    shutil.copytree(K8S, broken)
    patch = broken / "overlays" / "gpu" / "gpu-workers.yaml"
    patch.write_text(patch.read_text().replace("    minReplicas: 0", "    minReplica: 0"))
    rayjob = one(render(broken / "overlays" / "gpu"), "RayJob")
    errors = crd_errors(rayjob, crd_schema("RayJob"))
    assert any("minReplica" in e for e in errors), errors

    patch.write_text(patch.read_text().replace("path: /spec/rayClusterSpec/workerGroupSpecs/-",
                                               "path: /spec/rayClusterSpec/workerGroupSpec/-"))
    with pytest.raises(KustomizeError, match="does not exist"):
        render(broken / "overlays" / "gpu")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_objects_and_pod_templates_match_kubernetes_schemas(overlay, rendered):
    for res in rendered[overlay]:
        if res["apiVersion"] in ("v1", "apps/v1", "batch/v1"):
            kubernetes_validate.validate(res, K8S_VERSION, strict=True)
    for name, template in pod_templates(one(rendered[overlay], "RayJob")).items():
        wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name.replace(":", "-")},
                   "template": template}
        kubernetes_validate.validate(wrapped, K8S_VERSION, strict=True)


def test_kubernetes_validate_rejects_a_wrong_core_field(rendered):
    pvc = copy.deepcopy(one(rendered["gpu"], "PersistentVolumeClaim"))
    pvc["spec"]["acessModes"] = pvc["spec"].pop("accessModes")
    with pytest.raises(kubernetes_validate.ValidationError, match="acessModes"):
        kubernetes_validate.validate(pvc, K8S_VERSION, strict=True)


# The PodMonitor fields this project uses, as monitoring.coreos.com/v1 defines them (the Prometheus
# Operator CRD is not vendored here); unknown fields are errors, as with the CRDs above.
_RELABEL = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "sourceLabels": {"type": "array", "items": {"type": "string"}},
        "targetLabel": {"type": "string"},
        "action": {"type": "string"},
        "regex": {"type": "string"},
        "replacement": {"type": "string"},
    },
}
PODMONITOR_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "podMetricsEndpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}},
                },
                "podMetricsEndpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string",
                                         "pattern": r"^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                            "relabelings": {"type": "array", "items": _RELABEL},
                        },
                    },
                },
            },
        },
    },
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_podmonitor_scrapes_the_ray_metrics_ports(overlay, rendered):
    monitor = one(rendered[overlay], "PodMonitor")
    assert list(jsonschema.Draft202012Validator(PODMONITOR_SCHEMA).iter_errors(monitor)) == []
    assert check_object_meta(monitor["metadata"]) == []
    rayjob = one(rendered[overlay], "RayJob")
    selector = monitor["spec"]["selector"]["matchLabels"]
    ports_by_pod = {}
    for name, template in ray_templates(rayjob).items():
        labels = {**template["metadata"]["labels"], "ray.io/is-ray-node": "yes"}  # the operator adds the latter
        assert selector.items() <= labels.items(), f"PodMonitor does not select {name}"
        ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
        ports_by_pod[name] = ports
        # Ray exports on metrics-export-port; the PodMonitor scrapes the container port named metrics.
        group = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"] if name == "head" else next(
            g for g in rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"] if f"worker:{g['groupName']}" == name
        )
        assert int(group["rayStartParams"]["metrics-export-port"]) == ports["metrics"], name
    endpoints = {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}
    assert endpoints == {"metrics", "as-metrics", "dash-metrics"}
    assert ports_by_pod["head"]["as-metrics"] == 44217 and ports_by_pod["head"]["dash-metrics"] == 44227
    # The ray_io_cluster label the Ray Grafana dashboards filter on.
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        assert {"sourceLabels": ["__meta_kubernetes_pod_label_ray_io_cluster"],
                "targetLabel": "ray_io_cluster"} in endpoint["relabelings"]


# --------------------------------------------------------------------------- project rules


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaling_cluster_shape(overlay, rendered):
    cluster = one(rendered[overlay], "RayJob")["spec"]["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["autoscalerOptions"]["version"] == "v2"
    assert cluster["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # the head trains nothing
    groups = cluster["workerGroupSpecs"]
    assert groups[0]["groupName"] == "cpu"
    for group in groups:
        assert (0 <= group["minReplicas"] <= group.get("replicas", group["minReplicas"])
                <= group["maxReplicas"]), group["groupName"]
        assert group["idleTimeoutSeconds"] > 0, group["groupName"]


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_gpu_group_scales_from_zero(overlay, rendered):
    (group,) = gpu_groups(one(rendered[overlay], "RayJob"))
    assert group["minReplicas"] == 0
    assert group["replicas"] == 0
    assert group["maxReplicas"] >= 1
    container = group["template"]["spec"]["containers"][0]
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    tolerations = group["template"]["spec"]["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations


def test_cpu_smoke_asks_for_no_gpu(rendered):
    rayjob = one(rendered["cpu-smoke"], "RayJob")
    assert gpu_groups(rayjob) == []
    for template in pod_templates(rayjob).values():
        for container in template["spec"]["containers"]:
            assert "nvidia.com/gpu" not in str(container.get("resources"))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rayjob_lifecycle(overlay, rendered):
    spec = one(rendered[overlay], "RayJob")["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0
    assert spec["backoffLimit"] >= 1  # retried on a fresh cluster, resumed from the PVC
    assert spec["activeDeadlineSeconds"] > 0
    assert "clusterSelector" not in spec  # the job brings its own autoscaling cluster


def test_entrypoint_module_exists():
    assert importlib.util.find_spec("cofitune_ray.search") is not None


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_entrypoint_config_parses_with_the_project_loader(overlay, rendered, tmp_path):
    from cofitune_ray.config import load_config

    resources = rendered[overlay]
    rayjob = one(resources, "RayJob")
    args = parse_entrypoint(rayjob["spec"]["entrypoint"])
    assert args["config"], "the entrypoint must name a --config"
    config = load_config(config_file(resources, rayjob, args["config"], tmp_path), args["overrides"])
    assert config.storage_path == "/mnt/cofitune/runs"
    if config.search.space.startswith(IMAGE_APP_DIR + "/"):
        assert (REPO / config.search.space[len(IMAGE_APP_DIR) + 1 :]).is_file(), config.search.space
    if args["search_space"] and args["search_space"].startswith(IMAGE_APP_DIR + "/"):
        assert (REPO / args["search_space"][len(IMAGE_APP_DIR) + 1 :]).is_file()
    if overlay in GPU_OVERLAYS:
        assert args["config"] == {"gpu": "/config/search.yaml", "gpu-fsdp": "/config/search-fsdp.yaml"}[overlay]
        assert config.scaling.use_gpu is True


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_storage_path_is_on_the_shared_volume_of_every_ray_pod(overlay, rendered):
    resources = rendered[overlay]
    rayjob = one(resources, "RayJob")
    args = parse_entrypoint(rayjob["spec"]["entrypoint"])
    assert args["resume"] is True  # a retried job continues the experiment
    (storage,) = [o.split("=", 1)[1] for o in args["overrides"] if o.startswith("storage_path=")]
    claims = {r["metadata"]["name"]: r for r in resources if r["kind"] == "PersistentVolumeClaim"}
    for name, template in ray_templates(rayjob).items():
        found = mount_of(template, storage)
        assert found, f"{storage} is not mounted on {name}"
        volume, mount = found
        claim = claims[volume["persistentVolumeClaim"]["claimName"]]
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"], name
        assert not mount.get("readOnly"), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_cluster_can_run_the_configured_concurrency(overlay, rendered, tmp_path):
    """The widest the search goes (max_concurrent_trials trials at once) fits the groups' maxReplicas."""
    from cofitune_ray.config import load_config

    resources = rendered[overlay]
    rayjob = one(resources, "RayJob")
    args = parse_entrypoint(rayjob["spec"]["entrypoint"])
    config = load_config(config_file(resources, rayjob, args["config"], tmp_path), args["overrides"])
    sc, trials = config.scaling, config.search.max_concurrent_trials
    groups = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]

    def per_pod(group: dict, resource: str) -> float:
        return quantity(group["template"]["spec"]["containers"][0]["resources"]["limits"].get(resource, 0))

    cpu_group = groups[0]
    assert sc.trial_cpus <= per_pod(cpu_group, "cpu")
    if sc.use_gpu:
        (gpu,) = gpu_groups(rayjob)
        assert sc.gpus_per_worker <= per_pod(gpu, "nvidia.com/gpu") and sc.cpus_per_worker <= per_pod(gpu, "cpu")
        demand = trials * sc.num_workers * sc.gpus_per_worker
        assert demand <= gpu["maxReplicas"] * per_pod(gpu, "nvidia.com/gpu"), (demand, gpu["maxReplicas"])
    else:
        assert sc.cpus_per_worker <= per_pod(cpu_group, "cpu")
        demand = trials * (sc.trial_cpus + sc.num_workers * sc.cpus_per_worker)
        assert demand <= cpu_group["maxReplicas"] * per_pod(cpu_group, "cpu"), (demand, cpu_group["maxReplicas"])


def _entrypoint_config(resources: list[dict], tmp_path: Path):
    from cofitune_ray.config import load_config

    rayjob = one(resources, "RayJob")
    args = parse_entrypoint(rayjob["spec"]["entrypoint"])
    return load_config(config_file(resources, rayjob, args["config"], tmp_path), args["overrides"])


def _gpu_pod(rayjob: dict) -> tuple[dict, dict]:
    (group,) = gpu_groups(rayjob)
    return group, group["template"]["spec"]["containers"][0]["resources"]["limits"]


def test_an_fsdp_trial_fills_whole_pods(rendered, tmp_path):
    """An FSDP trial's shards share one pod (all-gathers over NVLink), and a pod holds whole trials."""
    config = _entrypoint_config(rendered["gpu-fsdp"], tmp_path)
    sc = config.scaling
    assert sc.strategy == "fsdp" and sc.gpus_per_worker == 1
    group, limits = _gpu_pod(one(rendered["gpu-fsdp"], "RayJob"))
    gpus = int(limits["nvidia.com/gpu"])
    assert gpus >= 4  # the multi-GPU shape for 33B-70B
    trial_gpus = sc.num_workers * sc.gpus_per_worker
    assert trial_gpus <= gpus and gpus % trial_gpus == 0, (trial_gpus, gpus)
    workers_per_pod = gpus // sc.gpus_per_worker
    assert workers_per_pod * sc.cpus_per_worker <= quantity(limits["cpu"])
    assert group["maxReplicas"] * gpus // trial_gpus == config.search.max_concurrent_trials


# The gpu-fsdp overlay's model, whose public config values the memory plan's table uses.
FSDP_MODEL = ("/mnt/cofitune/models/llama-30b", "LLaMA 33B")


def test_the_memory_plan_fits_the_fsdp_overlay(rendered, tmp_path):
    """The plan for the shipped 33B config: every reachable node fits the configured strategy on the
    configured GPUs, and the pod's host memory holds every worker's copy of the model at load."""
    import json

    from transformers import LlamaConfig

    from cofitune_ray.core.space import load_search_space
    from cofitune_ray.plan.memory import MemoryPlan, ModelShape, Workload

    config = _entrypoint_config(rendered["gpu-fsdp"], tmp_path)
    path, name = FSDP_MODEL
    assert config.model.path == path
    shapes = json.loads((REPO / "benchmarks" / "llama2_shapes.json").read_text())["models"]
    shape = ModelShape.from_model_config(LlamaConfig(**shapes[name]["config"]))
    space = load_search_space(REPO / config.search.space[len(IMAGE_APP_DIR) + 1 :])
    plan = MemoryPlan.build(shape, space.reachable_nodes(), Workload.from_config(config))
    assert plan.choice() == config.scaling.strategy, plan.table()
    assert not plan.fits("ddp")  # the reason this overlay exists
    _, limits = _gpu_pod(one(rendered["gpu-fsdp"], "RayJob"))
    workers_per_pod = int(limits["nvidia.com/gpu"]) // config.scaling.gpus_per_worker
    model_bytes = shape.count() * {"bfloat16": 2, "float16": 2, "float32": 4}[config.model.dtype]
    assert quantity(limits["memory"]) >= 1.25 * workers_per_pod * model_bytes


def test_image_matches_the_pinned_ray_version(rendered):
    installed = Version(ray.__version__)
    req = pinned_ray()
    assert installed in req.specifier, (ray.__version__, str(req))
    dockerfile = (REPO / "Dockerfile").read_text()
    (arg,) = re.findall(r"^ARG RAY_VERSION=(\S+)$", dockerfile, re.M)
    assert Version(arg) == installed
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-\$\{RAY_PLATFORM\}$", dockerfile, re.M)
    (platform,) = re.findall(r"^ARG RAY_PLATFORM=(\S+)$", dockerfile, re.M)
    assert platform == "py311-cpu"
    for overlay, resources in rendered.items():
        rayjob = one(resources, "RayJob")
        assert Version(rayjob["spec"]["rayClusterSpec"]["rayVersion"]) == installed
        for name, template in pod_templates(rayjob).items():
            for container in template["spec"]["containers"]:
                _, tag, _ = split_image(container["image"])
                match = re.fullmatch(r"ray(\d+\.\d+\.\d+)-py3\d+-(cpu|cu\d+)", tag or "")
                assert match, f"{overlay}/{name}: image tag {tag!r} is not ray<version>-py3XX-<cpu|cuXXX>"
                assert Version(match.group(1)) == installed and Version(match.group(1)) in req.specifier
                assert match.group(2) == ("cpu" if overlay == "cpu-smoke" else match.group(2))
                if overlay in GPU_OVERLAYS:
                    assert match.group(2).startswith("cu"), f"{name}: the {overlay} overlay needs the CUDA image"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_security_settings(overlay, rendered):
    resources = rendered[overlay]
    rayjob = one(resources, "RayJob")
    cluster = rayjob["spec"]["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token"
    assert "RAY_AUTH_MODE" not in yaml.safe_dump(rayjob)  # the operator sets it; never disabled by hand
    assert cluster["headGroupSpec"]["serviceType"] == "ClusterIP"
    assert cluster["headGroupSpec"].get("enableIngress") is False
    for service in (r for r in resources if r["kind"] == "Service"):
        assert service["spec"]["type"] == "ClusterIP", service["metadata"]["name"]

    containers = {"autoscaler": cluster["autoscalerOptions"]}
    for name, template in pod_templates(rayjob).items():
        pod = template["spec"]
        ctx = pod["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] > 0, name
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), name
        for container in pod["containers"] + pod.get("initContainers", []):
            containers[f"{name}/{container['name']}"] = container
            assert not any("hostPort" in p for p in container.get("ports", [])), name
    for name, container in containers.items():
        sec = container["securityContext"]
        assert sec["allowPrivilegeEscalation"] is False, name
        assert not sec.get("privileged"), name
        assert sec["capabilities"]["drop"] == ["ALL"], name
        res = container["resources"]
        for kind in ("cpu", "memory"):
            assert quantity(res["requests"][kind]) <= quantity(res["limits"][kind]), f"{name} {kind}"
        for extended in set(res["limits"]) - {"cpu", "memory"}:
            assert quantity(res["requests"].get(extended, res["limits"][extended])) == quantity(res["limits"][extended])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_dashboard_service_reaches_only_the_head(overlay, rendered):
    rayjob = one(rendered[overlay], "RayJob")
    service = next(r for r in rendered[overlay]
                   if r["kind"] == "Service" and r["metadata"]["name"] == "cofitune-dashboard")
    selector = service["spec"]["selector"]
    selected = [n for n, t in ray_templates(rayjob).items() if selector.items() <= t["metadata"]["labels"].items()]
    assert selected == ["head"]
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    head_ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "dashboard" and head_ports["dashboard"] == 8265 == port["port"]


# --------------------------------------------------------------------------- the cost plan's overlay


@pytest.mark.parametrize("model, config_file, gpus, pod_gpus, replicas", [
    ("LLaMA-2 7B", "gpu/search.yaml", 8, 2, 2),  # 2 DDP workers per trial, 2 trials at once
    ("LLaMA 33B", "gpu-fsdp/search-fsdp.yaml", 32, 8, 2),  # 8 FSDP shards per trial: one 8-GPU pod
])
def test_the_cost_plans_overlay_renders_and_passes_the_schemas(model, config_file, gpus, pod_gpus, replicas, tmp_path):
    """`python -m cofitune_ray.plan.cost --kustomize DIR` writes an overlay next to the others: it renders, the RayJob
    and its RayCluster match the KubeRay CRDs, every pod template Kubernetes' schema, and its GPU group holds the
    planned config's concurrent trials, scales from zero and has host memory for every worker's copy of the model."""
    import json

    from cofitune_ray.config import load_config
    from cofitune_ray.core.cost import Shape
    from cofitune_ray.plan.cost import main

    k8s = tmp_path / "k8s"
    shutil.copytree(K8S, k8s)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    shape = json.loads((REPO / "benchmarks" / "llama2_shapes.json").read_text())["models"][model]["config"]
    (model_dir / "config.json").write_text(json.dumps({"model_type": "llama", **shape}))
    train = tmp_path / "train.jsonl"
    train.write_text('{"instruction": "q", "input": "", "output": "a"}\n' * 1000)
    overrides = [f"model.path={model_dir}", f"data.speciality_train={train}",
                 f"search.space={REPO / 'search_spaces' / 'cofitune.yaml'}"]
    config_path = k8s / "overlays" / config_file
    planned = k8s / "overlays" / "planned"
    assert main(["--config", str(config_path), "--gpus", str(gpus), "--tflops", "400", "--kustomize", str(planned),
                 "--gpu-overlay", str(k8s / "overlays" / "gpu"), *overrides]) == 0
    assert (planned / "kustomization.yaml").is_file()

    rayjob = one(render(planned), "RayJob")
    assert crd_errors(rayjob, crd_schema("RayJob")) == []
    assert crd_errors(raycluster_from(rayjob), crd_schema("RayCluster")) == []
    for name, template in pod_templates(rayjob).items():
        wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name.replace(":", "-")},
                   "template": template}
        kubernetes_validate.validate(wrapped, K8S_VERSION, strict=True)
    group, limits = _gpu_pod(rayjob)
    assert group["groupName"] == ("gpu" if pod_gpus == 1 else f"gpu-x{pod_gpus}")
    assert (group["minReplicas"], group["replicas"], group["maxReplicas"]) == (0, 0, replicas)
    assert int(limits["nvidia.com/gpu"]) == pod_gpus
    config = load_config(config_path, overrides)
    sc = config.scaling
    trial_gpus = sc.num_workers * sc.gpus_per_worker
    assert trial_gpus <= pod_gpus and pod_gpus % trial_gpus == 0  # a pod holds whole trials
    assert config.search.max_concurrent_trials * trial_gpus <= group["maxReplicas"] * pod_gpus
    workers = pod_gpus // sc.gpus_per_worker
    assert workers * sc.cpus_per_worker + sc.trial_cpus <= quantity(limits["cpu"])
    model_bytes = Shape.from_config(shape).parameters * {"bfloat16": 2, "float16": 2, "float32": 4}[config.model.dtype]
    assert quantity(limits["memory"]) >= 1.25 * workers * model_bytes
