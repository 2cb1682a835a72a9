"""The memory plan's estimate vs the measured peak of a node's training, for tiny LLaMA models.

    python benchmarks/memory_plan.py [--device cpu|cuda] [--threads 1] [--strategies single ddp fsdp]

Each case trains one node of a LLaMA-architecture model built from a config (random weights, the
toy world's character tokenizer, random text) for 4 optimizer steps with the product's own loop
(`training.loop.training_points`: forward, backward, clipping, AdamW, soft-mask) and measures the
peak of live tensor bytes over those steps (`plan.measure.measure_peak`: counted by a
TorchDispatchMode on CPU, `torch.cuda.max_memory_allocated` on CUDA). Next to it, the plan's
estimate (`plan.estimate`) for the same model, node and settings, and their ratio.

On CUDA the cases use a 125M-parameter model (batch 8 x 512, bf16), large enough that the cuBLAS
and attention workspaces `max_memory_allocated` also counts (a few MB) are small against its peak.

Strategies: `single` (one process: what a DDP worker holds apart from DDP's buckets), `ddp`
(2 processes, DistributedDataParallel as Ray Train's prepare_model makes it) and `fsdp`
(2 processes, `fully_shard` per decoder layer and on the root). Distributed cases use gloo on CPU,
nccl on CUDA (2 GPUs). Batches mix sequences longer and shorter than `max_seq_length`, so every
batch is padded to it, as the plan assumes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import string
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

from cofitune_ray.config import load_config
from cofitune_ray.core.node import PAPER_NODE, ModelPart
from cofitune_ray.plan.measure import measure_peak
from cofitune_ray.plan.memory import Workload, estimate, read_model_shape
from cofitune_ray.toyworld.pretrain import save_random_model
from cofitune_ray.training.loop import training_points
from cofitune_ray.training.model import load_part, load_tokenizer
from cofitune_ray.training.softmask.mask import Importance, SoftMask

SIZES = {
    "S": dict(layers=4, hidden=64, intermediate=176, heads=4, kv_heads=2, vocab=512),
    "M": dict(layers=8, hidden=128, intermediate=344, heads=8, kv_heads=4, vocab=1024),
    "L": dict(layers=8, hidden=256, intermediate=688, heads=8, kv_heads=8, vocab=2048),
    "125M": dict(layers=12, hidden=768, intermediate=2048, heads=12, kv_heads=12, vocab=32000),  # GPU cases
}
NODES = {
    "full SFT": ModelPart(kind="full"),
    "FFN (25%,50%]": ModelPart(layer_range=(0.25, 0.5), modules=("gate_proj", "up_proj", "down_proj")),
    "up+down (25%,50%] mask": PAPER_NODE.with_(softmask=True),
    "attention (50%,75%]": ModelPart(layer_range=(0.5, 0.75), modules=("q_proj", "k_proj", "v_proj", "o_proj")),
}
STEPS = 4
LONG_DATA = "long.jsonl"  # in the world's folder, next to train.jsonl


@dataclass(frozen=True)
class Case:
    """One measurement: a model size, a node and the settings that change memory."""

    size: str
    node: str
    batch: int = 4
    seq: int = 128
    bf16: bool = False
    checkpointing: bool = False

    def overrides(self, world: Path, workers: int, device: str) -> list[str]:
        # Batches of one are never padded: every sequence must be max_seq_length long.
        data = [f"data.speciality_train={world / LONG_DATA}"] if self.batch == 1 else []
        return data + [f"train.batch_size={self.batch}", f"data.max_seq_length={self.seq}",
                f"train.bf16='{'on' if self.bf16 else 'off'}'",
                f"train.activation_checkpointing={str(self.checkpointing).lower()}",
                f"scaling.num_workers={workers}", f"scaling.use_gpu={str(device == 'cuda').lower()}"]

    def describe(self) -> str:
        extra = (", bf16" if self.bf16 else "") + (", checkpointing" if self.checkpointing else "")
        return f"{self.size} {self.node}, {self.batch}x{self.seq}{extra}"


CPU_CASES = [Case(size, node) for size in ("S", "M", "L") for node in NODES] + [
    Case("M", "full SFT", checkpointing=True),
    Case("M", "FFN (25%,50%]", checkpointing=True),
    Case("M", "full SFT", bf16=True),
    Case("M", "FFN (25%,50%]", bf16=True),
    Case("L", "full SFT", batch=1, seq=256),
]
# On a GPU a model large enough that cuBLAS and attention workspaces (a few MB) are small against its peak.
CUDA_CASES = [Case("125M", node, batch=8, seq=512, bf16=True) for node in NODES] + [
    Case("125M", "full SFT", batch=8, seq=512, bf16=True, checkpointing=True),
    Case("125M", "FFN (25%,50%]", batch=8, seq=512),
]


def cases(device: str) -> list[Case]:
    """The device's cases, filtered by --only (which reaches the worker processes as MEMORY_PLAN_ONLY)."""
    only = os.environ.get("MEMORY_PLAN_ONLY")
    return [case for case in (CUDA_CASES if device == "cuda" else CPU_CASES) if not only or only in case.describe()]


