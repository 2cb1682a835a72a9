"""What training a node costs in time: the work of one optimizer step, and the seconds of one run.

Pure Python (no torch, no Ray): the cost plan (`cofitune_ray/plan/cost.py`) prints it for a config
without a GPU and without reading weights; `core/budget.py` adds runs up into a search.

The step model, per token of the micro-batch (floating-point operations, a multiply-add counted 2):

  forward    every projection and lm_head: 2 x its weights; attention: 4 x T x heads x head_dim per
             layer (the scores and the weighted sum over the whole T x T matrix: with a padded batch
             SDPA gets a mask and computes all of it).
  backward   input gradients: 2 x the weights of every projection whose input needs a gradient, that
             is, one with a trained parameter below it in the forward graph (so nothing below the
             lowest trained module; q/k/v below o_proj, gate/up below down_proj, layer i below layer
             i+1), and lm_head's whenever anything trains; attention's 8 x T x heads x head_dim
             where its q, k or v needs a gradient. Weight gradients: 2 x the weights of each trained
             projection, and of lm_head under full SFT (the embeddings' gradient is a scatter, not a
             matrix product: not counted). Frozen weights get no weight gradient.
  optimizer  AdamW and gradient clipping are memory-bound: OPTIMIZER_BYTES per trained parameter
             over the device's memory bandwidth (float32: read the weight, the gradient and two
             moments, write the weight and two moments, clipping reads the gradient once more).
  recompute  with activation checkpointing, every layer the backward pass goes through runs its
             forward once more.

Not counted, on purpose: norms, activations, softmax, rotary embeddings and the loss (elementwise
work, proportional to the tokens like the products); their time is inside the effective throughput,
which a full-SFT step measures (`calibrate`) or the user gives. A step's seconds are

    tokens x (forward + backward) / flops_per_s  +  trained x OPTIMIZER_BYTES / bandwidth

per micro-batch of `tokens` tokens on one GPU, times the micro-batches of one optimizer step.
A run's seconds add its start-up, its training steps and each evaluation point's evaluation and
checkpoint (`RunTime`). Communication (DDP's all-reduce, FSDP's gathers) is not modelled: it
overlaps the backward pass within one NVLink pod.
"""

from __future__ import annotations

from dataclasses import dataclass

from cofitune_ray.core.node import ALL_MODULES, ModelPart

#: Bytes AdamW (float32 moments) and gradient clipping move per trained parameter in one step.
OPTIMIZER_BYTES = 32
#: Position of each projection in a decoder layer's forward graph (q/k/v read the layer's input).
_POSITION = {"q_proj": 0, "k_proj": 0, "v_proj": 0, "o_proj": 1, "gate_proj": 2, "up_proj": 2, "down_proj": 3}


class CostError(ValueError):
    """A model or setting the cost model cannot use; the message names the key."""


