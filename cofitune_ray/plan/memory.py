"""The memory plan: per-GPU memory of each node's training under DDP and FSDP, and the strategy that fits.

    python -m cofitune_ray.plan --config FILE [--search-space FILE] [key=value ...]

The model is built from its config on the `meta` device (shapes only: no weights are read, no
memory is used), so a 70B plan takes a second on a laptop. For every node the search space can
reach (full SFT too, when it is a reference) it estimates the peak of tensor memory on one GPU
during a training step, term by term:

  weights      stored weights in `model.dtype`: all of them under DDP, this GPU's 1/N shard under
               FSDP. During forward and backward also the working copies: under DDP with bf16
               autocast over float32 weights, the bf16 copies of the weights autograd keeps for
               backward; under FSDP, the gathered root module (embeddings, final norm, lm_head:
               FSDP keeps the root unsharded from forward to backward) and the gathered decoder
               layers (2 on GPU, where the next layer's all-gather is prefetched; 1 on CPU).
  gradients    one per trained parameter, in its dtype (FSDP: this GPU's shard, plus in a layer's
               backward its unsharded gradients and reduce-scatter buffer). DDP over 2+ workers
               also keeps a flat bucket copy of them for the all-reduce, all the time.
  optimizer    AdamW's two moments per trained parameter, in the parameter's dtype (torch keeps
               them so: a float32 model has float32 moments and its weights are the master copy;
               a bfloat16 model has bfloat16 moments and no master copy). FSDP: this GPU's shard.
  activations  what autograd saves for backward, from the lowest trained layer up (layers below
               it save nothing), per token of the micro-batch: `_decoder_layer` lists each saved
               tensor. With activation checkpointing: each layer's input, plus one layer
               recomputed in backward.
  transient    the short-lived set of the moment: at the start of backward the loss's two float32
               vocabulary-sized gradients per token; in a layer's backward its MLP's gradient
               workspace; in the optimizer step AdamW's temporary (one trained-size buffer with
               the GPU's foreach kernels, two of the largest trained tensor on CPU) and, in
               soft-mask `update` mode, the copy of the masked parameters taken before the step.

The peak is the fullest moment of the step: in the backward pass (its start, with every saved
tensor and no parameter gradient yet, since `zero_grad` frees them; after lm_head; then each layer
top-down, where the gradients above it exist and the saved tensors below it remain) or in the
optimizer step (weights, gradients, optimizer, step temporaries; no activations). Batches are
padded to their longest sequence; the plan assumes `data.max_seq_length` tokens and, for batches of
2 or more, padding: attention then saves a float mask per layer and the repeated key/value heads
(transformers uses grouped-query attention inside SDPA only without a mask).

`auto` picks DDP when every node fits `scaling.gpu_memory_gb` less a 15% margin (the CUDA context,
NCCL buffers and allocator fragmentation are not tensor bytes), else FSDP when every node fits that
way, else raises PlanError naming the settings that would fit. `docs/memory.md` has the check
against measured peaks and the table for LLaMA-2 sizes.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cofitune_ray.config import Config, ConfigError, load_config
from cofitune_ray.core.node import ALL_MODULES, ModelPart
from cofitune_ray.core.space import SearchSpace, SearchSpaceError, load_search_space
from cofitune_ray.training.model import Architecture, ModelError, read_model_config, trainable_parameter_names

if TYPE_CHECKING:  # `--help` and config errors answer without them (issue: a CLI that answers at once)
    from transformers import PretrainedConfig

#: Fraction of each GPU's memory the plan keeps free for what is not tensor bytes.
MARGIN = 0.15
GB = 1e9
STRATEGIES = ("ddp", "fsdp")
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_SOFTMASKED = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj")  # softmask/mask.py row_factors


class PlanError(ValueError):
    """No strategy fits the GPU memory: the message names the settings to change."""


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs from a model: its architecture and every parameter's element count."""

    architecture: Architecture
    parameters: dict[str, int]  # name -> number of elements, in model order (a tied lm_head is not listed)
    vocab_size: int

    @classmethod
    def from_model_config(cls, config: PretrainedConfig) -> "ModelShape":
        """Build the model on the meta device: shapes only, no weights, no memory."""
        import torch
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        return cls(Architecture.from_config(config), {n: p.numel() for n, p in model.named_parameters()},
                   config.vocab_size)

    def count(self, prefix: str = "") -> int:
        """Elements of the parameters whose names start with `prefix` (all of them by default)."""
        return sum(n for name, n in self.parameters.items() if name.startswith(prefix))