def build_world(root: Path, size: dict) -> Path:
    """Model, tokenizer and training data under `root`; returns the config path."""
    save_random_model(root / "model", size)
    rng = random.Random(0)
    for name, short in (("train.jsonl", True), (LONG_DATA, False)):
        with open(root / name, "w") as handle:
            for i in range(256):  # train.jsonl: alternately longer and shorter than max_seq_length, so padded
                length = rng.randint(20, 60) if short and i % 2 else 600
                output = "".join(rng.choice(string.ascii_lowercase + " ") for _ in range(length))
                handle.write(json.dumps({"instruction": "echo", "input": "x", "output": output}) + "\n")
    data = {
        "model": {"path": str(root / "model")},
        "data": {"speciality_train": str(root / "train.jsonl"),
                 "speciality_eval": {"name": "echo", "path": str(root / "train.jsonl")},
                 "versatility": [{"name": "same", "path": str(root / "train.jsonl")}],
                 "prompt_template": "compact"},
        "train": {"epochs": 1, "max_steps": STEPS, "warmup_ratio": 0.0},
    }
    path = root / "world.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def measure(config_path: Path, case: Case, strategy: str, rank: int, world_size: int, device: torch.device) -> int:
    """Peak tensor bytes of this process while the case's node trains STEPS steps."""
    config = load_config(config_path, case.overrides(config_path.parent, world_size, device.type))
    part = NODES[case.node]
    tokenizer = load_tokenizer(config.model.path)
    torch.manual_seed(0)
    loaded = load_part(config.model.path, part, config.model.dtype)
    model, arch = loaded.model.to(device), loaded.architecture
    if case.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    softmask = None
    if part.softmask:
        g = torch.Generator().manual_seed(0)
        importance = Importance(head=torch.rand(arch.num_layers, arch.num_heads, generator=g),
                                intermediate=torch.rand(arch.num_layers, arch.intermediate_size, generator=g),
                                output=torch.rand(arch.num_layers, arch.hidden_size, generator=g))
        softmask = SoftMask.for_model(model, arch, importance, config.train.softmask_mode)
    if strategy == "ddp" and world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(model,
                                                          device_ids=[device.index] if device.type == "cuda" else None)
    elif strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(device.type, (world_size,))
        policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if case.bf16
                  else MixedPrecisionPolicy())
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)
    with measure_peak(device, model) as peak:
        for _ in training_points(config, config.train.lr, model, tokenizer, softmask, rank, world_size, device):
            pass  # the evaluation points: nothing to evaluate here
    return peak.bytes


def planned(config_path: Path, case: Case, strategy: str, world_size: int, device: str):
    """The plan's estimate for the same case."""
    config = load_config(config_path, case.overrides(config_path.parent, world_size, device))
    work = Workload.from_config(config)
    return estimate(read_model_shape(config.model.path), NODES[case.node], work,
                    "fsdp" if strategy == "fsdp" else "ddp")


