"""Row sharding (FSDP2) on 3 gloo processes, no Ray: local rows in torch.chunk order, uneven and
empty shards, the soft-mask on shards equal to the unsharded rule row for row in both modes, and
evaluation and importance of a sharded model (workers with unequal shares run in step) equal to
the unsharded ones."""

from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import LlamaConfig, LlamaForCausalLM

from cofitune_ray.training.checkpoint import delta_state, model_fingerprint
from cofitune_ray.training.data import Example, read_examples
from cofitune_ray.training.evaluate import EvalSet, score_set
from cofitune_ray.training.model import Architecture, freeze_all_but, load_tokenizer
from cofitune_ray.training.sharding import distribute, full_tensor, local_rows
from cofitune_ray.training.softmask.importance import ImportanceSettings, compute_importance
from cofitune_ray.training.softmask.mask import Importance, SoftMask
from tiny import ALPHABET, SPECIALS, make_examples, make_tokenizer, write_jsonl

pytestmark = pytest.mark.slow  # three processes train and evaluate: not in the fast subset

WORKERS = 3
# k_proj/v_proj have 2 rows (one kv head of 2): shards of 1, 1 and 0 rows; up_proj 7 rows: 3, 3, 1.
SHAPE = dict(vocab_size=len(SPECIALS) + len(ALPHABET), hidden_size=8, intermediate_size=7, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=16, tie_word_embeddings=False)
TRAINED = [f"model.layers.1.{m}.weight" for m in
           ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.up_proj", "mlp.down_proj")]


def _model():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SHAPE))
    freeze_all_but(model, TRAINED)
    return model


def _importance():
    g = torch.Generator().manual_seed(1)
    return Importance(head=torch.rand(2, 4, generator=g), intermediate=torch.rand(2, 7, generator=g),
                      output=torch.rand(2, 8, generator=g))


def _train_two_steps(model, mode, arch):
    """Two AdamW steps with fixed gradients (the same whole gradient on every worker), soft-masked."""
    params = dict(model.named_parameters())
    optimizer = torch.optim.AdamW([params[n] for n in TRAINED], lr=0.1, weight_decay=0.1)
    softmask = SoftMask.for_model(model, arch, _importance(), mode)
    g = torch.Generator().manual_seed(2)
    for _ in range(2):
        for name in TRAINED:
            whole = torch.randn(params[name].shape, generator=g)
            local, start = local_rows(params[name])
            grad = whole[start : start + local.shape[0]]
            if local is not params[name]:  # sharded: the gradient is a DTensor with the same placement
                from torch.distributed.tensor import DTensor

                grad = DTensor.from_local(grad, params[name].device_mesh, params[name].placements,
                                          shape=params[name].shape, stride=params[name].stride())
            params[name].grad = grad
        softmask.before_step()
        optimizer.step()
        softmask.after_step()


def _evaluation_and_importance_match(rank, root):
    """5 examples over 3 workers (2, 2, 1), batches of 1: the third worker pads, in step with the others."""
    tokenizer, path = load_tokenizer(str(root)), str(root / "eval.jsonl")
    arch = Architecture.from_config(LlamaConfig(**SHAPE))
    reference, sharded = _model(), distribute(_model(), "fsdp", torch.device("cpu"))
    examples = read_examples(path)
    # multiple choice with 2 to 4 options: the workers' shares are 4, 6 and 4 (example, option) pairs
    with_choices = [Example(e.instruction, e.input, e.output, choices=(e.output, e.input, "ab", "ba")[: 2 + i % 3],
                            answer=0) for i, e in enumerate(examples)]
    for metric, items in (("exact_match", examples), ("loglik", examples), ("choice", with_choices)):
        eval_set = EvalSet("s", items, metric)
        whole = score_set(reference, tokenizer, "compact", eval_set, batch_size=1, max_new_tokens=4)
        shared = score_set(sharded, tokenizer, "compact", eval_set, batch_size=1, max_new_tokens=4,
                           rank=rank, world_size=WORKERS)
        assert shared == pytest.approx(whole, rel=1e-6), metric
    settings = ImportanceSettings("compact", 32, max_examples=5, batch_size=1, temperature=0.1, dropout=0.1, seed=0)
    whole, _ = compute_importance(reference, arch, tokenizer, [path], settings)
    shared, _ = compute_importance(sharded, arch, tokenizer, [path], settings, rank, WORKERS)
    for key in ("head", "intermediate", "output"):
        torch.testing.assert_close(getattr(shared, key), getattr(whole, key), rtol=1e-4, atol=1e-5, msg=key)


def _worker(rank, root):
    torch.set_num_threads(1)
    # a worker out of step would hang a collective: fail within a minute instead
    dist.init_process_group("gloo", init_method=f"file://{root}/init", rank=rank, world_size=WORKERS,
                            timeout=timedelta(seconds=60))
    try:
        _evaluation_and_importance_match(rank, root)
        arch = Architecture.from_config(LlamaConfig(**SHAPE))
        for mode in ("update", "grad"):
            reference, sharded = _model(), distribute(_model(), "fsdp", torch.device("cpu"))
            params = dict(sharded.named_parameters())
            local, start = local_rows(params["model.layers.1.mlp.up_proj.weight"])
            assert (start, local.shape[0]) == [(0, 3), (3, 3), (6, 1)][rank]
            local, start = local_rows(params["model.layers.1.self_attn.k_proj.weight"])
            assert (start, local.shape[0]) == [(0, 1), (1, 1), (2, 0)][rank]
            _train_two_steps(reference, mode, arch)
            _train_two_steps(sharded, mode, arch)
            whole = delta_state(sharded)  # gathered on every worker
            assert sorted(whole) == sorted(TRAINED)
            expected = dict(reference.named_parameters())
            for name in TRAINED:
                torch.testing.assert_close(whole[name], expected[name].detach(), rtol=1e-6, atol=1e-7,
                                           msg=f"{mode} {name}")
                assert not torch.equal(whole[name], _model().state_dict()[name])
            for name, param in sharded.named_parameters():
                if name not in TRAINED:
                    assert torch.equal(full_tensor(param.detach()), expected[name].detach()), name
            probe = [1, 2, 3]
            mine = model_fingerprint(sharded, set(TRAINED), probe)
            theirs = model_fingerprint(reference, set(TRAINED), probe)
            for key in ("trained_sum", "frozen_sum", "probe_logits_sum"):
                assert mine[key] == pytest.approx(theirs[key], rel=1e-9, abs=1e-9), key
    finally:
        dist.destroy_process_group()


def test_sharded_training_evaluation_and_importance_equal_unsharded(tmp_path):
    make_tokenizer(tmp_path)
    write_jsonl(tmp_path / "eval.jsonl", make_examples(5, seed=3))
    mp.spawn(_worker, args=(tmp_path,), nprocs=WORKERS)
