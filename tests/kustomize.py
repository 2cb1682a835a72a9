"""A small Kustomize and the schema checks for the k8s/ manifests' tests.

Rendering: a small Python Kustomize for exactly the subset k8s/ uses (resources, JSON 6902
patches with a target, images, configMapGenerator without name hash, creating a ConfigMap or
merging files into one from the resources). Anything else in a kustomization is an error, never
ignored; where `kubectl kustomize` or `kustomize` is on PATH a test checks that both renderings are
identical.

Validation: RayJob (and the RayCluster the operator makes from its `rayClusterSpec`) against the
KubeRay v1.7.0 CRD schemas in $KUBERAY_CRDS_DIR with structural-schema semantics (unknown fields
are errors, int-or-string, list-map keys); ConfigMap, PVC, Service and every pod template against
Kubernetes' own schemas (kubernetes-validate, strict); the PodMonitor against the fields of
monitoring.coreos.com/v1 it uses.
"""

from __future__ import annotations

import copy
import functools
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- rendering


class KustomizeError(ValueError):
    """A kustomization this renderer cannot render faithfully, or one that is wrong."""


_SUPPORTED_KEYS = {"apiVersion", "kind", "resources", "patches", "images", "configMapGenerator", "generatorOptions"}


def render(directory: Path) -> list[dict]:
    """Render a kustomization directory: resources, then generators, then patches, then images."""
    directory = Path(directory)
    kfile = directory / "kustomization.yaml"
    if not kfile.is_file():
        raise KustomizeError(f"{directory}: no kustomization.yaml")
    spec = yaml.safe_load(kfile.read_text()) or {}
    unsupported = set(spec) - _SUPPORTED_KEYS
    if unsupported:
        raise KustomizeError(f"{kfile}: keys this renderer does not implement: {sorted(unsupported)}")
    if spec.get("kind", "Kustomization") != "Kustomization":
        raise KustomizeError(f"{kfile}: kind must be Kustomization")

    resources: list[dict] = []
    for entry in spec.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            resources.extend(render(path))
        elif path.is_file():
            resources.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None)
        else:
            raise KustomizeError(f"{kfile}: resource {entry!r} not found")

    _generate_config_maps(directory, spec, resources)
    _check_unique(resources, kfile)

    for patch in spec.get("patches", []):
        _apply_patch(directory, kfile, patch, resources)
    for image in spec.get("images", []):
        _apply_image(image, resources)
    return resources


def _check_unique(resources: list[dict], where: Path) -> None:
    seen = set()
    for res in resources:
        key = res_id(res)
        if key in seen:
            raise KustomizeError(f"{where}: resource {key} appears twice")
        seen.add(key)


def res_id(res: dict) -> tuple[str, str, str]:
    return (res.get("apiVersion", ""), res.get("kind", ""), res.get("metadata", {}).get("name", ""))


def _inside(directory: Path, relative: str, kfile: Path) -> Path:
    path = (directory / relative).resolve()
    if directory.resolve() not in path.parents:  # kustomize's default load restrictor
        raise KustomizeError(f"{kfile}: {relative!r} is outside the kustomization directory")
    return path


def _generate_config_maps(directory: Path, spec: dict, resources: list[dict]) -> None:
    """Add each generated ConfigMap to `resources`, or with `behavior: merge` merge its data and labels
    into the ConfigMap of that name already there."""
    generators = spec.get("configMapGenerator", [])
    options = spec.get("generatorOptions", {})
    kfile = directory / "kustomization.yaml"
    if set(options) - {"disableNameSuffixHash", "labels"}:
        raise KustomizeError(f"{kfile}: unsupported generatorOptions {sorted(set(options))}")
    if generators and options.get("disableNameSuffixHash") is not True:
        raise KustomizeError(f"{kfile}: the renderer does not compute name hashes; set disableNameSuffixHash: true")
    for gen in generators:
        if set(gen) - {"name", "files", "literals", "behavior"}:
            raise KustomizeError(f"{kfile}: unsupported configMapGenerator keys {sorted(set(gen))}")
        if gen.get("behavior", "create") not in ("create", "merge"):
            raise KustomizeError(f"{kfile}: configMapGenerator behavior {gen['behavior']!r} is not implemented")
        data: dict[str, str] = {}
        for item in gen.get("files", []):
            key, sep, rel = item.partition("=")
            if not sep:
                key, rel = Path(item).name, item
            data[key] = _inside(directory, rel, kfile).read_text()
        for item in gen.get("literals", []):
            key, sep, value = item.partition("=")
            if not sep:
                raise KustomizeError(f"{kfile}: literal {item!r} is not key=value")
            data[key] = value
        if gen.get("behavior") == "merge":
            existing = [r for r in resources if r["kind"] == "ConfigMap" and r["metadata"]["name"] == gen["name"]]
            if not existing:
                raise KustomizeError(f"{kfile}: no ConfigMap {gen['name']!r} in the resources to merge into")
            existing[0]["data"].update(data)
            existing[0]["metadata"].setdefault("labels", {}).update(options.get("labels", {}))
            continue
        metadata: dict[str, Any] = {"name": gen["name"]}
        if options.get("labels"):
            metadata["labels"] = dict(options["labels"])
        resources.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data})


