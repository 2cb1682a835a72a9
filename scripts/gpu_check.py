"""The prepared GPU check: one node on CUDA (bf16, nccl) under DDP and FSDP, the importance job,
Spectrum's scores, an lm-eval task, the step-time ratios and the memory plan against
torch.cuda.max_memory_allocated.

    bash scripts/gpu_check.sh            # on a machine with at least one NVIDIA GPU, < 8 minutes
    python scripts/gpu_check.py --cpu    # the same steps on a small model on CPU, 2 gloo workers (checks the script)

Builds a LLaMA-architecture model of about 125M parameters from a config (no download) with the
toy world's tokenizer and data, then runs, on a fresh local Ray cluster:
  1. the importance job (Ray Train, one worker per GPU),
  2. Spectrum's SNR scores as a Ray task on a GPU, compared with the same scores on the CPU,
  3. one soft-masked node, FFN up+down in (25%, 50%], as a Ray Train DDP run with bf16 autocast,
  4. the same node with `scaling.strategy: fsdp` (FSDP2, bf16 mixed precision) on the same workers,
     compared with the DDP run: scores, peak memory per worker and the trained weights (skipped, with
     the reason, on a machine with fewer than 2 GPUs: FSDP shards over 2 or more),
  5. an lm-evaluation-harness generation task on the model on the GPU and on the CPU,
  6. benchmarks/node_step_time.py on the same model size in bf16,
  7. benchmarks/memory_plan.py --device cuda: the plan's estimate vs the measured peak of nodes of
     the same model size (DDP and FSDP cases with 2 GPUs or more; skipped on CPU),
and prints every figure. The output belongs in docs/gpu.md. Exits with an error when FSDP's trained
weights differ from DDP's by more than the precision allows.
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
from transformers import LlamaForCausalLM

from cofitune_ray.config import LmEvalTaskConfig, load_config
from cofitune_ray.core.node import PAPER_NODE, ModelPart
from cofitune_ray.toyworld.corpus import write_toy_data
from cofitune_ray.toyworld.pretrain import save_random_model
from cofitune_ray.toyworld.worlds import DEFAULT_WORLD, get_world
from cofitune_ray.training.checkpoint import read_delta
from cofitune_ray.training.harness import HarnessTask
from cofitune_ray.training.model import load_model
from cofitune_ray.training.runner import run_node
from cofitune_ray.training.softmask.job import ensure_importance
from cofitune_ray.training.spectrum import ensure_scores, module_scores, select

ROOT = Path(__file__).resolve().parent.parent
SIZES = {"gpu": dict(layers=12, hidden=768, intermediate=2048, heads=12, vocab=32000),
         "cpu": dict(layers=8, hidden=64, intermediate=128, heads=4, vocab=512)}


def build_world(root: Path, size: dict) -> Path:
    """Model + tokenizer in root/model, toy data in root/data; returns the config path."""
    model = save_random_model(root / "model", {**size, "kv_heads": size.get("kv_heads", size["heads"])})
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, {size}", flush=True)
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


def check_lm_eval(config, root: Path) -> None:
    """A local lm-eval generation task over the first versatility file, on the model on each device."""
    task_dir = root / "lm_eval_tasks"
    task_dir.mkdir(exist_ok=True)
    (task_dir / "check_gen.yaml").write_text(yaml.safe_dump({
        "task": "check_gen", "dataset_path": "json", "test_split": "test", "output_type": "generate_until",
        "dataset_kwargs": {"data_files": {"test": config.data.versatility[0].path}},
        "doc_to_text": "{{instruction}}:{{input}}=", "doc_to_target": "{{output}}", "target_delimiter": "",
        "generation_kwargs": {"until": ["\n"], "max_gen_toks": 12, "do_sample": False},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}]}))
    for device in (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]:
        task_config = LmEvalTaskConfig(task="check_gen", include_path=str(task_dir), limit=64)
        task = HarnessTask.from_config("check", task_config, config.model.path, None, "lm_eval")
        started = time.time()
        scores = task.score(load_model(config.model.path).to(device), batch_size=config.eval.batch_size)
        print(f"lm-eval generation task on {device}: exact match {scores['score']:.3f} over "
              f"{scores['documents']:.0f} documents in {time.time() - started:.1f} s", flush=True)


def train_node_and_print(config, node: ModelPart, strategy: str, root: Path, importance):
    """Train `node` under the config's scaling.strategy (`strategy`) and print its evaluation points."""
    result = run_node(config, node, f"gpu-check-node-{strategy}", root / "runs" / "nodes", lr=config.train.lr,
                      importance=importance)
    backend = "nccl" if config.scaling.use_gpu else "gloo"
    print(f"{strategy}: node {node.key()} on {config.scaling.num_workers} worker(s), backend {backend}, "
          f"bf16 {config.train.bf16}: {result.train_steps} steps in {result.wall_time_s:.1f} s (including Ray Train "
          f"start-up), {result.trained_params:,} trained parameters", flush=True)
    for point in result.history:
        memory = f" peak_memory {point['peak_memory_gb']:.2f} GB" if point["peak_memory_gb"] is not None else ""
        print(f"  step {point['step']:>3}: Spec {point['spec']:.3f} Vers {point['vers']:.3f} Uni {point['uni']:.3f} "
              f"train_loss {point['train_loss']:.4f} rank_checksum_spread {point['rank_checksum_spread']}{memory}",
              flush=True)
    return result


