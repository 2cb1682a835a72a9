"""An lm-eval versatility set under DDP: rank 0 scores it, every rank gets the same score (2 gloo workers)."""

import json
import sys
from pathlib import Path

import pytest
import ray
import ray.train
import ray.train.torch
from ray.train.torch import TorchTrainer

from cofitune_ray.config import config_from_dict
from cofitune_ray.training.evaluate import Evaluator
from cofitune_ray.training.model import load_model, load_tokenizer
from cofitune_ray.training.runner import scaling_config
from tiny import make_world, write_jsonl, write_lm_eval_task

pytestmark = pytest.mark.ray
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def score_on_each_rank(loop_config: dict) -> None:
    """Ray Train worker: the DDP-wrapped model scored by the product's Evaluator; each rank writes its metrics."""
    config = config_from_dict(loop_config["config"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    model = ray.train.torch.prepare_model(load_model(config.model.path))
    metrics = Evaluator.from_config(config, load_tokenizer(config.model.path)).evaluate(model, rank, world_size)
    Path(loop_config["out"], f"rank{rank}.json").write_text(json.dumps(metrics))
    ray.train.report({"vers": metrics["vers"]})


def test_ranks_agree_with_a_single_process(ray_cluster, tmp_path):
    world = make_world(tmp_path / "world")
    rows = [{"instruction": "pick", "input": str(i), "output": "ab", "choices": ["ab", "cd", "ef"], "answer": i % 3}
            for i in range(9)]
    write_lm_eval_task(tmp_path / "tasks", "toy_pick", write_jsonl(tmp_path / "pick.jsonl", rows), "multiple_choice")
    world["data"]["versatility"].append({"name": "pick", "lm_eval": {"task": "toy_pick",
                                                                     "include_path": str(tmp_path / "tasks")}})
    world["scaling"]["num_workers"] = 2
    config = config_from_dict(world)
    out = tmp_path / "out"
    out.mkdir()
    TorchTrainer(score_on_each_rank, train_loop_config={"config": config.to_dict(), "out": str(out)},
                 scaling_config=scaling_config(config),
                 run_config=ray.train.RunConfig(name="harness-ddp", storage_path=str(tmp_path / "ray"))).fit()
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    single = Evaluator.from_config(config, load_tokenizer(config.model.path)).evaluate(load_model(config.model.path))
    for key in ("vers/pick/score", "vers/pick/acc,none", "vers/upper/score", "vers", "uni"):
        assert ranks[0][key] == ranks[1][key] == pytest.approx(single[key]), key
    assert ranks[0]["vers/pick/documents"] == 9