def runnable(case: Case, strategy: str) -> bool:
    # Soft-masking sharded rows is the FSDP worker's job (issue 12, item 2); bf16 autocast is DDP's path.
    return not (strategy == "fsdp" and NODES[case.node].softmask)


def _worker(rank: int, world_size: int, strategy: str, worlds: dict, device_type: str, port: int, out: str) -> None:
    torch.set_num_threads(int(os.environ.get("MEMORY_PLAN_THREADS", "1")))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = torch.device(device_type, rank) if device_type == "cuda" else torch.device("cpu")
    if device_type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo", rank=rank, world_size=world_size)
    results = {}
    for index, case in enumerate(cases(device_type)):
        if runnable(case, strategy):
            results[index] = measure(Path(worlds[case.size]), case, strategy, rank, world_size, device)
    dist.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps(results))


def run_strategy(strategy: str, worlds: dict[str, Path], device: str) -> dict[int, int]:
    """Measured peak per case index: the largest over the ranks."""
    if strategy == "single":
        dev = torch.device(device, 0) if device == "cuda" else torch.device("cpu")
        return {i: measure(worlds[c.size], c, "ddp", 0, 1, dev) for i, c in enumerate(cases(device))
                if runnable(c, strategy)}
    with tempfile.TemporaryDirectory() as out, socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        mp.spawn(_worker, args=(2, strategy, {k: str(v) for k, v in worlds.items()}, device, port, out), nprocs=2)
        ranks = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(2)]
    return {int(i): max(r[i] for r in ranks) for i in ranks[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--strategies", nargs="+", default=["single", "ddp", "fsdp"], choices=("single", "ddp", "fsdp"))
    parser.add_argument("--only", help="run only the cases whose description contains this text")
    args = parser.parse_args()
    os.environ["MEMORY_PLAN_THREADS"] = str(args.threads)
    if args.only:
        os.environ["MEMORY_PLAN_ONLY"] = args.only
    torch.set_num_threads(args.threads)
    if args.device == "cuda" and torch.cuda.device_count() < (2 if set(args.strategies) - {"single"} else 1):
        sys.exit("the distributed cases need 2 CUDA devices: run with --strategies single")
    with tempfile.TemporaryDirectory(prefix="memplan") as tmp:
        sizes = sorted({case.size for case in cases(args.device)}, key=list(SIZES).index)
        worlds = {name: build_world(Path(tmp, name), SIZES[name]) for name in sizes}
        for name, size in ((n, SIZES[n]) for n in sizes):
            params = read_model_shape(str(Path(tmp, name, "model"))).count()
            print(f"{name}: {size}, {params / 1e6:.2f}M parameters")
        print(f"{STEPS} optimizer steps per case, float32 weights, AdamW, torch threads {args.threads}, {args.device}")
        print(f"{'case':<44}{'strategy':>9}{'estimate MB':>13}{'measured MB':>13}{'est/meas':>10}"
              f"  plan's peak terms (MB)")
        ratios = []
        for strategy in args.strategies:
            measured = run_strategy(strategy, worlds, args.device)
            workers = 1 if strategy == "single" else 2
            for index, case in enumerate(cases(args.device)):
                if index not in measured:
                    continue
                plan = planned(worlds[case.size], case, strategy, workers, args.device)
                ratio = plan.peak / measured[index]
                ratios.append(ratio)
                terms = " ".join(f"{k[:3]} {v / 1e6:.2f}" for k, v in plan.terms.items() if v)
                print(f"{case.describe():<44}{strategy:>9}{plan.peak / 1e6:>13.2f}{measured[index] / 1e6:>13.2f}"
                      f"{ratio:>10.3f}  {plan.peak_phase}: {terms}", flush=True)
        print(f"{len(ratios)} cases: estimate/measured from {min(ratios):.3f} to {max(ratios):.3f}")


if __name__ == "__main__":
    main()