def compare(base_path: str, ddp, fsdp, bf16: bool) -> None:
    """FSDP's trained weights against DDP's at the last point: the difference relative to DDP's update."""
    base = dict(LlamaForCausalLM.from_pretrained(base_path).named_parameters())
    ddp_delta, fsdp_delta = (read_delta(r.history[-1]["checkpoint"]) for r in (ddp, fsdp))
    difference = sum((fsdp_delta[n] - ddp_delta[n]).double().norm() ** 2 for n in ddp_delta) ** 0.5
    update = sum((ddp_delta[n] - base[n].detach()).double().norm() ** 2 for n in ddp_delta) ** 0.5
    ratio = float(difference / update)
    # fp32 on CPU: the same arithmetic up to summation order; bf16 on GPU: autocast (DDP) against
    # bf16 weights in compute (FSDP's mixed precision) drift apart by a few percent of the update.
    limit = 0.2 if bf16 else 1e-4
    verdict = "ok" if ratio <= limit else "MISMATCH"
    print(f"fsdp vs ddp: trained weights differ by {ratio:.2e} of the update's norm (limit {limit:g}): {verdict}",
          flush=True)
    if verdict != "ok":
        sys.exit("FSDP trained different weights than DDP")


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
    workers = 2 if args.cpu else gpus
    overrides = ([f"scaling.use_gpu={str(not args.cpu).lower()}", f"scaling.num_workers={workers}"]
                 + (["scaling.cpus_per_worker=0.5"] if args.cpu else ["scaling.cpus_per_worker=2"]))
    config = load_config(build_world(root, size), overrides)
    ray.init(include_dashboard=False)
    started = time.time()
    importance, _ = ensure_importance(config, root / "runs")
    print(f"importance job: {time.time() - started:.1f} s -> {importance.directory}", flush=True)
    started = time.time()
    scores, _ = ensure_scores(config, root / "runs")
    on_task = time.time() - started
    started = time.time()
    on_cpu = module_scores(config.model.path, "cpu")
    largest = max(abs(a - b) / max(abs(b), 1e-12) for m in scores for a, b in zip(scores[m], on_cpu[m]))
    print(f"Spectrum scores: Ray task ({'cuda' if config.scaling.use_gpu else 'cpu'}) {on_task:.1f} s, CPU "
          f"{time.time() - started:.1f} s, largest relative difference {largest:.1e}, top-25% selections equal: "
          f"{select(scores, 25) == select(on_cpu, 25)}", flush=True)
    node = PAPER_NODE.with_(softmask=True)
    ddp = train_node_and_print(config, node, "ddp", root, importance)
    if workers >= 2:
        fsdp_config = load_config(root / "gpu_check.yaml", overrides + ["scaling.strategy=fsdp"])
        compare(config.model.path, ddp, train_node_and_print(fsdp_config, node, "fsdp", root, importance),
                bf16=not args.cpu)
    else:
        print(f"FSDP step skipped: FSDP shards a node over 2 or more GPUs, this machine has {gpus}", flush=True)
    ray.shutdown()
    check_lm_eval(config, root)
    bench = [sys.executable, str(ROOT / "benchmarks" / "node_step_time.py"), "--layers", str(size["layers"]),
             "--hidden", str(size["hidden"]), "--intermediate", str(size["intermediate"]),
             "--heads", str(size["heads"]),
             "--vocab", str(size["vocab"])]
    if not args.cpu:
        bench += ["--device", "cuda", "--dtype", "bfloat16", "--seq", "512", "--batch", "8", "--steps", "20"]
    print("$ " + " ".join(bench[1:]), flush=True)
    subprocess.run(bench, check=True)
    memory_plan_check(gpus)


def memory_plan_check(gpus: int) -> None:
    """The memory plan's estimate vs torch.cuda.max_memory_allocated for nodes' training steps."""
    if gpus == 0:
        print("memory plan vs torch.cuda.max_memory_allocated: skipped: no CUDA device; on CPU the same "
              "comparison is benchmarks/memory_plan.py (its output is in docs/benchmarks.md)", flush=True)
        return
    strategies = ["single"] + (["ddp", "fsdp"] if gpus >= 2 else [])
    if gpus < 2:
        print("memory plan: the DDP and FSDP cases need 2 GPUs: only the single-process cases run", flush=True)
    command = [sys.executable, str(ROOT / "benchmarks" / "memory_plan.py"), "--device", "cuda",
               "--strategies", *strategies]
    print("$ " + " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