@functools.lru_cache(maxsize=8)
def read_model_shape(model_path: str) -> ModelShape:
    """The shape of the model in a local directory, from its config.json only."""
    return ModelShape.from_model_config(read_model_config(model_path))


@dataclass(frozen=True)
class Workload:
    """The training settings that size memory: a Config's, or any others for a table."""

    batch_size: int  # sequences per worker micro-batch
    seq_len: int  # tokens per sequence (data.max_seq_length: batches are padded to their longest)
    weight_dtype: str  # model.dtype: weights, gradients and AdamW moments
    bf16: bool  # bf16 compute: autocast under DDP, bf16 gathered weights under FSDP
    num_workers: int  # Ray Train workers of a node: the DDP replicas, the FSDP shards
    gpus_per_worker: float  # below 1, several workers share one GPU's memory
    activation_checkpointing: bool
    softmask_mode: str  # update | grad (update keeps a copy of the masked parameters over the step)
    on_gpu: bool  # GPU kernels: foreach AdamW, FSDP prefetch of the next layer
    gpu_memory_gb: float

    @classmethod
    def from_config(cls, config: Config) -> "Workload":
        t, s = config.train, config.scaling
        return cls(batch_size=t.batch_size, seq_len=config.data.max_seq_length, weight_dtype=config.model.dtype,
                   bf16=t.bf16 == "on" or (t.bf16 == "auto" and s.use_gpu), num_workers=s.num_workers,
                   gpus_per_worker=s.gpus_per_worker, activation_checkpointing=t.activation_checkpointing,
                   softmask_mode=t.softmask_mode, on_gpu=s.use_gpu, gpu_memory_gb=s.gpu_memory_gb)

    @property
    def usable_bytes(self) -> float:
        """The GPU memory the plan may fill: gpu_memory_gb less the margin."""
        return self.gpu_memory_gb * GB * (1 - MARGIN)

    @property
    def workers_per_gpu(self) -> int:
        return max(1, math.floor(1 / self.gpus_per_worker + 1e-9)) if self.gpus_per_worker < 1 else 1

    def describe(self) -> str:
        compute = "bf16 compute" if self.bf16 else f"{self.weight_dtype} compute"
        share = f", {self.workers_per_gpu} workers per GPU" if self.workers_per_gpu > 1 else ""
        return (f"micro-batch {self.batch_size} x {self.seq_len} tokens, {self.weight_dtype} weights, {compute}, "
                f"{self.num_workers} worker(s){share}, "
                f"activation checkpointing {'on' if self.activation_checkpointing else 'off'}")


