"""The cost plan: what a search costs on a cluster before it runs, in time and GPU-hours.

    python -m cofitune_ray.plan.cost --config FILE [--search-space FILE] (--gpus N | --cpus N)
        [--gpu h100] [--utilisation 0.4 | --tflops X | --calibrate] [--startup-s S] [--eval-s S]
        [--checkpoint-s S] [--seq-len T] [--kustomize DIR] [key=value ...]

For the config's model (its config.json only: no weights read, no GPU, no torch unless
`--calibrate`), its search space and a cluster of N GPUs (or CPUs, for a CPU config) it prints:

  - every node's step: its work per token and its seconds per optimizer step (`core/cost.py`);
  - the search as a whole, for the tree, the exhaustive grid of the same nodes and a full-SFT sweep
    over the same learning rates: trials, optimizer steps, wall time and GPU-hours, each as bounds
    (`core/budget.py`: the rates beyond `lr_keep` stop at the rung; low = the fewest nodes, every
    kept run pruned as early as the stop rules allow; high = the costliest branch, no run pruned);
  - the cluster shape: the KubeRay GPU worker group that runs it, and with `--kustomize DIR` an
    overlay that resizes the `gpu` overlay's worker group to it (`kubectl apply -k DIR`).

Throughput: `--calibrate` times one full-SFT step of the model's shape on this machine
(`training/step_time.py`); `--tflops` gives the effective TFLOP/s per GPU (or per worker on CPU);
otherwise `--utilisation` of the GPU kind's bf16 peak. Each trial trains on
`scaling.num_workers x scaling.gpus_per_worker` GPUs, the workers the memory plan
(`python -m cofitune_ray.plan`) sized; `search.max_concurrent_trials` trials at once, as many as the
GPUs hold. `docs/cost.md` has the model, its check against measured runs and a 7B-70B table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from cofitune_ray.config import Config, ConfigError, learning_rates, load_config, selection_policy, stop_rules
from cofitune_ray.core.budget import RunSchedule, SearchCost, grid_shape, sweep_shape, tree_shapes
from cofitune_ray.core.cost import (
    GPU_PEAKS,
    CostError,
    Device,
    RunTime,
    Shape,
    StepWork,
    calibrate,
    gpu,
    step_work,
)
from cofitune_ray.core.node import FULL_SFT_PART, ModelPart
from cofitune_ray.core.space import SearchSpace, SearchSpaceError, load_search_space

#: Bytes per weight of each `model.dtype`.
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
#: Host memory per worker: the whole model (every worker loads it with from_pretrained), and a quarter more.
HOST_MEMORY_FACTOR = 1.25
#: Memory traffic of one CPU worker's share (bytes/s), for CPU configs: the optimizer term only.
CPU_BANDWIDTH = 10e9
#: Layers of the calibration step's model (same width as the model's).
CALIBRATION_LAYERS = 2


def read_shape(model_path: str) -> Shape:
    """The model's shape from `model_path/config.json`, read as JSON (no transformers, no torch)."""
    path = Path(model_path)
    path = path / "config.json" if path.is_dir() else path
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CostError(f"model.path: cannot read {path}: {exc}") from None
    return Shape.from_config(data, source=str(path))


def training_examples(path: str) -> int:
    """Records of the speciality's training data, counted without reading them in (the formats of
    `training/data.py`: JSONL, a JSON list, Parquet, a `save_to_disk` directory)."""
    import pyarrow

    data = Path(path)
    try:
        if data.is_dir():
            files = json.loads((data / "state.json").read_text())["_data_files"]
            return sum(pyarrow.ipc.open_stream(pyarrow.memory_map(str(data / f["filename"]))).read_all().num_rows
                       for f in files)
        if data.suffix == ".parquet":
            import pyarrow.parquet

            return pyarrow.parquet.ParquetFile(data).metadata.num_rows
        text = data.read_text(encoding="utf-8")
        if data.suffix == ".json" and text.lstrip().startswith("["):
            return len(json.loads(text))
        return sum(1 for line in text.splitlines() if line.strip())
    except (OSError, ValueError, KeyError, pyarrow.ArrowException) as exc:
        raise CostError(f"data.speciality_train: cannot count the records of {path}: {exc}") from None