def _apply_patch(directory: Path, kfile: Path, patch: dict, resources: list[dict]) -> None:
    if set(patch) - {"path", "patch", "target"} or ("path" in patch) == ("patch" in patch):
        raise KustomizeError(f"{kfile}: a patch needs exactly one of path/patch, and a target")
    target = patch.get("target")
    if not target or set(target) - {"group", "version", "kind", "name"}:
        raise KustomizeError(f"{kfile}: patch target must use only group/version/kind/name: {target}")
    text = _inside(directory, patch["path"], kfile).read_text() if "path" in patch else patch["patch"]
    ops = yaml.safe_load(text)
    if not isinstance(ops, list):
        raise KustomizeError(f"{kfile}: only JSON 6902 patches (a list of operations) are supported")
    matched = [r for r in resources if _matches(r, target)]
    if not matched:
        raise KustomizeError(f"{kfile}: patch target {target} matches no resource")
    for res in matched:
        for op in ops:
            json6902(res, op, kfile)


def _matches(res: dict, target: dict) -> bool:
    group, _, version = res["apiVersion"].rpartition("/")
    return (
        target.get("group", "") == group
        and target.get("version", version) == version
        and target.get("kind", res["kind"]) == res["kind"]
        and target.get("name", res["metadata"]["name"]) == res["metadata"]["name"]
    )


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise KustomizeError(f"JSON pointer {path!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json6902(doc: Any, op: dict, where: Path) -> None:
    """RFC 6902 add / remove / replace / test, in place."""
    kind = op.get("op")
    if kind not in ("add", "remove", "replace", "test"):
        raise KustomizeError(f"{where}: JSON patch op {kind!r} is not supported")
    *parents, last = _pointer(op["path"])
    node = doc
    for part in parents:
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError) as exc:
            raise KustomizeError(f"{where}: path {op['path']} does not exist ({exc!r})") from None
    if isinstance(node, list):
        if kind == "add" and last == "-":
            node.append(copy.deepcopy(op["value"]))
            return
        index = int(last)
        if kind == "add":
            if not 0 <= index <= len(node):
                raise KustomizeError(f"{where}: index {index} out of range in {op['path']}")
            node.insert(index, copy.deepcopy(op["value"]))
            return
        if not 0 <= index < len(node):
            raise KustomizeError(f"{where}: index {index} out of range in {op['path']}")
        key: Any = index
    elif isinstance(node, dict):
        key = last
        if kind == "add":
            node[key] = copy.deepcopy(op["value"])
            return
        if key not in node:
            raise KustomizeError(f"{where}: {kind} of missing path {op['path']}")
    else:
        raise KustomizeError(f"{where}: {op['path']} goes through a scalar")
    if kind == "remove":
        del node[key]
    elif kind == "replace":
        node[key] = copy.deepcopy(op["value"])
    elif node[key] != op["value"]:
        raise KustomizeError(f"{where}: test failed at {op['path']}")


def split_image(image: str) -> tuple[str, str | None, str | None]:
    name, _, digest = image.partition("@")
    tag = None
    if ":" in name.rsplit("/", 1)[-1]:
        name, tag = name.rsplit(":", 1)
    return name, tag, digest or None


def _apply_image(rule: dict, resources: list[dict]) -> None:
    """Kustomize's image transformer: every containers/initContainers image anywhere in any object."""
    if set(rule) - {"name", "newName", "newTag", "digest"}:
        raise KustomizeError(f"unsupported image rule keys {sorted(rule)}")

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("containers", "initContainers") and isinstance(value, list):
                    for container in value:
                        if isinstance(container, dict) and isinstance(container.get("image"), str):
                            container["image"] = _retag(container["image"], rule)
                visit(value)
        elif isinstance(node, list):
            for item in node:
                visit(item)

    for res in resources:
        visit(res)


def _retag(image: str, rule: dict) -> str:
    name, tag, digest = split_image(image)
    if name != rule["name"]:
        return image
    name = rule.get("newName", name)
    if "digest" in rule:
        return f"{name}@{rule['digest']}"
    if "newTag" in rule:
        return f"{name}:{rule['newTag']}"
    return name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


# --------------------------------------------------------------------------- CRD validation