TERMS = ("weights", "gradients", "optimizer", "activations", "transient")


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak tensor memory on one GPU while one node trains under one strategy, with its terms in bytes."""

    part: ModelPart
    strategy: str
    trained_params: int
    backward: dict[str, float]  # the terms at the backward pass's fullest moment
    step: dict[str, float]  # the terms in the optimizer step

    @property
    def peak_phase(self) -> str:
        return "backward" if sum(self.backward.values()) >= sum(self.step.values()) else "step"

    @property
    def terms(self) -> dict[str, float]:
        """The terms of the peak phase."""
        return self.backward if self.peak_phase == "backward" else self.step

    @property
    def peak(self) -> float:
        return sum(self.terms.values())

    def breakdown(self) -> str:
        parts = " + ".join(f"{name} {_size(self.terms[name])}" for name in TERMS if self.terms[name])
        return f"{parts} = {_size(self.peak)} (peak in the {self.peak_phase})"


def _plannable(part: ModelPart, num_layers: int) -> ModelPart:
    """`part`, or for an snr node whose layers are not chosen yet (they come from the base weights once Ray
    is up) a bound: the same number of layers per module type, the lowest ones, so that autograd keeps
    activations from layer 0 up. Its trained parameters are exact, its activations the most it can need."""
    if part.kind != "snr" or part.selection is not None:
        return part
    lowest = tuple(range(part.snr_layer_count(num_layers)))
    return part.with_(selection=tuple((module, lowest) for module in ALL_MODULES))


def estimate(shape: ModelShape, part: ModelPart, work: Workload, strategy: str) -> MemoryEstimate:
    """The memory estimate of one GPU while `part` trains under `strategy` ("ddp" or "fsdp")."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    if not part.trains:
        raise ValueError("the base node trains nothing: it has no training memory")
    arch = shape.architecture
    names = trainable_parameter_names(arch, part, list(shape.parameters))
    trained = sum(shape.parameters[n] for n in names)
    masked = sum(shape.parameters[n] for n in names if n.split(".")[-2] in _SOFTMASKED) if part.softmask else 0
    wb = _BYTES[work.weight_dtype]
    fsdp = strategy == "fsdp"
    shards = work.num_workers if fsdp else 1
    tokens, vocab = work.batch_size * work.seq_len, shape.vocab_size

    stored = shape.count() * wb / shards
    layer_sizes = [shape.count(f"model.layers.{i}.") for i in range(arch.num_layers)]
    layer_trained = [sum(shape.parameters[n] for n in names if n.startswith(f"model.layers.{i}."))
                     for i in range(arch.num_layers)]
    layer_grads = [n * wb / shards for n in layer_trained]
    if fsdp:
        # The root stays gathered from forward to backward; decoder layers are gathered one at a time,
        # two where the next all-gather is prefetched (on GPU, and in backward on any device). A layer's
        # backward ends with the reduce-scatter of its trained gradients: unsharded in the gathered
        # dtype, reduced in float32 under bf16.
        gathered_bytes = 2 if work.bf16 else wb
        root = shape.count() - sum(layer_sizes)
        start_gathered = (root + (2 if work.on_gpu else 1) * max(layer_sizes)) * gathered_bytes
        layer_gathered = (root + 2 * max(layer_sizes)) * gathered_bytes
        reduce_scatter = [n * (gathered_bytes + (4 if work.bf16 else wb)) for n in layer_trained]
    else:
        start_gathered = layer_gathered = 0.0
        reduce_scatter = [0.0] * arch.num_layers
    buckets = trained * wb if not fsdp and work.num_workers > 1 else 0.0
    optimizer = 2 * trained * wb / shards

    graph = _graph(shape, part, work, fsdp)
    # Full SFT's gradients of lm_head and the final norm come first in backward, the embeddings' last
    # (unless lm_head is the embeddings, tied).
    tail = shape.count("lm_head.") + shape.count("model.norm.") if "lm_head.weight" in shape.parameters \
        else shape.count() - sum(layer_sizes)
    tail_grads = tail * wb / shards if part.kind == "full" else 0.0
    ac = work.activation_checkpointing
    kept = [layer.checkpoint if ac else layer.saved for layer in graph.layers]
    if ac and work.batch_size > 1:
        kept[0] += work.seq_len  # the layers' shared boolean padding mask, kept with their inputs
    trained_copies = sum(layer.trained_copies for layer in graph.layers)
    frozen_copies = [layer.frozen_copies for layer in graph.layers]

    def moment(working: float, activations: float, gradients: float, transient: float) -> dict[str, float]:
        return {"weights": stored + working, "gradients": buckets + gradients,
                "optimizer": optimizer, "activations": activations, "transient": transient}

    # The backward pass, moment by moment: its start (every saved tensor, the loss's two float32
    # vocabulary-sized gradients per token), after lm_head (its gradient), then each layer top-down
    # (the layers below still hold what they saved, the gradients above exist; with checkpointing
    # the layer being recomputed holds its full set).
    all_frozen = 0.0 if ac else sum(frozen_copies)
    # A layer's backward also holds the gradient flowing down the residual stream and, in its MLP,
    # the product's gradient with the two gradients it splits into (the product's input is freed).
    workspace = (2 * graph.compute * arch.intermediate_size + graph.residual * arch.hidden_size) * tokens
    start_working = start_gathered + trained_copies + all_frozen + graph.lm_head_copy
    moments = [
        moment(start_working, (sum(kept) + graph.tail) * tokens, 0.0, 8 * vocab * tokens),
        moment(start_working, sum(kept) * tokens, tail_grads, 4 * vocab * tokens),
    ]
    for i in reversed(range(arch.num_layers)):
        if graph.layers[i].in_graph:
            below = sum(kept[:i]) + (kept[i] + graph.layers[i].saved if ac else kept[i])
            copies = trained_copies + (frozen_copies[i] if ac else sum(frozen_copies[: i + 1]))
            copies += graph.lm_head_copy if part.kind == "full" else 0.0  # a trained weight's copy stays cached
            moments.append(moment(layer_gathered + copies, below * tokens, tail_grads + sum(layer_grads[i + 1:]),
                                  max(workspace, reduce_scatter[i])))
    backward = max(moments, key=lambda terms: sum(terms.values()))

    largest = max((shape.parameters[n] for n in names), default=0)
    adam_temporary = (trained if work.on_gpu else 2 * largest) * wb / shards
    softmask_copy = masked * wb / shards if work.softmask_mode == "update" else 0.0
    step = {"weights": stored, "gradients": trained * wb / shards + buckets, "optimizer": optimizer,
            "activations": 0.0, "transient": adam_temporary + softmask_copy}
    scale = work.workers_per_gpu
    return MemoryEstimate(part, strategy, trained, {k: v * scale for k, v in backward.items()},
                          {k: v * scale for k, v in step.items()})