def run_schedule(config: Config, examples: int) -> RunSchedule:
    """The evaluation points of one run: the training loop's epochs, accumulation and caps (`training/loop.py`)."""
    t, s = config.train, config.scaling
    per_worker = math.ceil(examples / s.num_workers)  # DistributedSampler pads to equal shards
    per_epoch = max(1, math.ceil(math.ceil(per_worker / t.batch_size) / t.grad_accum_steps))
    total = per_epoch * t.epochs
    total = min(total, t.max_steps) if t.max_steps else total
    return RunSchedule.of(total, config.eval.every_n_steps, per_epoch, config.eval.at_epoch_end)


@dataclass(frozen=True)
class ClusterShape:
    """The KubeRay GPU worker group that runs the search: pods, their resources, the autoscaler's bounds."""

    gpus_per_pod: int
    cpus_per_pod: int
    memory_gib: int
    min_replicas: int
    max_replicas: int

    @property
    def group_name(self) -> str:
        return "gpu" if self.gpus_per_pod == 1 else f"gpu-x{self.gpus_per_pod}"

    def describe(self) -> str:
        return (f"KubeRay worker group {self.group_name}: {self.gpus_per_pod} GPU(s), {self.cpus_per_pod} CPUs and "
                f"{self.memory_gib}Gi per pod, {self.min_replicas} to {self.max_replicas} pods")

    def patch(self) -> list[dict]:
        """JSON 6902 operations on the `gpu` overlay's RayJob: its GPU group resized to this shape."""
        resources = {"cpu": str(self.cpus_per_pod), "memory": f"{self.memory_gib}Gi",
                     "nvidia.com/gpu": self.gpus_per_pod}
        group = "/spec/rayClusterSpec/workerGroupSpecs/1"
        ops = [{"op": "test", "path": f"{group}/groupName", "value": "gpu"},
               {"op": "replace", "path": f"{group}/groupName", "value": self.group_name},
               {"op": "replace", "path": f"{group}/minReplicas", "value": self.min_replicas},
               {"op": "replace", "path": f"{group}/replicas", "value": self.min_replicas},
               {"op": "replace", "path": f"{group}/maxReplicas", "value": self.max_replicas},
               {"op": "replace", "path": f"{group}/template/spec/containers/0/resources",
                "value": {"requests": dict(resources), "limits": dict(resources)}}]
        if self.gpus_per_pod > 1:  # NCCL's intra-node buffers live in /dev/shm (memory the pod's limit counts)
            shm = f"{min(64, max(16, self.memory_gib // 2))}Gi"
            ops += [{"op": "test", "path": f"{group}/template/spec/volumes/2/name", "value": "dshm"},
                    {"op": "replace", "path": f"{group}/template/spec/volumes/2/emptyDir/sizeLimit", "value": shm}]
        return ops

    def write_overlay(self, directory: Path, gpu_overlay: Path) -> None:
        """A kustomize overlay in `directory`: the `gpu` overlay with its GPU worker group resized."""
        directory.mkdir(parents=True, exist_ok=True)
        kustomization = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": [os.path.relpath(gpu_overlay.resolve(), directory.resolve())],
            "patches": [{"target": {"group": "ray.io", "version": "v1", "kind": "RayJob", "name": "cofitune-search"},
                         "path": "gpu-workers.yaml"}],
        }
        header = "# Written by python -m cofitune_ray.plan.cost: the gpu overlay, its GPU group sized by the plan.\n"
        (directory / "kustomization.yaml").write_text(header + yaml.safe_dump(kustomization, sort_keys=False))
        patch = f"# {self.describe()}\n" + yaml.safe_dump(self.patch(), sort_keys=False)
        (directory / "gpu-workers.yaml").write_text(patch)


