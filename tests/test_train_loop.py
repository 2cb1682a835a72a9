"""The training loop without Ray: exact trained set, frozen weights untouched, soft-mask once per step,
and the measured difference between the `grad` and `update` soft-mask modes under AdamW."""

import copy

import pytest
import torch

from cofitune_ray.config import config_from_dict
from cofitune_ray.core.node import ModelPart
from cofitune_ray.training.loop import learning_rate_schedule, training_points
from cofitune_ray.training.model import (
    Architecture,
    freeze_all_but,
    load_model,
    load_tokenizer,
    trainable_parameter_names,
)
from cofitune_ray.training.softmask.mask import Importance, SoftMask
from tiny import make_world

NODE = ModelPart(layer_range=(0.25, 0.5), modules=("up_proj", "down_proj"), softmask=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"), layers=8)


def _train(world, node, mode=None, importance=None, **train):
    data = copy.deepcopy(world)
    data["train"].update(train)
    config = config_from_dict(data)
    model = load_model(config.model.path)
    arch = Architecture.from_config(model.config)
    freeze_all_but(model, trainable_parameter_names(arch, node, [n for n, _ in model.named_parameters()]))
    softmask = SoftMask.for_model(model, arch, importance, mode) if mode else None
    calls = []
    if softmask:
        original = softmask.before_step
        softmask.before_step = lambda: (calls.append(1), original())[1]
    reports = []
    for point in training_points(config, node.lr or config.train.lr, model, load_tokenizer(config.model.path), softmask,
                                 0, 1, torch.device("cpu")):
        reports.append((point.step, point.epoch, point.train_loss))
    return model, reports, len(calls)


def _random_importance(seed=0):
    g = torch.Generator().manual_seed(seed)
    return Importance(head=torch.rand(8, 4, generator=g) * 0.9, intermediate=torch.rand(8, 48, generator=g) * 0.9,
                      output=torch.rand(8, 32, generator=g) * 0.9)


def test_only_the_node_trains_and_frozen_weights_are_bit_identical(world):
    before = load_model(world["model"]["path"]).state_dict()
    model, reports, _ = _train(world, NODE.with_(softmask=False), max_steps=3)
    after = model.state_dict()
    trained = {"model.layers.2.mlp.up_proj.weight", "model.layers.2.mlp.down_proj.weight",
               "model.layers.3.mlp.up_proj.weight", "model.layers.3.mlp.down_proj.weight"}
    for name, value in before.items():
        if name in trained:
            assert not torch.equal(value, after[name]), name
        else:
            assert torch.equal(value, after[name]), name
    assert [r[0] for r in reports] == [3]  # max_steps caps the single epoch; evaluated at the end


def test_evaluation_points_every_n_steps_and_at_epoch_end(world):
    data = copy.deepcopy(world)
    data["eval"]["every_n_steps"] = 2
    _, reports, _ = _train({**data}, NODE.with_(softmask=False), max_steps=None, epochs=2, batch_size=8)
    # 32 examples / batch 8 = 4 steps per epoch: evaluations at 2, (4 = epoch end), 6, (8 = end)
    assert [(step, epoch) for step, epoch, _ in reports] == [(2, 0.5), (4, 1.0), (6, 1.5), (8, 2.0)]


def test_softmask_applied_once_per_optimizer_step_under_accumulation(world):
    factor_half = Importance(head=torch.full((8, 4), 0.5), intermediate=torch.full((8, 48), 0.5),
                             output=torch.full((8, 32), 0.5))
    base = load_model(world["model"]["path"]).state_dict()
    plain, _, _ = _train(world, NODE, max_steps=1, grad_accum_steps=2, batch_size=2, weight_decay=0.0)
    masked, _, calls = _train(world, NODE, "update", factor_half, max_steps=1, grad_accum_steps=2, batch_size=2,
                              weight_decay=0.0)
    assert calls == 1
    name = "model.layers.2.mlp.up_proj.weight"
    plain_update = plain.state_dict()[name] - base[name]
    masked_update = masked.state_dict()[name] - base[name]
    assert torch.allclose(masked_update, 0.5 * plain_update, atol=1e-7)  # 0.25 if applied twice


def _distance(a, b, names):
    return sum((a.state_dict()[n] - b.state_dict()[n]).norm().item() for n in names)


def test_adamw_cancels_grad_mode_but_not_update_mode(world):
    base = load_model(world["model"]["path"])
    names = ["model.layers.2.mlp.up_proj.weight", "model.layers.3.mlp.down_proj.weight"]
    importance = _random_importance()
    settings = dict(max_steps=4, grad_clip=None, weight_decay=0.0)
    none, _, _ = _train(world, NODE, **settings)
    grad, _, _ = _train(world, NODE, "grad", importance, **settings)
    update, _, _ = _train(world, NODE, "update", importance, **settings)
    moved = _distance(none, base, names)
    assert _distance(grad, none, names) < 0.01 * moved  # the per-row gradient scale cancels in m / sqrt(v)
    assert _distance(update, none, names) > 0.2 * moved  # a per-row learning rate does not


def test_a_run_resumed_from_a_saved_point_continues_exactly(world, tmp_path):
    """Saved mid-epoch at step 3 (accumulation 2: 4 steps per epoch, 2 epochs), then resumed by a new model,
    optimizer and schedule: the same later points and the same final weights as a run never interrupted."""
    data = copy.deepcopy(world)
    data["train"].update(max_steps=None, epochs=2, batch_size=4, grad_accum_steps=2)
    data["eval"]["every_n_steps"] = 3
    config = config_from_dict(data)
    tokenizer = load_tokenizer(config.model.path)

    def loop(resume=None):
        model = load_model(config.model.path)
        arch = Architecture.from_config(model.config)
        freeze_all_but(model, trainable_parameter_names(arch, NODE, [n for n, _ in model.named_parameters()]))
        softmask = SoftMask.for_model(model, arch, _random_importance(), "update")
        return model, training_points(config, 1e-3, model, tokenizer, softmask, 0, 1, torch.device("cpu"), resume)

    def facts(point):
        return point.eval_index, point.step, point.epoch, point.train_loss

    model, points = loop()
    whole = [facts(p) for p in points]
    assert [(i, step) for i, step, _, _ in whole] == [(1, 3), (2, 4), (3, 6), (4, 8)]
    expected = model.state_dict()
    _, points = loop()
    first = next(points)
    first.save_state(tmp_path)
    points.close()
    model, points = loop(resume=tmp_path)
    assert [facts(first)] + [facts(p) for p in points] == whole
    for name, value in model.state_dict().items():
        assert torch.equal(value, expected[name]), name


@pytest.mark.parametrize("name", ["cosine", "linear", "constant"])
def test_learning_rate_schedule_is_transformers_get_scheduler(name):
    from transformers import get_scheduler

    def rates(make):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=3e-4)
        schedule = make(optimizer)
        values = []
        for _ in range(40):
            values.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.step()
        return values

    ours = rates(lambda opt: learning_rate_schedule(name, opt, 3, 37))
    theirs = rates(lambda opt: get_scheduler(name, opt, num_warmup_steps=3, num_training_steps=37))
    assert ours == theirs  # bit for bit: the same runs, the same trees
    assert (len(set(ours)) == 1) == (name == "constant")
