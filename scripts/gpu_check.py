"""The prepared GPU check: one node on CUDA (bf16, nccl), the importance job, and the step-time ratios.

    bash scripts/gpu_check.sh            # on a machine with at least one NVIDIA GPU, < 8 minutes
    python scripts/gpu_check.py --cpu    # the same steps on a small model on CPU (checks the script)

Builds a LLaMA-architecture model of about 125M parameters from a config (no download) with the
toy world's tokenizer and data, then runs, on a fresh local Ray cluster:
  1. the importance job (Ray Train, one worker per GPU),
  2. one soft-masked node, FFN up+down in (25%, 50%], as a Ray Train DDP run with bf16 autocast,
  3. benchmarks/node_step_time.py on the same model size in bf16,
and prints every figure. The output belongs in docs/gpu.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch
import yaml
from transformers import LlamaConfig, LlamaForCausalLM

from cofitune_ray.config import load_config
from cofitune_ray.training.importance_job import ensure_importance
from cofitune_ray.core.node import ModelPart
from cofitune_ray.training.runner import run_node
from cofitune_ray.toyworld.data import write_toy_data
from cofitune_ray.toyworld.tokenizer import save_tokenizer
from cofitune_ray.toyworld.worlds import DEFAULT_WORLD, get_world

ROOT = Path(__file__).resolve().parent.parent
SIZES = {"gpu": dict(layers=12, hidden=768, intermediate=2048, heads=12, vocab=32000),
         "cpu": dict(layers=8, hidden=64, intermediate=128, heads=4, vocab=512)}


def build_world(root: Path, size: dict) -> Path:
    """Model + tokenizer in root/model, toy data in root/data; returns the config path."""
    tokenizer = save_tokenizer(root / "model")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=max(size["vocab"], len(tokenizer)), hidden_size=size["hidden"],
                         intermediate_size=size["intermediate"], num_hidden_layers=size["layers"],
                         num_attention_heads=size["heads"], num_key_value_heads=size["heads"],
                         max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    model = LlamaForCausalLM(config)
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, {size}", flush=True)
    model.save_pretrained(root / "model")
    world = get_world(DEFAULT_WORLD)
    files = write_toy_data(root / "data", 0, world)
    spec, general = world.speciality, world.general_tasks[:3]
    data = {
        "model": {"path": str(root / "model")},
        "data": {
            "speciality_train": str(files[spec]["train"]),
            "speciality_eval": {"name": spec, "path": str(files[spec]["eval"])},
            "versatility": [{"name": t, "path": str(files[t]["eval"])} for t in general],
            "prompt_template": "compact",
            "max_seq_length": 64,
            "max_eval_examples": 64,
        },
        "train": {"lr": 1e-4, "epochs": 1, "max_steps": 40, "batch_size": 32},
        "eval": {"every_n_steps": 20, "batch_size": 64, "max_new_tokens": 12},
        "importance": {"data": [str(files[t]["importance"]) for t in general], "max_examples": 128},
        "storage_path": str(root / "runs"),
    }
    path = root / "gpu_check.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="small model on CPU (to check the script itself)")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    gpus = 0 if args.cpu else torch.cuda.device_count()
    if not args.cpu and gpus == 0:
        sys.exit("no CUDA device visible: run with --cpu to check the script on CPU")
    root = Path(args.workdir or tempfile.mkdtemp(prefix="gpucheck"))
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, GPUs {gpus}: "
          f"{[torch.cuda.get_device_name(i) for i in range(gpus)]}", flush=True)
    size = SIZES["cpu" if args.cpu else "gpu"]
    overrides = ([f"scaling.use_gpu={str(not args.cpu).lower()}", f"scaling.num_workers={max(gpus, 1)}"]
                 + (["scaling.cpus_per_worker=0.5"] if args.cpu else ["scaling.cpus_per_worker=2"]))
    config = load_config(build_world(root, size), overrides)
    ray.init(include_dashboard=False)
    started = time.time()
    importance, _ = ensure_importance(config, root / "runs")
    print(f"importance job: {time.time() - started:.1f} s -> {importance.directory}", flush=True)
    node = ModelPart(layer_range=(0.25, 0.5), modules=("up_proj", "down_proj"), softmask=True)
    result = run_node(config, node, "gpu-check-node", root / "runs" / "nodes", importance=importance)
    backend = "nccl" if config.scaling.use_gpu else "gloo"
    print(f"node {node.key()} on {config.scaling.num_workers} worker(s), backend {backend}, bf16 {config.train.bf16}: "
          f"{result.train_steps} steps in {result.wall_time_s:.1f} s (including Ray Train start-up), "
          f"{result.trained_params:,} trained parameters", flush=True)
    for point in result.history:
        print(f"  step {point['step']:>3}: Spec {point['spec']:.3f} Vers {point['vers']:.3f} Uni {point['uni']:.3f} "
              f"train_loss {point['train_loss']:.3f} rank_checksum_spread {point['rank_checksum_spread']}", flush=True)
    ray.shutdown()
    bench = [sys.executable, str(ROOT / "benchmarks" / "node_step_time.py"), "--layers", str(size["layers"]),
             "--hidden", str(size["hidden"]), "--intermediate", str(size["intermediate"]), "--heads", str(size["heads"]),
             "--vocab", str(size["vocab"])]
    if not args.cpu:
        bench += ["--device", "cuda", "--dtype", "bfloat16", "--seq", "512", "--batch", "8", "--steps", "20"]
    print("$ " + " ".join(bench[1:]), flush=True)
    subprocess.run(bench, check=True)


if __name__ == "__main__":
    main()