def cluster_shape(config: Config, shape: Shape, slots: int, gpus_per_node: int) -> ClusterShape:
    """Pods that hold whole trials (one trial per pod up to `gpus_per_node` GPUs, else whole nodes per trial),
    as many as the concurrent trials need; CPUs for the workers and a trial driver, host memory for every
    worker's copy of the model at load (`HOST_MEMORY_FACTOR`)."""
    s = config.scaling
    trial_gpus = s.num_workers * s.gpus_per_worker
    if trial_gpus <= gpus_per_node:
        pod_gpus = max(1, math.ceil(trial_gpus))
    elif trial_gpus % gpus_per_node == 0:
        pod_gpus = gpus_per_node
    else:
        raise CostError(f"scaling.num_workers x scaling.gpus_per_worker = {trial_gpus:g} GPUs per trial: "
                        f"not a whole number of {gpus_per_node}-GPU nodes")
    workers = max(1, math.floor(pod_gpus / s.gpus_per_worker + 1e-9))
    cpus = math.ceil(HOST_MEMORY_FACTOR * (workers * s.cpus_per_worker + s.trial_cpus))
    model_bytes = shape.parameters * DTYPE_BYTES[config.model.dtype]
    memory_gib = math.ceil(HOST_MEMORY_FACTOR * workers * model_bytes / 2**30)
    return ClusterShape(pod_gpus, cpus, memory_gib, 0, math.ceil(slots * trial_gpus / pod_gpus))


@dataclass(frozen=True)
class CostPlan:
    """Every node's step, and the tree, the grid and the full-SFT sweep as bounds on a cluster."""

    config: Config
    shape: Shape
    device: Device
    device_note: str
    overheads: RunTime
    schedule: RunSchedule
    examples: int
    seq_len: int
    capacity: float  # GPUs (or CPUs) in the cluster
    slots: int
    per_trial: float  # GPUs (or CPUs) a trial holds
    nodes: list[ModelPart]
    works: dict[str, StepWork]
    searches: list[tuple[str, SearchCost, SearchCost]]  # name, low, high
    setup_s: float = 0.0  # once per search, before its runs: Ray start, the base model's evaluation, importance

    def wall_s(self, cost: SearchCost) -> float:
        """A search's wall time: its setup, then its runs."""
        return self.setup_s + cost.wall_s

    @property
    def unit(self) -> str:
        return "GPU" if self.config.scaling.use_gpu else "CPU"

    def step_s(self, part: ModelPart) -> float:
        return step_seconds(self.device, self.works[part.key()], self.config, self.seq_len)

    def table(self) -> str:
        c, sh, sched = self.config, self.shape, self.schedule
        t, s = c.train, c.scaling
        points = ", ".join(str(p) for p in sched.points)
        lines = [
            f"cost plan: {sh.num_layers} layers, hidden {sh.hidden_size}, {_count(sh.parameters)} parameters "
            f"(from config.json: no weights read)",
            f"  {self.examples:,} training examples, {t.epochs} epoch(s)"
            f"{f', max_steps {t.max_steps}' if t.max_steps else ''}: {sched.total_steps:,} steps per run "
            f"(micro-batch {t.batch_size} x {self.seq_len} tokens, "
            f"{t.grad_accum_steps} accumulation, {s.num_workers} worker(s)); evaluation at step(s) {points}",
            f"  throughput: {self.device_note}",
            f"  per run: start-up {self.overheads.startup_s:g} s, evaluation {self.overheads.eval_s:g} s and "
            f"checkpoint {self.overheads.checkpoint_s:g} s per point; per search: {self.setup_s:g} s before the "
            f"first run",
            f"  cluster: {self.capacity:g} {self.unit}s; a trial holds {self.per_trial:g} {self.unit}(s): "
            f"{self.slots} trial(s) at once (search.max_concurrent_trials {c.search.max_concurrent_trials})",
            "",
            f"  {'node':<34} {'trained':>9} {'GFLOP/token':>12} {'step s':>9} {'vs full':>8} {'run s':>9}",
        ]
        full = self.step_s(FULL_SFT_PART)
        for part in self.nodes:
            work, step = self.works[part.key()], self.step_s(part)
            run = self.overheads.seconds(sched.total_steps, len(sched.points), step)
            lines.append(f"  {part.describe():<34} {_count(work.trained):>9} {work.per_token / 1e9:>12.4g} "
                         f"{step:>9.4g} {step / full:>8.3f} {run:>9.4g}")
        lines += ["", f"  {'search':<22} {'trials':>9} {'steps':>17} {'wall':>21} {self.unit + '-hours':>19}"]
        for name, low, high in self.searches:
            lines.append(f"  {name:<22} {_span(low.trials, high.trials, '{:,}'):>9} "
                         f"{_span(low.steps, high.steps, '{:,}'):>17} "
                         f"{_span(self.wall_s(low), self.wall_s(high), _duration):>21} "
                         f"{_span(low.gpu_s / 3600, high.gpu_s / 3600, '{:.3g}'):>19}")
        lines.append("  (the rung stops the rates beyond lr_keep; low: the fewest nodes, every kept run pruned as "
                     "early as the stop rules allow; high: the costliest branch, no run pruned)")
        return "\n".join(lines)


