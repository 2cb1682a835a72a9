"""lm-evaluation-harness tasks as versatility sets, offline: local task YAMLs over local JSONL files."""

import json

import pytest
import torch
import torch.nn.functional as F
import yaml

from cofitune_ray.config import PROJECT_ROOT, LmEvalTaskConfig
from cofitune_ray.training.data import DataError
from cofitune_ray.training.evaluate import EvalSet, score_set
from cofitune_ray.training.harness import HarnessTask
from cofitune_ray.training.model import load_model, load_tokenizer
from tiny import make_model, make_tokenizer, write_jsonl, write_lm_eval_task

pytestmark = pytest.mark.slow  # lm-eval's task registry: not in the fast subset

TOY_MODEL = PROJECT_ROOT / "assets" / "toyworld" / "cliff" / "seed-0" / "model"
TOY_UPPER = PROJECT_ROOT / "assets" / "toyworld" / "cliff" / "seed-0" / "data" / "upper" / "eval.jsonl"
CHOICES = [["ab", "cd", "ef"], ["gh", "ij", "kl"], ["mn", "op", "qr"], ["st", "uv", "wx"]]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny")
    make_model(directory, "llama", layers=2)
    make_tokenizer(directory)
    return directory


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """A folder of task YAMLs: a 12-question multiple-choice task and a generation task over toy `upper`."""
    root = tmp_path_factory.mktemp("tasks")
    rows = [{"instruction": "pick", "input": str(i), "output": CHOICES[i % 4][i % 3], "choices": CHOICES[i % 4],
             "answer": i % 3} for i in range(12)]
    write_lm_eval_task(root / "tasks", "toy_pick", write_jsonl(root / "pick.jsonl", rows), "multiple_choice")
    write_lm_eval_task(root / "tasks", "toy_upper", TOY_UPPER, "generate_until", max_gen_toks=8)
    write_lm_eval_task(root / "tasks", "toy_pick_few", write_jsonl(root / "few.jsonl", rows[:5]), "multiple_choice")
    (root / "tasks" / "toy_picks.yaml").write_text(yaml.safe_dump({
        "group": "toy_picks", "task": ["toy_pick", "toy_pick_few"],
        "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}]}))
    return root


def _task(tasks, name, **settings):
    return HarnessTask.from_config(name, LmEvalTaskConfig(include_path=str(tasks / "tasks"), **settings),
                                   str(TOY_MODEL), default_limit=None, key="data.versatility[1].lm_eval")


@torch.no_grad()
def _choice_accuracy(model, tokenizer, rows) -> float:
    """lm-eval's `acc`, computed here: the choice with the highest summed log-probability after the prompt."""
    correct = 0
    for row in rows:
        context = f"{row['instruction']}:{row['input']}="
        context_ids = tokenizer(context)["input_ids"]
        sums = []
        for choice in row["choices"]:
            ids = tokenizer(context + choice)["input_ids"]
            logprobs = F.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
            sums.append(sum(logprobs[i - 1, ids[i]].item() for i in range(len(context_ids), len(ids))))
        correct += max(range(len(sums)), key=sums.__getitem__) == row["answer"]
    return correct / len(rows)


def test_multiple_choice_task_scores_the_in_memory_model(tiny_dir, tasks):
    model, tokenizer = load_model(str(tiny_dir)), load_tokenizer(str(tiny_dir))
    task = HarnessTask.from_config("pick", LmEvalTaskConfig(task="toy_pick", include_path=str(tasks / "tasks"),
                                                            metric="acc"), str(tiny_dir), None, "k")
    assert task.load() == 12
    rows = [json.loads(line) for line in (tasks / "pick.jsonl").read_text().splitlines()]
    model.train()
    scores = task.score(model, batch_size=5)
    assert scores["score"] == scores["acc,none"] == pytest.approx(_choice_accuracy(model.eval(), tokenizer, rows))
    # Changed in memory only (not on disk): with zero logits every choice ties and lm-eval picks the
    # first one, so the accuracy is the share of questions whose answer is choice 0.
    with torch.no_grad():
        model.lm_head.weight.zero_()
    model.train()
    assert task.score(model, batch_size=5)["score"] == pytest.approx(4 / 12)
    assert model.training  # the training loop's mode is restored


def test_group_scores_its_aggregate(tiny_dir, tasks):
    model = load_model(str(tiny_dir))
    scores = {name: HarnessTask.from_config(name, LmEvalTaskConfig(task=name, include_path=str(tasks / "tasks")),
                                            str(tiny_dir), None, "k").score(model, batch_size=8)["score"]
              for name in ("toy_pick", "toy_pick_few", "toy_picks")}
    assert scores["toy_picks"] == pytest.approx((12 * scores["toy_pick"] + 5 * scores["toy_pick_few"]) / 17)
    with pytest.raises(DataError, match=r"'acc_norm' is not a metric of task 'toy_picks' \(it has acc\)"):
        _task(tasks, "picks", task="toy_picks", metric="acc_norm").load()


def test_generation_task_agrees_with_our_exact_match(tasks):
    model = load_model(str(TOY_MODEL))
    task = _task(tasks, "upper", task="toy_upper", limit=24, metric="exact_match,none")
    scores = task.score(model, batch_size=24)
    ours = score_set(model, load_tokenizer(str(TOY_MODEL)), "compact", EvalSet.load("upper", str(TOY_UPPER), limit=24),
                     batch_size=24, max_new_tokens=8)
    assert scores["documents"] == 24
    assert scores["score"] == scores["exact_match,none"] == pytest.approx(ours["exact_match"])
    assert 0.5 < scores["score"] <= 1.0  # the toy base model knows `upper`


def test_the_default_metric_is_the_task_s_first(tasks):
    task = _task(tasks, "pick", task="toy_pick")
    task.load()
    assert task._metric == "acc"


def test_unknown_task_names_the_key(tasks):
    with pytest.raises(DataError, match=r"data.versatility\[1\].lm_eval.task: 'toy_nope' is not a task"):
        _task(tasks, "nope", task="toy_nope").load()


def test_unknown_metric_lists_the_task_s_metrics(tasks):
    with pytest.raises(DataError,
                       match=r"lm_eval.metric: 'f1' is not a metric of task 'toy_pick' \(it has acc, acc_norm\)"):
        _task(tasks, "pick", task="toy_pick", metric="f1").load()


def test_lower_is_better_metric_is_refused(tasks, tmp_path):
    text = (tasks / "tasks" / "toy_pick.yaml").read_text()
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "toy_pick_low.yaml").write_text(
        text.replace("task: toy_pick", "task: toy_pick_low")
        .replace("higher_is_better: true", "higher_is_better: false"))
    task = HarnessTask.from_config("low", LmEvalTaskConfig(task="toy_pick_low", include_path=str(folder)),
                                   str(TOY_MODEL), None, "k")
    with pytest.raises(DataError, match="'acc' is lower-is-better"):
        task.load()


def test_missing_data_file_names_the_key(tasks, tmp_path):
    write_lm_eval_task(tmp_path / "tasks", "toy_gone", tmp_path / "gone.jsonl")
    task = HarnessTask.from_config("gone", LmEvalTaskConfig(task="toy_gone", include_path=str(tmp_path / "tasks")),
                                   str(TOY_MODEL), None, "data.versatility[0].lm_eval")
    with pytest.raises(DataError, match=r"data.versatility\[0\].lm_eval.task: cannot load lm-eval task 'toy_gone'"):
        task.load()
