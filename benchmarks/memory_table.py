"""The memory plan for LLaMA-2 7B / 13B / 70B and LLaMA 33B: full SFT and a 25%-band FFN node.

    python benchmarks/memory_table.py [--dtype bfloat16] [--workers 8] [--gpu-memory-gb 80]

Each model is built from its public config values (`llama2_shapes.json`, sources named there) on
the meta device (no weights, no memory), and `cofitune_ray.plan.estimate` gives the peak per GPU
of one training step at micro-batch 1 and 8, sequence 512 and 4096, bf16 compute on GPUs, under
DDP and under FSDP over `--workers` GPUs (one 8-GPU pod by default), without and with activation
checkpointing. The last column is the first of ddp, fsdp, ddp+AC, fsdp+AC that fits the GPU
less the plan's 15% margin, then FSDP+AC over more GPUs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from transformers import LlamaConfig

from cofitune_ray.core.node import ModelPart
from cofitune_ray.plan.memory import GB, MARGIN, ModelShape, Workload, estimate

SHAPES = Path(__file__).resolve().parent / "llama2_shapes.json"
NODES = {"full SFT": ModelPart(kind="full"),
         "FFN (25%,50%]": ModelPart(layer_range=(0.25, 0.5), modules=("gate_proj", "up_proj", "down_proj"))}
BATCHES = [(1, 512), (8, 512), (1, 4096), (8, 4096)]


def verdict(shape: ModelShape, part: ModelPart, work: Workload) -> str:
    """The first setting that fits: ddp, fsdp, then with checkpointing, then FSDP over more GPUs."""
    tries = [("ddp", work, "ddp"), ("fsdp", work, f"fsdp/{work.num_workers}")]
    checkpointed = dataclasses.replace(work, activation_checkpointing=True)
    tries += [("ddp", checkpointed, "ddp+AC"), ("fsdp", checkpointed, f"fsdp/{work.num_workers}+AC")]
    tries += [("fsdp", dataclasses.replace(checkpointed, num_workers=n), f"fsdp/{n}+AC")
              for n in (16, 32, 64) if n > work.num_workers]
    for strategy, settings, label in tries:
        if estimate(shape, part, settings, strategy).peak <= settings.usable_bytes:
            return label
    return "none up to 64 GPUs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"), help="model.dtype")
    parser.add_argument("--workers", type=int, default=8, help="FSDP shards (GPUs per node's training)")
    parser.add_argument("--gpu-memory-gb", type=float, default=80.0)
    args = parser.parse_args()
    models = json.loads(SHAPES.read_text())["models"]
    print(f"model.dtype {args.dtype}, bf16 compute, {args.gpu_memory_gb:g} GB GPUs ({MARGIN:.0%} kept free), "
          f"FSDP over {args.workers} GPUs; GB per GPU at the step's peak; AC = activation checkpointing")
    header = f"{'model':<12} {'node':<14} {'batch x seq':>11} {'trained':>8} {'DDP':>7} {'DDP+AC':>7} " \
             f"{'FSDP':>7} {'FSDP+AC':>8}  plan"
    print(header)
    print("-" * len(header))
    for name, entry in models.items():
        shape = ModelShape.from_model_config(LlamaConfig(**entry["config"]))
        for node, part in NODES.items():
            for batch, seq in BATCHES:
                work = Workload(batch_size=batch, seq_len=seq, weight_dtype=args.dtype, bf16=True,
                                num_workers=args.workers, gpus_per_worker=1.0, activation_checkpointing=False,
                                softmask_mode="update", on_gpu=True, gpu_memory_gb=args.gpu_memory_gb)
                checkpointed = dataclasses.replace(work, activation_checkpointing=True)
                peaks = [estimate(shape, part, w, s).peak / GB
                         for s, w in (("ddp", work), ("ddp", checkpointed), ("fsdp", work), ("fsdp", checkpointed))]
                trained = estimate(shape, part, work, "ddp").trained_params
                print(f"{name:<12} {node:<14} {f'{batch} x {seq}':>11} {trained / 1e9:>7.2f}B "
                      f"{peaks[0]:>7.1f} {peaks[1]:>7.1f} {peaks[2]:>7.1f} {peaks[3]:>8.1f}  "
                      f"{verdict(shape, part, work)}")


if __name__ == "__main__":
    main()
