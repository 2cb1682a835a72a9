"""Calibration of a toy world (`toyworld.calibrate`): the spec-floor rule on fixed curves, and full SFT
trained and scored in-process on a tiny model (the path `python -m cofitune_ray.toyworld.calibrate` runs)."""

import pytest
import torch

from cofitune_ray.config import config_from_dict
from cofitune_ray.toyworld.calibrate import (
    CurveRun,
    Point,
    best_lr,
    best_point,
    calibrate_seed,
    seed_report,
    spec_floor,
    targets,
)
from tiny import make_world

BASE = Point(0, 0.04, 0.90)


def curve(lr, *points):
    return CurveRun(lr, [Point(step, spec, vers) for step, spec, vers in points])


SLOW = curve(3e-5, (100, 0.30, 0.80), (200, 0.55, 0.70), (300, 0.92, 0.63))
FAST = curve(1e-4, (100, 0.60, 0.50), (200, 1.00, 0.40), (300, 1.00, 0.35))


def test_floor_is_the_base_plus_a_share_of_the_best_gain():
    assert spec_floor([SLOW, FAST], BASE) == pytest.approx(0.04 + 0.9 * 0.96)


def test_best_point_is_the_qualifying_point_with_most_versatility():
    assert best_point(FAST, 0.904) == (FAST.points[1], True)
    assert best_point(SLOW, 0.904) == (SLOW.points[2], True)
    assert best_point(SLOW, 0.95) == (SLOW.points[2], False)  # none qualifies: the highest Spec


def test_best_lr_prefers_a_qualifying_run_then_versatility():
    assert best_lr([FAST, SLOW], BASE) is SLOW
    never = curve(1e-5, (300, 0.50, 0.89))
    assert best_lr([never, FAST], BASE) is FAST


def test_targets_at_the_best_point():
    floor = spec_floor([SLOW, FAST], BASE)
    met = {name: ok for name, (ok, _) in targets(SLOW, BASE, floor).items()}
    assert met == {"Spec >= 0.9": True, "Vers/base in [0.5, 0.85]": True,
                   "Vers/base >= 0.7 when Spec first >= 0.5": True}  # 0.63/0.9 = 0.70; 0.70/0.9 = 0.78
    met = {name: ok for name, (ok, _) in targets(FAST, BASE, floor).items()}
    assert met == {"Spec >= 0.9": True, "Vers/base in [0.5, 0.85]": False,
                   "Vers/base >= 0.7 when Spec first >= 0.5": False}  # 0.40/0.9 = 0.44; 0.50/0.9 = 0.56


def test_calibrate_seed_trains_full_sft_and_scores_every_point(tmp_path):
    torch.set_num_threads(1)
    data = make_world(tmp_path)
    data["train"].update(max_steps=4, epochs=100)
    data["eval"].update(every_n_steps=2, at_epoch_end=False)
    config = config_from_dict(data, source="test")
    result = calibrate_seed(config, [1e-3, 3e-3])
    assert [run["lr"] for run in result["runs"]] == [1e-3, 3e-3]
    for run in result["runs"]:
        assert [p["step"] for p in run["points"]] == [2, 4]
        assert all(set(p["vers_sets"]) == {"upper"} for p in run["points"])
        assert run["eval_seconds"] > 0 and run["train_seconds"] > 0
    assert 0 <= result["base"]["vers"] <= 1 and result["base"]["step"] == 0
    report = seed_report(0, result, steps=4)
    assert "best lr" in report and report.count("MET") == 3
    if result["base"]["vers"] == 0:  # a random tiny model: no share of the base's Vers to keep, and none is met
        assert "Vers/base nan" in report and report.count("NOT MET") == 3