def step_seconds(device: Device, work: StepWork, config: Config, seq_len: int) -> float:
    """One optimizer step of a worker under the config: its micro-batches, and AdamW over its shard under FSDP."""
    t, s = config.train, config.scaling
    shards = s.num_workers if s.strategy == "fsdp" else 1
    return device.step_seconds(work, t.batch_size * seq_len, t.grad_accum_steps, shards)


def build_plan(config: Config, space: SearchSpace, shape: Shape, device: Device, device_note: str,
               overheads: RunTime, capacity: float, examples: int, seq_len: int | None = None,
               setup_s: float = 0.0) -> CostPlan:
    """The cost plan of `config` over `space` on `capacity` GPUs (or CPUs, for a CPU config)."""
    s, search = config.scaling, config.search
    seq_len = seq_len or config.data.max_seq_length
    per_trial = s.num_workers * s.gpus_per_worker if s.use_gpu else s.trial_cpus + s.num_workers * s.cpus_per_worker
    fit = math.floor(capacity / per_trial + 1e-9)
    if fit < 1:
        raise CostError(f"a trial holds {per_trial:g} {'GPU' if s.use_gpu else 'CPU'}(s), the cluster has {capacity}")
    slots = min(search.max_concurrent_trials, fit)
    schedule = run_schedule(config, examples)
    nodes = [n for n in space.reachable_nodes() if n.trains]
    if FULL_SFT_PART not in nodes:
        nodes.insert(0, FULL_SFT_PART)  # the sweep's node, and every node's "vs full"
    works = {n.key(): step_work(shape, n, seq_len, config.train.activation_checkpointing) for n in nodes}
    rates = learning_rates(config)

    def run_seconds(run) -> float:
        step = step_seconds(device, works[run.part.key()], config, seq_len) if run.part.trains else 0.0
        return overheads.seconds(run.steps, run.points, step)

    def node_cost(part: ModelPart) -> float:
        step = step_seconds(device, works[part.key()], config, seq_len)
        return len(rates.candidates) * overheads.seconds(schedule.total_steps, len(schedule.points), step)

    policy = selection_policy(config)
    fewest, most = tree_shapes(space, policy, node_cost)
    rules = stop_rules(config)  # the floor rule judges only under spec_floor, the uni rule only under uni
    rules = dataclasses.replace(rules, prune_after=rules.prune_after if search.objective == "spec_floor" else None,
                                uni_margin=rules.uni_margin if search.objective == "uni" else None)
    searches = []
    for name, low_shape, high_shape in (("tree", fewest, most), ("exhaustive grid", grid_shape(space), None),
                                        ("full-SFT lr sweep", sweep_shape(), None)):
        high_shape = high_shape or low_shape
        limit = policy.max_trials if name == "tree" else None
        low = SearchCost.of(low_shape, rates, schedule, rules, True, run_seconds, slots, per_trial, limit)
        high = SearchCost.of(high_shape, rates, schedule, rules, False, run_seconds, slots, per_trial, limit)
        searches.append((name, low, high))
    return CostPlan(config, shape, device, device_note, overheads, schedule, examples, seq_len, capacity, slots,
                    per_trial, nodes, works, searches, setup_s)


