"""How a node's model is spread over the Ray Train workers: DDP (a full copy each) or FSDP (sharded).

`ddp`: every worker holds the whole model; gradients are all-reduced (Ray Train's `prepare_model`).
`fsdp`: PyTorch's per-parameter FSDP (`fully_shard`, FSDP2): one unit per decoder layer plus the
root (embeddings, final norm, lm_head). Every parameter, frozen or trained, becomes a DTensor
sharded on dim 0, i.e. by rows, in `torch.chunk` order: worker r holds rows
[r * ceil(R / W), (r + 1) * ceil(R / W)) clipped to R, so the last workers may hold fewer or none.
A forward all-gathers one layer at a time; the optimizer only ever sees the local rows of the
trained parameters, so its state is sharded too.

Row sharding is what keeps soft-masking exact: a row's factor depends only on the row's global
index (`local_rows` gives the offset), never on how the shard is laid out in memory.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Shard

STRATEGIES = ("ddp", "fsdp")


def distribute(model: torch.nn.Module, strategy: str, device: torch.device, bf16: bool = False,
               activation_checkpointing: bool = False) -> torch.nn.Module:
    """The model ready to train on this worker under `strategy` (call it after freezing).

    bf16 under fsdp is FSDP's mixed precision (bf16 compute and all-gathers, fp32 gradient
    reduction, fp32 sharded parameters for the optimizer); under ddp the training loop uses autocast.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"scaling.strategy {strategy!r} must be resolved to one of {', '.join(STRATEGIES)} first")
    if activation_checkpointing:
        # Non-reentrant checkpointing recomputes each decoder layer in backward; FSDP re-gathers it.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if strategy == "ddp":
        import ray.train.torch

        if not any(p.requires_grad for p in model.parameters()):
            return model.to(device)  # nothing to synchronise (the base node, the importance job)
        return ray.train.torch.prepare_model(model)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if device.type == "cuda":
        torch.cuda.set_device(device)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16
              else MixedPrecisionPolicy())
    # fully_shard moves each unit to the mesh's device as it shards it: a GPU never holds more
    # than one whole unit besides its shards. (The host holds the whole model once per worker.)
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def is_fsdp(model: torch.nn.Module) -> bool:
    """True when `model` was sharded by `distribute(..., "fsdp")`."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model under a DDP wrapper (an FSDP model is its own module: names unchanged)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def local_rows(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """This worker's rows of a parameter or gradient and the global index of the first one.

    A plain tensor is all rows (offset 0). A DTensor sharded on dim 0 gives its local shard,
    which shares storage with the parameter (in-place changes update it), and the shard's offset
    in `torch.chunk` order.
    """
    if not isinstance(tensor, DTensor):
        return tensor, 0
    if tuple(tensor.placements) != (Shard(0),):
        raise ValueError(f"expected a tensor sharded by rows (Shard(0)), got placements {tensor.placements}")
    rows, workers = tensor.shape[0], tensor.device_mesh.size()
    per_worker = math.ceil(rows / workers)
    start = min(tensor.device_mesh.get_local_rank() * per_worker, rows)
    with torch.no_grad():
        local = tensor.to_local()
    if local.shape[0] != min(per_worker, rows - start):
        raise ValueError(f"local shard of {rows} rows has {local.shape[0]}, expected {min(per_worker, rows - start)}")
    return local, start


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor; for a DTensor this all-gathers, so every worker must call it."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def global_sums(tensors: list[torch.Tensor]) -> list[float]:
    """float64 sums of whole tensors; sharded ones are summed locally and all-reduced (a collective)."""
    local = torch.tensor([local_rows(t.detach())[0].double().sum().item() for t in tensors], dtype=torch.float64)
    sharded = torch.tensor([isinstance(t, DTensor) for t in tensors])
    if sharded.any():
        reduced = (local * sharded).to(tensors[0].device)
        dist.all_reduce(reduced)
        local = torch.where(sharded, reduced.cpu(), local)
    return local.tolist()
