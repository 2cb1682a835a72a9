"""The SmolLM2 world's data (cofitune_ray/realworld/world.py): deterministic, split by item, well-formed."""

import json
import re

import pytest

from cofitune_ray.config import load_config
from cofitune_ray.realworld.world import (
    DATE_FORMS,
    MONTHS,
    ORDINALS,
    SIZES,
    arithmetic_items,
    date_items,
    write_world,
)
from cofitune_ray.training.data import read_examples
from cofitune_ray.training.evaluate import EvalSet
from conftest import PROJECT


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_world_is_a_function_of_its_seed(tmp_path):
    first, again, other = (write_world(tmp_path / name, seed) for name, seed in (("a", 0), ("b", 0), ("c", 1)))
    for name in ("speciality_train", "speciality_eval", "importance"):
        assert getattr(first, name).read_bytes() == getattr(again, name).read_bytes()
    assert first.speciality_eval.read_bytes() != other.speciality_eval.read_bytes()
    for name, path in first.versatility.items():
        assert path.read_bytes() == again.versatility[name].read_bytes()
    assert [len(rows(first.speciality_train)), len(rows(first.speciality_eval))] == [SIZES["dates_train"],
                                                                                    SIZES["dates_eval"]]


def test_dates_are_split_by_item_and_every_form_is_used():
    held_out, train = date_items(50, 3000, seed=0)
    assert not {e["output"] for e in held_out} & {e["output"] for e in train}
    assert len({e["output"] for e in held_out}) == 50
    forms = {re.sub(r"\d+", "N", e["input"]).split()[0] for e in train}
    assert len(forms) >= 5


@pytest.mark.parametrize("form", range(len(DATE_FORMS)))
def test_every_written_form_says_the_date_the_answer_encodes(form):
    text = DATE_FORMS[form](2031, 2, 3)
    assert "2031" in text
    assert any(m in text for m in ("February", "Feb.", "/2/"))
    assert "3" in text or ORDINALS[2] in text
    assert DATE_FORMS[1](1999, 12, 31) == f"the {ORDINALS[30]} of {MONTHS[11]}, 1999"
    assert DATE_FORMS[2](2000, 1, 12) == "January 12th, 2000" and DATE_FORMS[2](2000, 1, 22) == "January 22nd, 2000"


def test_multiple_choice_items_are_answerable(tmp_path):
    files = write_world(tmp_path, 0)
    for name in ("facts", "arithmetic"):
        for example in read_examples(files.versatility[name]):
            assert example.choices[example.answer] == example.output
            assert len(set(example.choices)) == 4
    for item in arithmetic_items(20, seed=3):
        a, op, b = item["instruction"].removeprefix("What is ").removesuffix("?").split()
        assert int(item["output"]) == (int(a) + int(b) if op == "+" else int(a) - int(b))
    assert EvalSet.load("prose", str(files.versatility["prose"]), "loglik").metric == "loglik"
    assert all(len(e.output.split()) == 32 for e in read_examples(files.versatility["prose"]))
    task = (files.lm_eval_tasks / "opposites.yaml").read_text()
    assert str((tmp_path / "data" / "opposites.jsonl").resolve()) in task


def test_the_shipped_config_reads_the_prepared_world(tmp_path):
    """configs/smollm2.yaml names the files `prepare` writes (checked on a world written to a copy of its layout)."""
    write_world(tmp_path / ".cache" / "realworld" / "world" / "seed-0", 0)
    (tmp_path / ".cache" / "realworld" / "smollm2-135m-instruct").mkdir()
    (tmp_path / "configs").mkdir()
    config_path = tmp_path / "configs" / "smollm2.yaml"
    config_path.write_text((PROJECT / "configs" / "smollm2.yaml").read_text())
    config = load_config(config_path)
    assert config.data.prompt_template == "chat"
    paths = [config.data.speciality_train, config.data.speciality_eval.path, *config.importance.data,
             *[v.path for v in config.data.versatility if v.path]]
    assert all(str(tmp_path) in p for p in paths)
    assert [v.name for v in config.data.versatility] == ["facts", "prose", "arithmetic", "opposites"]


def test_the_calibration_report_reads_the_curves_and_each_sets_share():
    from cofitune_ray.realworld.calibrate import report
    from cofitune_ray.toyworld.calibrate import CurveRun, Point

    base = Point(0, 0.0, 0.5, {"a": 0.5, "b": 0.5})
    slow = CurveRun(1e-4, [Point(20, 0.8, 0.5, {"a": 0.5, "b": 0.5}), Point(40, 0.9, 0.45, {"a": 0.4, "b": 0.5})])
    fast = CurveRun(3e-4, [Point(20, 0.9, 0.3, {"a": 0.1, "b": 0.5}), Point(40, 1.0, 0.2, {"a": 0.0, "b": 0.4})])
    text = report(base, [fast, slow])
    assert "spec floor 0.900" in text
    assert "lr 0.0001: best point step 40, Spec 0.900, Vers 0.450 (0.900 of base)" in text
    assert "kept per set: a 0.800 b 1.000" in text
    assert text.splitlines()[-1] == "best lr 0.0001: Spec 0.900 (MET Spec >= 0.8); Vers lost 10.0% of the base's"
