"""Step time of one optimizer step: full training vs a 25%-band FFN node, and soft-mask overhead.

    python benchmarks/node_step_time.py [--layers 8] [--hidden 256] [--device cpu|cuda] [--dtype float32|bfloat16]

Builds a LLaMA-architecture model from a config (no download), then times forward + backward +
AdamW step (+ soft-mask) for each variant on the same batches, in one run, and prints ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cofitune_ray.core.node import PAPER_NODE, ModelPart
from cofitune_ray.training.model import Architecture, freeze_all_but, trainable_parameter_names
from cofitune_ray.training.softmask.mask import Importance, SoftMask

VARIANTS = {
    "full SFT": (ModelPart(kind="full"), None),
    "FFN up+down (25%,50%]": (PAPER_NODE, None),
    "  + soft-mask (grad)": (PAPER_NODE.with_(softmask=True), "grad"),
    "  + soft-mask (update)": (PAPER_NODE.with_(softmask=True), "update"),
}


def build_model(args) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.heads,
                         max_position_embeddings=args.seq)
    return LlamaForCausalLM(config).to(args.device, dtype=getattr(torch, args.dtype))


class Variant:
    """One model set up to train one node (optionally soft-masked), stepping on demand."""

    def __init__(self, args, node: ModelPart, mode: str | None):
        self.model = build_model(args)
        arch = Architecture.from_config(self.model.config)
        names = trainable_parameter_names(arch, node, [n for n, _ in self.model.named_parameters()])
        self.trained = freeze_all_but(self.model, names)
        self.softmask = None
        if mode:
            g = torch.Generator().manual_seed(0)
            importance = Importance(head=torch.rand(arch.num_layers, arch.num_heads, generator=g),
                                    intermediate=torch.rand(arch.num_layers, arch.intermediate_size, generator=g),
                                    output=torch.rand(arch.num_layers, arch.hidden_size, generator=g))
            self.softmask = SoftMask.for_model(self.model, arch, importance, mode)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
        self.times: list[float] = []

    def step(self, batch: torch.Tensor, device: str, record: bool) -> None:
        sync(device)
        start = time.perf_counter()
        self.model(input_ids=batch, labels=batch).loss.backward()
        if self.softmask:
            self.softmask.before_step()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        if self.softmask:
            self.softmask.after_step()
        self.optimizer.zero_grad(set_to_none=True)
        sync(device)
        if record:
            self.times.append(time.perf_counter() - start)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--intermediate", type=int, default=688)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=2000)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, args.vocab, (args.batch, args.seq), generator=g).to(args.device)
               for _ in range(args.steps + args.warmup)]
    total = sum(p.numel() for p in build_model(args).parameters())
    print(f"model: LLaMA, {args.layers} layers, hidden {args.hidden}, intermediate {args.intermediate}, "
          f"{total / 1e6:.1f}M parameters; batch {args.batch}x{args.seq}; {args.device}, {args.dtype}; "
          f"torch threads {torch.get_num_threads()}")
    variants = {name: Variant(args, node, mode) for name, (node, mode) in VARIANTS.items()}
    # Round-robin: every variant takes step i before any takes step i+1, so background load and
    # clock changes hit all variants alike.
    for i, batch in enumerate(batches):
        for variant in variants.values():
            variant.step(batch, args.device, record=i >= args.warmup)
    median = {name: statistics.median(v.times) for name, v in variants.items()}
    full, node = median["full SFT"], median["FFN up+down (25%,50%]"]
    print(f"{'variant':<26}{'trained params':>16}{'ms/step':>10}{'vs full':>9}{'vs node':>9}")
    for name, variant in variants.items():
        seconds = median[name]
        print(f"{name:<26}{variant.trained:>16,}{seconds * 1e3:>10.1f}{seconds / full:>9.3f}{seconds / node:>9.3f}")


if __name__ == "__main__":
    main()