@dataclass(frozen=True)
class Shape:
    """The sizes of a LLaMA-family decoder (LLaMA, Mistral, Qwen2) that its step's work depends on.

    The same facts as `training.model.Architecture` plus the vocabulary, read from a config.json
    mapping without transformers (tests check both agree, and the parameter count with the model
    transformers builds).
    """

    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tied_embeddings: bool = False

    @classmethod
    def from_config(cls, config: dict, source: str = "config.json") -> "Shape":
        """From a Hugging Face config.json mapping (the keys `Architecture.from_config` reads)."""
        try:
            heads = int(config["num_attention_heads"])
            hidden = int(config["hidden_size"])
            return cls(num_layers=int(config["num_hidden_layers"]), hidden_size=hidden,
                       intermediate_size=int(config["intermediate_size"]), num_heads=heads,
                       num_kv_heads=int(config.get("num_key_value_heads") or heads),
                       head_dim=int(config.get("head_dim") or hidden // heads), vocab_size=int(config["vocab_size"]),
                       tied_embeddings=bool(config.get("tie_word_embeddings", False)))
        except KeyError as exc:
            raise CostError(f"{source}: missing key {exc.args[0]!r}") from None

    def projection(self, module: str) -> int:
        """Weights of one projection in one layer."""
        h, q, kv, f = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim, \
            self.intermediate_size
        return {"q_proj": h * q, "k_proj": h * kv, "v_proj": h * kv, "o_proj": q * h,
                "gate_proj": h * f, "up_proj": h * f, "down_proj": f * h}[module]

    @property
    def layer_parameters(self) -> int:
        """One decoder layer: its seven projections and two norms."""
        return sum(self.projection(m) for m in ALL_MODULES) + 2 * self.hidden_size

    @property
    def parameters(self) -> int:
        """Every parameter: embeddings, decoder layers, final norm, lm_head (unless tied)."""
        embeddings = self.vocab_size * self.hidden_size
        lm_head = 0 if self.tied_embeddings else embeddings
        return embeddings + self.num_layers * self.layer_parameters + self.hidden_size + lm_head


@dataclass(frozen=True)
class StepWork:
    """The work of one node's training step per token, in floating-point operations, and its trained parameters."""

    forward: float
    input_gradients: float
    weight_gradients: float
    trained: int

    @property
    def per_token(self) -> float:
        return self.forward + self.input_gradients + self.weight_gradients


def trained_modules(shape: Shape, part: ModelPart) -> set[tuple[int, str]]:
    """The (layer, projection) pairs a node trains. An snr node whose layers are not chosen yet (they come
    from the base weights) is planned on its lowest possible layers: the most backward it can need."""
    if part.kind == "full":
        return {(i, m) for i in range(shape.num_layers) for m in ALL_MODULES}
    if part.kind == "snr" and part.selection is None:
        return {(i, m) for i in range(part.snr_layer_count(shape.num_layers)) for m in ALL_MODULES}
    return set(part.trained_modules(shape.num_layers))


def step_work(shape: Shape, part: ModelPart, seq_len: int, activation_checkpointing: bool = False) -> StepWork:
    """The work per token of one training step of `part` on sequences of `seq_len` tokens (module docstring)."""
    if not part.trains:
        raise CostError("the base node trains nothing: it has no training step")
    trained = trained_modules(shape, part)
    full = part.kind == "full"
    attention = 4 * seq_len * shape.num_heads * shape.head_dim
    lm_head = 2 * shape.hidden_size * shape.vocab_size
    layer_forward = sum(2 * shape.projection(m) for m in ALL_MODULES) + attention
    # Where the lowest trained module sits: (layer, position); the embeddings (full SFT) are below everything.
    lowest = (-1, 0) if full else min((i, _POSITION[m]) for i, m in trained)
    recomputed = shape.num_layers - max(lowest[0], 0) if activation_checkpointing else 0
    forward = (shape.num_layers + recomputed) * layer_forward + lm_head
    input_grads = float(lm_head)
    weight_grads = float(lm_head) if full else 0.0
    for i in range(shape.num_layers):
        for m in ALL_MODULES:
            if (i, _POSITION[m]) > lowest:
                input_grads += 2 * shape.projection(m)
            if (i, m) in trained:
                weight_grads += 2 * shape.projection(m)
        if (i, _POSITION["o_proj"]) > lowest:  # the attention between q/k/v and o_proj
            input_grads += 2 * attention
    if full:
        params = shape.parameters
    else:
        params = sum(shape.projection(m) for _, m in trained)
    return StepWork(float(forward), input_grads, weight_grads, params)


@dataclass(frozen=True)
class Device:
    """What one accelerator (or one worker's CPU share) does per second: effective work and memory traffic."""

    name: str
    flops_per_s: float  # effective floating-point operations per second on training steps (not the peak)
    bandwidth: float  # bytes per second of memory traffic (the optimizer step)

    def step_seconds(self, work: StepWork, tokens_per_micro_batch: int, micro_batches: int = 1,
                     shards: int = 1) -> float:
        """One optimizer step: `micro_batches` forward/backward passes of `tokens_per_micro_batch` tokens, then
        AdamW over the trained parameters, or over this GPU's 1/`shards` of them (FSDP)."""
        compute = micro_batches * tokens_per_micro_batch * work.per_token / self.flops_per_s
        return compute + work.trained / shards * OPTIMIZER_BYTES / self.bandwidth


#: Published dense bf16 peak (FLOP/s, without sparsity) and memory bandwidth (bytes/s) of data-centre GPUs.
GPU_PEAKS = {
    "h100": (989e12, 3.35e12),  # H100 SXM 80GB
    "h200": (989e12, 4.8e12),
    "a100": (312e12, 2.0e12),  # A100 SXM 80GB
}


def gpu(kind: str, utilisation: float) -> Device:
    """A GPU of a known kind running training steps at `utilisation` of its bf16 peak."""
    if kind not in GPU_PEAKS:
        raise CostError(f"GPU kind {kind!r} is not one of {', '.join(GPU_PEAKS)}")
    if not 0 < utilisation <= 1:
        raise CostError(f"utilisation must be in (0, 1], got {utilisation}")
    peak, bandwidth = GPU_PEAKS[kind]
    return Device(kind, peak * utilisation, bandwidth)


def calibrate(name: str, work: StepWork, tokens: int, measured_step_s: float, bandwidth: float) -> Device:
    """The device whose model reproduces one measured step of `work` on `tokens` tokens (its optimizer
    part at `bandwidth`): the effective throughput the rest of the plan uses."""
    compute_s = measured_step_s - work.trained * OPTIMIZER_BYTES / bandwidth
    if compute_s <= 0:
        raise CostError(f"a step of {measured_step_s:.4g} s leaves no time for its forward and backward passes")
    return Device(name, tokens * work.per_token / compute_s, bandwidth)


@dataclass(frozen=True)
class RunTime:
    """The seconds of one learning-rate run outside its optimizer steps, from measured shares.

    startup_s: from the trial's start to its first step (worker group, model load, importance lookup).
    eval_s: one evaluation point (the eval sets scored by the trained model).
    checkpoint_s: one evaluation point's delta checkpoint and training state, saved and uploaded.
    """

    startup_s: float
    eval_s: float
    checkpoint_s: float = 0.0

    def __post_init__(self) -> None:
        for name in ("startup_s", "eval_s", "checkpoint_s"):
            if getattr(self, name) < 0:
                raise CostError(f"{name} must be >= 0, got {getattr(self, name)}")

    def seconds(self, steps: int, points: int, step_s: float) -> float:
        """A run that trains `steps` steps of `step_s` seconds and reaches `points` evaluation points."""
        checkpoints = points if steps else 0
        return self.startup_s + steps * step_s + points * self.eval_s + checkpoints * self.checkpoint_s