def _span(low: float, high: float, fmt) -> str:
    text = (lambda v: fmt.format(v)) if isinstance(fmt, str) else fmt
    return text(low) if text(low) == text(high) else f"{text(low)}..{text(high)}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n:,}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cofitune_ray.plan.cost", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the run's YAML config")
    parser.add_argument("--search-space", help="search-space YAML (overrides search.space)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--gpus", type=int, help="GPUs in the cluster (a GPU config)")
    where.add_argument("--cpus", type=float, help="CPUs in the cluster (a CPU config)")
    parser.add_argument("--gpu", default="h100", choices=sorted(GPU_PEAKS), help="GPU kind (default h100)")
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument("--utilisation", type=float, default=0.4,
                       help="share of the GPU's bf16 peak a training step reaches (default 0.4)")
    speed.add_argument("--tflops", type=float, help="effective TFLOP/s per GPU (per worker on CPU)")
    speed.add_argument("--calibrate", action="store_true",
                       help=f"time one full-SFT step of the model's shape ({CALIBRATION_LAYERS} layers) here")
    parser.add_argument("--startup-s", type=float, default=16.0,
                        help="seconds of a trial outside its steps and evaluations: worker start, model load, "
                             "report (default: 16, measured on the demo)")
    parser.add_argument("--eval-s", type=float, default=10.0,
                        help="seconds of one evaluation point (default 10: an assumption; time one of yours)")
    parser.add_argument("--checkpoint-s", type=float, default=0.0,
                        help="seconds of one point's checkpoints beyond --startup-s (default 0)")
    parser.add_argument("--setup-s", type=float, default=60.0,
                        help="seconds once per search before its runs: Ray start, base model evaluation, importance "
                             "(default: 60, measured on the demo: 58)")
    parser.add_argument("--seq-len", type=int, help="tokens per padded sequence (default data.max_seq_length)")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="GPUs of one Kubernetes node (default 8)")
    parser.add_argument("--kustomize", type=Path, metavar="DIR",
                        help="write a kustomize overlay here: the gpu overlay with its worker group sized by the plan")
    parser.add_argument("--gpu-overlay", type=Path, default=Path(__file__).resolve().parents[2] / "k8s/overlays/gpu",
                        help="the overlay --kustomize builds on (default k8s/overlays/gpu)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = load_config(args.config, args.overrides, args.search_space)
        space = load_search_space(config.search.space)
        shape = read_shape(config.model.path)
        examples = training_examples(config.data.speciality_train)
        if config.scaling.use_gpu != (args.gpus is not None):
            raise CostError(f"scaling.use_gpu is {str(config.scaling.use_gpu).lower()}: give "
                            f"{'--gpus' if config.scaling.use_gpu else '--cpus'}")
        seq_len = args.seq_len or config.data.max_seq_length
        device, note = _device(args, config, shape, seq_len)
        overheads = RunTime(args.startup_s, args.eval_s, args.checkpoint_s)
        capacity = args.gpus if args.gpus is not None else args.cpus
        plan = build_plan(config, space, shape, device, note, overheads, capacity, examples, seq_len, args.setup_s)
        print(plan.table())
        if config.scaling.use_gpu:
            cluster = cluster_shape(config, shape, plan.slots, args.gpus_per_node)
            print(f"\n  {cluster.describe()}")
            if args.kustomize:
                cluster.write_overlay(args.kustomize, args.gpu_overlay)
                print(f"  overlay written: kubectl apply -k {args.kustomize}")
    except (ConfigError, SearchSpaceError, CostError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _device(args, config: Config, shape: Shape, seq_len: int) -> tuple[Device, str]:
    """The throughput the plan uses, and a line saying where it comes from."""
    use_gpu = config.scaling.use_gpu
    bandwidth = GPU_PEAKS[args.gpu][1] if use_gpu else CPU_BANDWIDTH
    name = args.gpu if use_gpu else "cpu"
    if args.tflops is not None:
        return Device(name, args.tflops * 1e12, bandwidth), f"{args.tflops:g} TFLOP/s per {name} (given)"
    if args.calibrate:
        from cofitune_ray.training.step_time import measure_full_step

        batch = config.train.batch_size
        device = "cuda" if use_gpu else "cpu"
        seconds, used = measure_full_step(config.model.path, CALIBRATION_LAYERS, batch, seq_len, device,
                                          config.model.dtype)
        small = Shape.from_config(used, source="calibration model")
        measured = calibrate(name, step_work(small, FULL_SFT_PART, seq_len), batch * seq_len, seconds, bandwidth)
        return measured, (f"{measured.flops_per_s / 1e12:.3g} TFLOP/s per {name}, measured: a full-SFT step of "
                          f"{small.num_layers} layer(s) of this width, {batch} x {seq_len} tokens: {seconds:.4g} s")
    if not use_gpu:
        raise CostError("a CPU config needs --tflops or --calibrate")
    device = gpu(args.gpu, args.utilisation)
    return device, (f"{device.flops_per_s / 1e12:.3g} TFLOP/s per {name}: {args.utilisation:g} of its "
                    f"{GPU_PEAKS[args.gpu][0] / 1e12:g} TFLOP/s bf16 peak (--utilisation; --calibrate measures it)")


if __name__ == "__main__":
    sys.exit(main())
