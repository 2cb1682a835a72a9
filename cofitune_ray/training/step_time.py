"""The cost plan's calibration step: one full-SFT optimizer step of the model's shape, timed on this machine.

The model is built from its config.json with random weights (no weights are read) and, to keep the
calibration short and within memory, at most `layers` decoder layers: every layer of a model has
the same width, so its throughput per operation is the one the whole model reaches. It trains the
way `training/loop.py` does (forward, backward, gradient clipping, AdamW; bf16 autocast on a GPU)
and the median of a few steps after a warm-up is the measurement. On a GPU a step's time is wall
time (synchronised); on the CPU it is this process's CPU time with one torch thread (a CPU worker is
modelled as one thread), so that other jobs on a shared machine do not count.
"""

from __future__ import annotations

import statistics
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM


def measure_full_step(model_path: str, layers: int, batch_size: int, seq_len: int, device: str,
                      dtype: str = "float32", steps: int = 5, warmup: int = 2) -> tuple[float, dict]:
    """Seconds of one full-SFT step of `model_path`'s shape cut to `layers` layers, with weights in `dtype`,
    and the config used."""
    config = AutoConfig.from_pretrained(model_path)
    config.num_hidden_layers = min(layers, config.num_hidden_layers)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(device, dtype=getattr(torch, dtype))
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    batch = torch.randint(0, config.vocab_size, (batch_size, seq_len), device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else torch.autocast(
        "cpu", enabled=False)
    cuda = device.startswith("cuda")
    clock = time.perf_counter if cuda else time.process_time
    threads = torch.get_num_threads()
    if not cuda:
        torch.set_num_threads(1)
    times = []
    for i in range(warmup + steps):
        _sync(device)
        start = clock()
        with autocast:
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        if i >= warmup:
            times.append(clock() - start)
    torch.set_num_threads(threads)
    return statistics.median(times), config.to_dict()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
