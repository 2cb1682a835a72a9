"""The memory plan: its arithmetic on a hand-computed case, its estimate against a measured peak,
the strategy it picks, its CLI and the public LLaMA-2 shapes. No Ray."""

from __future__ import annotations

import json
import random
import string

import pytest
import torch
from transformers import LlamaConfig

from cofitune_ray.config import ConfigError, load_config
from cofitune_ray.core.node import ModelPart
from cofitune_ray.plan.measure import measure_peak
from cofitune_ray.plan.memory import (
    MARGIN,
    MemoryPlan,
    ModelShape,
    PlanError,
    Workload,
    estimate,
    main,
    memory_plan,
)
from cofitune_ray.preflight import PreflightError, preflight
from cofitune_ray.training.loop import training_points
from cofitune_ray.training.model import (
    Architecture,
    freeze_all_but,
    load_model,
    load_tokenizer,
    read_architecture,
    trainable_parameter_names,
)
from tiny import make_world, write_config, write_jsonl

HAND = LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                   num_key_value_heads=2, tie_word_embeddings=False)
UP_DOWN_LAYER_1 = ModelPart(layers=(1,), modules=("up_proj", "down_proj"))


def _work(**changes) -> Workload:
    settings = dict(batch_size=1, seq_len=4, weight_dtype="float32", bf16=False, num_workers=1, gpus_per_worker=1.0,
                    activation_checkpointing=False, softmask_mode="grad", on_gpu=False, gpu_memory_gb=80.0)
    return Workload(**{**settings, **changes})


def test_arithmetic_of_a_hand_computed_case():
    """2 layers, hidden 8, intermediate 16, 2 heads of 4, vocabulary 32; layer 1's up+down train;
    one sequence of 4 tokens (no padding), float32, one worker, CPU.

    parameters: embeddings 256 + 2 x (q,k,v,o 4 x 64 + gate,up,down 3 x 128 + norms 16 = 656) + norm 8
    + lm_head 256 = 1832 -> 7328 bytes; trained: up 128 + down 128 = 256 -> gradients 1024, AdamW 2048.
    saved per token: layer 0 nothing (nothing below it trains); layer 1: the MLP's input (8 x 4),
    up's output (16 x 4) for the product's gradient, the product (16 x 4) for down's weight = 160;
    after it: final norm's float32 input and rsqrt (36), log-softmax (32 x 4), targets (8) = 172.
    start of backward: 7328 + 2048 + 4 x 332 + loss gradients 8 x 32 x 4 = 11728 bytes.
    """
    shape = ModelShape.from_model_config(HAND)
    assert shape.count() == 1832
    ddp = estimate(shape, UP_DOWN_LAYER_1, _work(), "ddp")
    assert ddp.trained_params == 256
    assert ddp.peak_phase == "backward"
    assert ddp.backward == {"weights": 7328, "gradients": 0, "optimizer": 2048, "activations": 1328, "transient": 1024}
    assert ddp.peak == 11728
    # the step: weights, gradients, AdamW, and its CPU temporaries (two of the largest trained tensor)
    assert ddp.step == {"weights": 7328, "gradients": 1024, "optimizer": 2048, "activations": 0, "transient": 1024}

    two = estimate(shape, UP_DOWN_LAYER_1, _work(num_workers=2), "ddp")
    assert two.peak == 11728 + 1024  # DDP's gradient buckets
    fsdp = estimate(shape, UP_DOWN_LAYER_1, _work(num_workers=2), "fsdp")
    # peak in layer 1's backward: half the weights, the gathered root (embeddings, norm, lm_head: 520
    # parameters) and two gathered layers (656 each: layer 1 and the prefetched layer 0), what layer
    # 1 saved (4 x 160), and the reduce-scatter of its 256 trained gradients (unsharded + buffer, 8 bytes each)
    assert fsdp.backward == {"weights": 3664 + (520 + 2 * 656) * 4, "gradients": 0, "optimizer": 1024,
                             "activations": 640, "transient": 2048}
    shared = estimate(shape, UP_DOWN_LAYER_1, _work(gpus_per_worker=0.5), "ddp")
    assert shared.peak == 2 * ddp.peak  # two workers on one GPU


def test_activation_checkpointing_keeps_layer_inputs_and_one_layer():
    shape = ModelShape.from_model_config(LlamaConfig(**{**HAND.to_dict(), "num_hidden_layers": 8}))
    plain = estimate(shape, ModelPart(kind="full"), _work(batch_size=4, seq_len=64), "ddp")
    checkpointed = estimate(shape, ModelPart(kind="full"), _work(batch_size=4, seq_len=64,
                                                                 activation_checkpointing=True), "ddp")
    assert checkpointed.peak < plain.peak / 4
    assert checkpointed.backward["activations"] < plain.backward["activations"] / 5