@dataclass(frozen=True)
class _LayerMemory:
    """What one decoder layer holds for backward."""

    in_graph: bool  # whether backward runs through it (it or a layer below it trains)
    saved: float  # bytes per token autograd saves in it
    checkpoint: float  # bytes per token kept under activation checkpointing: its input (every layer keeps it)
    trained_copies: float  # bytes of autocast's bf16 copies of its trained weights (cached until backward ends)
    frozen_copies: float  # bytes of autocast's bf16 copies of its frozen weights that backward needs


@dataclass(frozen=True)
class _Graph:
    """The autograd graph's memory for one micro-batch, layer by layer."""

    layers: list[_LayerMemory]
    compute: int  # bytes per element the projections output
    residual: int  # bytes per element of the residual stream
    tail: float  # bytes per token saved after the last layer: final norm, lm_head, loss
    lm_head_copy: float  # bytes of autocast's bf16 copy of lm_head's weight


def _graph(shape: ModelShape, part: ModelPart, work: Workload, fsdp: bool) -> _Graph:
    """What autograd keeps for backward, from the lowest trained layer up (nothing below it).

    Dtypes: `compute` is what the projections output (bf16 when bf16 is on); the residual stream is
    float32 under DDP's autocast over float32 weights (float32 embeddings plus bf16 outputs), else
    the compute dtype (FSDP casts its inputs and gathers bf16 weights).
    """
    arch = shape.architecture
    wb = _BYTES[work.weight_dtype]
    autocast = work.bf16 and not fsdp and work.weight_dtype != "bfloat16"
    compute = 2 if work.bf16 else wb
    residual = 4 if autocast else compute
    full = part.kind == "full"
    trained_in: dict[int, set[str]] = {}
    for layer, module in [] if full else part.trained_modules(arch.num_layers):
        trained_in.setdefault(layer, set()).add(module)
    grad = full  # whether the residual stream entering the layer needs a gradient
    layers = []
    for layer in range(arch.num_layers):
        modules = set(ALL_MODULES) if full else trained_in.get(layer, set())
        in_graph = grad or bool(modules)
        saved, trained_copies, frozen_copies, grad = _decoder_layer(
            shape, layer, modules, full, grad, compute, residual, autocast, work)
        layers.append(_LayerMemory(in_graph, saved, residual * arch.hidden_size, trained_copies, frozen_copies))
    vocab, hidden = shape.vocab_size, arch.hidden_size
    tail = 4 * vocab + 8  # log-softmax output (float32) and the int64 targets
    tail += 4 * hidden + 4 if grad else 0  # the final norm's float32 input and its rsqrt
    tail += residual * hidden if full else 0  # the normalised input, for the final norm's weight
    tail += (compute if autocast else residual) * hidden if full else 0  # lm_head's input, for its weight
    tail += 8 if full else 0  # the token ids, for the embeddings' gradient
    lm_head_copy = compute * vocab * hidden if autocast and (grad or full) else 0.0
    return _Graph(layers, compute, residual, tail, lm_head_copy)