def _crd_dir() -> Path | None:
    env = os.environ.get("KUBERAY_CRDS_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "kuberay-crds")  # where the developers' machines keep them
    for path in candidates:
        if (path / "ray.io_rayjobs.yaml").is_file() and (path / "ray.io_rayclusters.yaml").is_file():
            return path
    return None


def crd_schema(kind: str) -> dict:
    directory = _crd_dir()
    if directory is None:
        pytest.skip(
            "KubeRay CRDs not found: set KUBERAY_CRDS_DIR to a folder with ray.io_rayjobs.yaml and "
            "ray.io_rayclusters.yaml (KubeRay v1.7.0, ray-operator/config/crd/bases)"
        )
    return _load_crd_schema(directory / f"ray.io_{kind.lower()}s.yaml", kind)


@functools.lru_cache(maxsize=None)
def _load_crd_schema(path: Path, kind: str) -> dict:
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 2 MB of YAML
    assert crd["spec"]["names"]["kind"] == kind
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


def structural_to_jsonschema(schema: dict, root: bool = True) -> dict:
    """A Kubernetes structural schema as JSON Schema with the API server's semantics:
    unknown fields are errors unless x-kubernetes-preserve-unknown-fields; int-or-string accepts
    both; nullable accepts null; int32/int64 are range-checked. Top-level metadata is ObjectMeta,
    which the API server checks itself (see check_object_meta)."""
    out = {k: v for k, v in schema.items()
           if k not in ("properties", "items", "additionalProperties", "anyOf", "allOf", "oneOf", "not")}
    if "properties" in schema:
        out["properties"] = {name: structural_to_jsonschema(sub, False) for name, sub in schema["properties"].items()}
        if root:
            out["properties"]["metadata"] = {"type": "object"}
    if "items" in schema:
        out["items"] = structural_to_jsonschema(schema["items"], False)
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = structural_to_jsonschema(schema["additionalProperties"], False)
    elif "additionalProperties" in schema:
        out["additionalProperties"] = schema["additionalProperties"]
    elif "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    for key in ("anyOf", "allOf", "oneOf"):
        if key in schema:
            out[key] = [structural_to_jsonschema(s, False) for s in schema[key]]
    if "not" in schema:
        out["not"] = structural_to_jsonschema(schema["not"], False)
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if schema.get("format") == "int32":
        out.update(minimum=-(2**31), maximum=2**31 - 1)
    if schema.get("format") == "int64":
        out.update(minimum=-(2**63), maximum=2**63 - 1)
    return out


def _list_type(validator, list_type, instance, schema):
    """x-kubernetes-list-type: set items are unique; map items are unique by their map keys."""
    if not isinstance(instance, list):
        return
    if list_type == "set" and len(instance) != len({repr(i) for i in instance}):
        yield jsonschema.ValidationError(f"duplicate entries in a list-type=set: {instance}")
    if list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        seen = set()
        for item in instance:
            ident = tuple(item.get(k, "TCP" if k == "protocol" else None) for k in keys)
            if ident in seen:
                yield jsonschema.ValidationError(f"duplicate entry {dict(zip(keys, ident))} in a list-type=map")
            seen.add(ident)


StructuralValidator = jsonschema.validators.extend(jsonschema.Draft202012Validator,
                                                   {"x-kubernetes-list-type": _list_type})

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def check_object_meta(meta: dict) -> list[str]:
    errors = []
    name = meta.get("name", "")
    if not name or len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        errors.append(f"metadata.name: {name!r} is not a DNS-1123 subdomain")
    for key, value in (meta.get("labels") or {}).items():
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            errors.append(f"metadata.labels[{key}]: {value!r} is not a valid label value")
    unknown = set(meta) - {"name", "namespace", "labels", "annotations"}
    if unknown:
        errors.append(f"metadata: unexpected fields {sorted(unknown)}")
    return errors


_VALIDATORS: dict[int, Any] = {}


def _validator(key: int, schema: dict):
    if key not in _VALIDATORS:
        _VALIDATORS[key] = StructuralValidator(structural_to_jsonschema(schema))
    return _VALIDATORS[key]


def crd_errors(obj: dict, schema: dict) -> list[str]:
    """Every reason an API server with this CRD would reject `obj` (CEL rules excepted: see the
    test that shows no field carrying one is set)."""
    validator = _validator(id(schema), schema)
    errors = [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
              for e in validator.iter_errors(obj)]
    return errors + check_object_meta(obj.get("metadata", {}))


def cel_paths(schema: dict, path: str = "") -> list[str]:
    """Dotted paths (lists as []) of the schema nodes that carry x-kubernetes-validations."""
    found = [path or "<root>"] if "x-kubernetes-validations" in schema else []
    for name, sub in schema.get("properties", {}).items():
        found += cel_paths(sub, f"{path}.{name}" if path else name)
    if "items" in schema:
        found += cel_paths(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        found += cel_paths(schema["additionalProperties"], f"{path}{{}}")
    return found


def present(obj: Any, path: str) -> bool:
    """Whether a dotted schema path (with [] for list items) is set anywhere in obj."""
    if path in ("", "<root>"):
        return True
    head, _, rest = path.partition(".")
    if head.endswith("[]"):
        name = head[:-2]
        items = obj.get(name) if isinstance(obj, dict) else None
        return isinstance(items, list) and any(present(i, rest) for i in items)
    return isinstance(obj, dict) and head in obj and present(obj[head], rest)