def _padded_world(root):
    """A tiny world whose batches are padded to max_seq_length (long and short sequences mixed)."""
    world = make_world(root, layers=4)
    rng = random.Random(0)
    rows = [{"instruction": "echo", "input": "x",
             "output": "".join(rng.choice(string.ascii_lowercase) for _ in range(80 if i % 2 else 8))}
            for i in range(64)]
    world["data"]["speciality_train"] = str(write_jsonl(root / "padded.jsonl", rows))
    world["data"]["max_seq_length"] = 48
    world["train"].update(batch_size=4, max_steps=3, warmup_ratio=0.0)
    return world


@pytest.mark.parametrize("part", [ModelPart(kind="full"),
                                  ModelPart(layer_range=(0.5, 0.75), modules=("up_proj", "down_proj"))],
                         ids=["full SFT", "up+down (50%,75%]"])
def test_estimate_is_within_25_percent_of_the_measured_peak(tmp_path, part):
    config = load_config(write_config(tmp_path / "run.yaml", _padded_world(tmp_path)))
    torch.manual_seed(0)
    model = load_model(config.model.path)
    arch = Architecture.from_config(model.config)
    freeze_all_but(model, trainable_parameter_names(arch, part, [n for n, _ in model.named_parameters()]))
    with measure_peak(torch.device("cpu"), model) as peak:
        for _ in training_points(config, config.train.lr, model, load_tokenizer(config.model.path), None, 0, 1,
                                 torch.device("cpu")):
            pass
    planned = estimate(ModelShape.from_model_config(model.config), part, Workload.from_config(config), "ddp")
    assert peak.bytes > 0
    assert 0.75 < planned.peak / peak.bytes < 1.25, (planned.breakdown(), peak.bytes)


def test_measure_peak_counts_live_tensor_bytes():
    model = torch.nn.Linear(4, 4)  # 20 float32 parameters: 80 bytes, counted from the start
    with measure_peak(torch.device("cpu"), model) as peak:
        a = torch.ones(1000)  # 4000 bytes
        b = torch.ones(500)  # 2000 bytes
        del a
        c = torch.ones(250)  # 1000 bytes, after a's 4000 were freed
        del b, c
    assert peak.bytes == 80 + 4000 + 2000


def _config(tmp_path, world, **scaling):
    world = {**world, "scaling": {**world["scaling"], **scaling}}
    return load_config(write_config(tmp_path / "run.yaml", world))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"), layers=4)


def test_auto_picks_ddp_then_fsdp_then_says_what_to_change(tmp_path, world):
    config = _config(tmp_path, world, strategy="auto", num_workers=2)
    arch = read_architecture(config.model.path)
    plan = memory_plan(config, arch)
    ddp, fsdp = plan.largest("ddp").peak, plan.largest("fsdp").peak
    assert fsdp < ddp
    usable = 1 / (1 - MARGIN) / 1e9  # GB of GPU memory per usable byte

    just_ddp = ddp * 1.01 * usable
    assert _strategy(_config(tmp_path, world, strategy="auto", num_workers=2, gpu_memory_gb=just_ddp), arch) == "ddp"
    between = (ddp + fsdp) / 2 * usable
    assert _strategy(_config(tmp_path, world, strategy="auto", num_workers=2, gpu_memory_gb=between), arch) == "fsdp"
    with pytest.raises(PlanError) as error:
        _strategy(_config(tmp_path, world, strategy="auto", num_workers=2, gpu_memory_gb=fsdp * 0.9 * usable), arch)
    message = str(error.value)
    assert "nothing fits" in message
    assert "train.activation_checkpointing=true" in message and "scaling.num_workers=" in message
    assert "train.batch_size=2" in message
    assert "full SFT" in message  # the node that does not fit under FSDP
    # an explicit strategy is the user's choice: returned as is, even where the plan says it will not fit
    assert _strategy(_config(tmp_path, world, strategy="ddp", gpu_memory_gb=1e-6), arch) == "ddp"


def _strategy(config, arch) -> str:
    return memory_plan(config, arch).strategy(config.scaling.strategy)


def test_preflight_rejects_auto_when_nothing_fits_and_prints_the_plan(tmp_path, world, capsys):
    with pytest.raises(PreflightError, match="scaling.strategy: auto: memory plan: nothing fits"):
        preflight(_config(tmp_path, world, strategy="auto", gpu_memory_gb=1e-6))
    checked = preflight(_config(tmp_path, world, strategy="ddp", gpu_memory_gb=1e-6))
    summary = checked.memory.summary("ddp")
    assert "warning: scaling.strategy=ddp may run out of GPU memory" in summary