def _decoder_layer(shape: ModelShape, layer: int, trained: set[str], norms_trained: bool, grad_in: bool,
                   compute: int, residual: int, autocast: bool, work: Workload) -> tuple[float, float, float, bool]:
    """One LLaMA-family decoder layer: (bytes per token it saves, autocast copies of trained weights,
    of frozen weights, whether its output needs a gradient).

    What autograd saves, op by op (a tensor is saved only when a gradient needs it):
      RMSNorm        input as float32 and rsqrt, when its input needs a gradient; the normalised
                     input, when the norm's weight trains (full SFT)
      projection     its input, when its weight trains (under autocast each projection saves its own
                     bf16 cast; otherwise q/k/v share one saved input, and gate/up another); under
                     autocast its weight's bf16 copy, when its input needs a gradient or it trains
      attention      SDPA saves q, k, v, the output and a float32 log-sum-exp per head; with a
                     padding mask, also the mask converted to the compute dtype (B x T x T per layer)
                     and k/v repeated to all query heads; the output is o_proj's input
      SwiGLU         silu's input (gate output), both factors of the product, down_proj's input
    """
    arch = shape.architecture
    h, f, heads, d = arch.hidden_size, arch.intermediate_size, arch.num_heads, arch.head_dim
    linear_input = compute if autocast else residual
    saved = 0.0
    copies = {"trained": 0.0, "frozen": 0.0}

    def weight_copy(module: str, input_grad: bool) -> None:
        if autocast and (input_grad or module in trained):
            key = "trained" if module in trained else "frozen"
            copies[key] += compute * shape.count(arch.module_prefix(layer, module))

    # input_layernorm
    if grad_in:
        saved += 4 * h + 4
    if norms_trained:
        saved += residual * h
    normed_grad = grad_in or norms_trained
    # q/k/v projections and attention
    qkv = [m for m in ("q_proj", "k_proj", "v_proj") if m in trained]
    saved += linear_input * h * (len(qkv) if autocast else min(len(qkv), 1))
    for module in ("q_proj", "k_proj", "v_proj"):
        weight_copy(module, normed_grad)
    attention_grad = normed_grad or bool(qkv)
    if attention_grad:
        padded = work.batch_size > 1
        kv_heads = heads if padded else arch.num_kv_heads
        saved += compute * (2 * heads * d + 2 * kv_heads * d) + 4 * heads
        saved += compute * work.seq_len if padded else 0
    elif "o_proj" in trained:
        saved += compute * heads * d
    weight_copy("o_proj", attention_grad)
    residual_grad = grad_in or attention_grad or "o_proj" in trained
    # post_attention_layernorm
    if residual_grad:
        saved += 4 * h + 4
    if norms_trained:
        saved += residual * h
    normed_grad = residual_grad or norms_trained
    # SwiGLU MLP: down(silu(gate(x)) * up(x))
    gate_up = [m for m in ("gate_proj", "up_proj") if m in trained]
    saved += linear_input * h * (len(gate_up) if autocast else min(len(gate_up), 1))
    gate_grad = normed_grad or "gate_proj" in trained
    up_grad = normed_grad or "up_proj" in trained
    saved += compute * f * (gate_grad + up_grad + gate_grad)  # silu input; silu output; up output
    saved += compute * f if "down_proj" in trained else 0
    weight_copy("gate_proj", normed_grad)
    weight_copy("up_proj", normed_grad)
    weight_copy("down_proj", gate_grad or up_grad)
    out_grad = residual_grad or gate_grad or up_grad or "down_proj" in trained
    return saved, copies["trained"], copies["frozen"], out_grad


