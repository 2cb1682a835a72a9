"""Measured peak memory of training: what the memory plan (`cofitune_ray/plan/memory.py`) is checked against.

    with measure_peak(device, model) as peak:
        for _ in training_points(...): pass
    peak.bytes

On CUDA it is `torch.cuda.max_memory_allocated`: the caching allocator's count of the bytes held
by live tensors (each block rounded up to 512 bytes), from the start of the block.

On CPU the allocator keeps no statistics, so `TensorBytes` counts the same thing: a
TorchDispatchMode that sees every tensor an aten op returns (forward, backward, optimizer, DDP's
buckets, FSDP's all-gathers), follows each storage until it is freed (a weak reference to the
storage) or resized (FSDP frees and refills its gathered parameters with `resize_`), and keeps the
peak of the live bytes. Tensors that exist before the block (the model's parameters and buffers)
are counted from the start. It does not see memory a kernel allocates for itself and frees
before returning. torch's own `MemTracker` (torch.distributed._tools) works the same way but
installs a gradient hook on every parameter, which fails on frozen ones, and refuses a second
forward pass, so it cannot follow a node's training.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Iterator

import torch
from torch.distributed.tensor import DTensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


@dataclass
class PeakMemory:
    """The peak of live tensor bytes on one device, filled in when the measured block ends."""

    bytes: int = 0


class TensorBytes(TorchDispatchMode):
    """Live bytes of every tensor storage created under this mode (and of those given), and their peak."""

    def __init__(self, existing: list[torch.Tensor]):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}  # id(storage) -> bytes counted for it
        self._refs: dict[int, weakref.ref] = {}  # the weak references whose callbacks uncount a freed storage
        self._resize = torch.UntypedStorage.resize_
        for tensor in existing:
            self._track(tensor)

    def __enter__(self):
        tracker = self

        def resize_(storage: torch.UntypedStorage, size: int):
            result = tracker._resize(storage, size)
            key = id(storage)
            if key in tracker._sizes:
                tracker._count(storage.nbytes() - tracker._sizes[key])
                tracker._sizes[key] = storage.nbytes()
            return result

        torch.UntypedStorage.resize_ = resize_
        return super().__enter__()

    def __exit__(self, *args):
        torch.UntypedStorage.resize_ = self._resize
        return super().__exit__(*args)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if any(issubclass(t, DTensor) for t in types):
            return NotImplemented  # DTensor runs its local ops, which come back here
        result = func(*args, **(kwargs or {}))
        for item in tree_flatten(result)[0]:
            if isinstance(item, torch.Tensor):
                self._track(item)
        return result

    def _track(self, tensor: torch.Tensor) -> None:
        if isinstance(tensor, DTensor):
            tensor = tensor.to_local()
        if tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self._sizes:
            return
        self._sizes[key] = storage.nbytes()
        self._refs[key] = weakref.ref(storage, partial(self._freed, key))
        self._count(storage.nbytes())

    def _freed(self, key: int, _ref: weakref.ref) -> None:
        self._count(-self._sizes.pop(key))
        self._refs.pop(key, None)

    def _count(self, change: int) -> None:
        self.live += change
        self.peak = max(self.peak, self.live)


@contextmanager
def measure_peak(device: torch.device, model: torch.nn.Module) -> Iterator[PeakMemory]:
    """Measure the peak of tensor memory on `device` over the block; `model` must already be on it."""
    result = PeakMemory()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        torch.cuda.synchronize(device)
        result.bytes = torch.cuda.max_memory_allocated(device)
        return
    tracker = TensorBytes([*model.parameters(), *model.buffers()])
    with tracker:
        yield result
    result.bytes = tracker.peak