def test_cli_prints_the_table(tmp_path, world, capsys):
    config = write_config(tmp_path / "run.yaml", world)
    assert main(["--config", str(config), "train.batch_size=2"]) == 0
    out = capsys.readouterr().out
    assert "micro-batch 2 x 32 tokens" in out and "full SFT" in out and "(25%, 50%] up+down" in out
    assert "largest under DDP: full SFT" in out and "auto picks ddp" in out


def test_cli_reports_a_bad_key(tmp_path, world, capsys):
    config = write_config(tmp_path / "run.yaml", world)
    assert main(["--config", str(config), "scaling.strategy=fast"]) == 2
    assert "scaling.strategy: 'fast' is not one of ddp, fsdp, auto" in capsys.readouterr().err


def test_config_keys_are_validated(tmp_path, world):
    with pytest.raises(ConfigError, match="scaling.gpu_memory_gb: must be positive"):
        _config(tmp_path, world, gpu_memory_gb=0)


def test_llama2_shapes_have_their_published_parameter_counts():
    """The shapes the docs' table uses, built on the meta device, against the published sizes."""
    from pathlib import Path

    shapes = json.loads((Path(__file__).resolve().parents[1] / "benchmarks" / "llama2_shapes.json").read_text())
    counts = {name: ModelShape.from_model_config(LlamaConfig(**entry["config"])).count()
              for name, entry in shapes["models"].items()}
    assert counts == {"LLaMA-2 7B": 6_738_415_616, "LLaMA-2 13B": 13_015_864_320, "LLaMA 33B": 32_528_943_616,
                      "LLaMA-2 70B": 68_976_648_192}


def test_plan_of_70b_full_sft_needs_sharding():
    shape = ModelShape.from_model_config(LlamaConfig(vocab_size=32000, hidden_size=8192, intermediate_size=28672,
                                                     num_hidden_layers=80, num_attention_heads=64,
                                                     num_key_value_heads=8, tie_word_embeddings=False))
    work = _work(batch_size=1, seq_len=2048, weight_dtype="bfloat16", bf16=True, num_workers=8, on_gpu=True,
                 activation_checkpointing=True)
    plan = MemoryPlan.build(shape, [ModelPart(kind="full")], work)
    assert plan.largest("ddp").peak > 4 * 80e9  # weights + gradients + AdamW alone: 8 bytes x 69B
    assert plan.choice() is None or plan.choice() == "fsdp"


def test_search_stops_before_ray_when_auto_finds_nothing_fits(tmp_path, world, capsys, monkeypatch):
    import cofitune_ray.cluster
    import cofitune_ray.search

    def connect(*args, **kwargs):
        raise AssertionError("the search connected to Ray before reporting the memory plan")

    monkeypatch.setattr(cofitune_ray.cluster, "connect", connect)
    config = write_config(tmp_path / "run.yaml", world)
    code = cofitune_ray.search.main(["--config", str(config), "scaling.strategy=auto", "scaling.gpu_memory_gb=1e-6"])
    err = capsys.readouterr().err
    assert code == 2 and "scaling.strategy: auto: memory plan: nothing fits" in err
    assert "leave out of the search space the nodes that do not fit under FSDP: full SFT" in err


def test_spectrum_node_is_planned_before_its_layers_are_chosen():
    shape = ModelShape.from_model_config(LlamaConfig(**{**HAND.to_dict(), "num_hidden_layers": 8}))
    unchosen = ModelPart(kind="snr", top_percent=25)
    plan = MemoryPlan.build(shape, [unchosen], _work())
    (bound,) = plan.estimates["ddp"]
    chosen = unchosen.with_(selection=(("q_proj", (5, 6)), ("up_proj", (3, 7)), ("down_proj", (4, 6)),
                                       ("k_proj", (6, 7)), ("v_proj", (2, 5)), ("o_proj", (6, 7)),
                                       ("gate_proj", (3, 4))))
    exact = estimate(shape, chosen, _work(), "ddp")
    assert bound.trained_params == exact.trained_params == 2 * (4 * 64 + 3 * 128)  # 2 of 8 layers per type
    assert bound.peak >= exact.peak  # the bound keeps activations from layer 0 up
    lowest = ModelPart(layers=(0, 1))  # every projection of layers 0 and 1: what the bound trains
    assert bound.peak == estimate(shape, lowest, _work(), "ddp").peak