@dataclass(frozen=True)
class MemoryPlan:
    """Every trained node's estimate under each strategy, and the strategy the plan picks."""

    shape: ModelShape
    work: Workload
    estimates: dict[str, list[MemoryEstimate]]  # strategy -> one estimate per trained node

    @classmethod
    def build(cls, shape: ModelShape, nodes: list[ModelPart], work: Workload) -> "MemoryPlan":
        trained = [_plannable(n, shape.architecture.num_layers) for n in nodes if n.trains]
        return cls(shape, work, {s: [estimate(shape, n, work, s) for n in trained] for s in STRATEGIES})

    def largest(self, strategy: str) -> MemoryEstimate:
        return max(self.estimates[strategy], key=lambda e: e.peak)

    def fits(self, strategy: str) -> bool:
        return self.largest(strategy).peak <= self.work.usable_bytes

    def choice(self) -> str | None:
        """DDP when every node fits with the margin, else FSDP when every node does, else None."""
        return next((s for s in STRATEGIES if self.fits(s)), None)

    def strategy(self, configured: str) -> str:
        """"ddp" or "fsdp" for the run: `configured` (`scaling.strategy`) as is, or for `auto` the choice.

        Raises PlanError, naming the settings to change, when `auto` finds that nothing fits.
        """
        if configured in STRATEGIES:
            return configured
        choice = self.choice()
        if choice is None:
            raise PlanError(f"memory plan: {self.verdict()}; {self.advice()}")
        return choice

    def table(self) -> str:
        """The plan as readable text: settings, one row per node, the largest node's terms, the verdict."""
        arch, work = self.shape.architecture, self.work
        lines = [
            f"memory plan: {arch.model_type}, {arch.num_layers} layers, {_count(self.shape.count())} parameters "
            f"(built on the meta device: no weights read)",
            f"  {work.describe()}",
            f"  GPU memory {work.gpu_memory_gb:g} GB, {MARGIN:.0%} margin kept free: {_size(work.usable_bytes)} usable",
            "",
        ]
        unit, scale = ("GB", GB) if self.largest("ddp").peak >= GB else ("MB", 1e6)
        lines.append(f"  {'node':<34} {'trained':>9} {'DDP ' + unit:>8} {f'FSDP/{work.num_workers} {unit}':>11}")
        for ddp, fsdp in zip(self.estimates["ddp"], self.estimates["fsdp"]):
            lines.append(f"  {ddp.part.describe():<34} {_count(ddp.trained_params):>9} {ddp.peak / scale:>8.2f} "
                         f"{fsdp.peak / scale:>11.2f}")
        lines.append("")
        for strategy in STRATEGIES:
            top = self.largest(strategy)
            lines.append(f"  largest under {strategy.upper()}: {top.part.describe()}: {top.breakdown()}")
        lines.append(f"  {self.verdict()}")
        return "\n".join(lines)

    def verdict(self) -> str:
        """One line: what fits and what the plan picks."""
        choice = self.choice()
        usable = f"{_size(self.work.usable_bytes)} usable per GPU"
        if choice == "ddp":
            return f"every node fits DDP ({_size(self.largest('ddp').peak)} at most of {usable}): auto picks ddp"
        if choice == "fsdp":
            return (f"DDP needs up to {_size(self.largest('ddp').peak)}, FSDP over {self.work.num_workers} "
                    f"worker(s) up to {_size(self.largest('fsdp').peak)} of {usable}: auto picks fsdp")
        return (f"nothing fits {usable}: DDP needs up to {_size(self.largest('ddp').peak)}, FSDP over "
                f"{self.work.num_workers} worker(s) up to {_size(self.largest('fsdp').peak)}")

    def summary(self, strategy: str) -> str:
        """The compact lines the search prints at start-up for the configured strategy."""
        lines = [f"memory plan ({self.work.describe()}): {self.verdict()}"]
        if strategy in STRATEGIES and not self.fits(strategy):
            top = self.largest(strategy)
            lines.append(f"warning: scaling.strategy={strategy} may run out of GPU memory: {top.part.describe()} needs "
                         f"{_size(top.peak)} (python -m cofitune_ray.plan shows the table); {self.advice()}")
        return "\n".join(lines)

    def advice(self) -> str:
        """Which single settings would make a strategy fit, each with its largest estimate."""
        nodes = [e.part for e in self.estimates["ddp"]]
        work = self.work
        options = []
        if not work.activation_checkpointing:
            options.append(("train.activation_checkpointing=true",
                            dataclasses.replace(work, activation_checkpointing=True)))
        for workers in (2, 4, 8, 16, 32, 64):
            if workers > work.num_workers:
                options.append((f"scaling.num_workers={workers} (FSDP shards over {workers} GPUs)",
                                dataclasses.replace(work, num_workers=workers)))
        batch = work.batch_size // 2
        while batch >= 1:
            options.append((f"train.batch_size={batch} (raise train.grad_accum_steps to keep the global batch)",
                            dataclasses.replace(work, batch_size=batch)))
            batch //= 2
        seq = work.seq_len // 2
        while seq >= 64:
            options.append((f"data.max_seq_length={seq}", dataclasses.replace(work, seq_len=seq)))
            seq //= 2
        if work.workers_per_gpu > 1:
            options.append(("scaling.gpus_per_worker=1 (one GPU per worker)",
                            dataclasses.replace(work, gpus_per_worker=1)))
        found, seen = [], set()
        for label, changed in options:
            key = label.split("=")[0]
            if key in seen:
                continue
            plan = MemoryPlan.build(self.shape, nodes, changed)
            choice = plan.choice()
            if choice:
                seen.add(key)
                found.append(f"{label} ({choice}, {_size(plan.largest(choice).peak)})")
        too_big = [e.part.describe() for e in self.estimates["fsdp"] if e.peak > work.usable_bytes]
        nodes_hint = f"or leave out of the search space the nodes that do not fit under FSDP: {', '.join(too_big)}"
        if not found:
            return f"no single setting makes it fit; {nodes_hint}"
        return "change one of: " + "; ".join(found) + f"; {nodes_hint}"


def _size(n: float) -> str:
    """Bytes as GB (1e9), or MB below 1 GB (tiny test models)."""
    return f"{n / GB:.1f} GB" if n >= GB else f"{n / 1e6:.1f} MB"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,}"


def memory_plan(config: Config, architecture: Architecture, space: SearchSpace | None = None) -> MemoryPlan:
    """The plan for a run: its model (from config.json, on the meta device), its search space's nodes, its settings.

    `architecture` is the model's as preflight or a worker read it; it must be the config's model.
    """
    shape = read_model_shape(config.model.path)
    if shape.architecture != architecture:
        raise ValueError(f"the architecture given is not the one of {config.model.path}")
    space = space or load_search_space(config.search.space)
    return MemoryPlan.build(shape, space.reachable_nodes(), Workload.from_config(config))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cofitune_ray.plan", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the run's YAML config")
    parser.add_argument("--search-space", help="search-space YAML (overrides search.space)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted config overrides, e.g. train.batch_size=4")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = load_config(args.config, args.overrides, args.search_space)
        space = load_search_space(config.search.space)
        shape = read_model_shape(config.model.path)
    except (ConfigError, ModelError, SearchSpaceError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    plan = MemoryPlan.build(shape, space.reachable_nodes(), Workload.from_config(config))
    print(plan.table())
    strategy = config.scaling.strategy
    if plan.choice() is None or (strategy in STRATEGIES and not plan.fits(strategy)):
        print(f"  {plan.advice()}")
    return 0

