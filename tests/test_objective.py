"""The search objective on fixed tables: qualification, ranking, the winner (references included)."""

import pytest

from cofitune_ray.core.drive import drive
from cofitune_ray.core.objective import Objective, Reference, Score, reference_from
from cofitune_ray.core.settings import LearningRates, SelectionPolicy, SettingError, StopRules
from cofitune_ray.core.space import parse_search_space
from cofitune_ray.core.tree import SearchTree
from score_table import TableExecutor, key

FLOOR = Objective("spec_floor", 0.9)
REF = Reference(base_spec=0.1, full_gain=0.8)  # base Spec 0.1, full SFT reached 0.9: the floor is a gain of 0.72


def test_qualification_is_a_share_of_full_sfts_gain():
    assert FLOOR.floor_gain(REF) == pytest.approx(0.72)
    assert FLOOR.qualifies(Score(0.82, 0.5, 0.66), REF)  # gain 0.72: exactly at the floor
    assert not FLOOR.qualifies(Score(0.81, 0.9, 0.85), REF)
    assert not FLOOR.qualifies(Score(0.9, 0.5, 0.7), Reference(0.1, None))  # full SFT not evaluated yet
    assert not FLOOR.qualifies(Score(0.9, 0.5, 0.7), Reference(0.1, 0.0))  # full SFT gained nothing: no floor
    assert Objective("spec_floor", 0.5).qualifies(Score(0.5, 0.5, 0.5), REF)


def test_points_rank_qualifying_by_vers_then_the_rest_by_gain():
    points = {
        "keeps most": Score(0.85, 0.80, 0.825),
        "learns most": Score(0.95, 0.60, 0.775),
        "almost": Score(0.80, 0.95, 0.875),  # highest Uni, but below the floor
        "little": Score(0.40, 0.97, 0.685),
        "unchanged": Score(0.10, 0.99, 0.545),
    }
    ranked = sorted(points, key=lambda name: FLOOR.value(points[name], REF), reverse=True)
    assert ranked == ["keeps most", "learns most", "almost", "little", "unchanged"]
    assert FLOOR.value(points["keeps most"], REF) == (1, 0.80)
    assert FLOOR.value(points["little"], REF) == (0, pytest.approx(0.30))
    by_scalar = sorted(points, key=lambda name: FLOOR.scalar(points[name], REF), reverse=True)
    assert by_scalar == ranked
    uni = Objective("uni")
    assert sorted(points, key=lambda name: uni.value(points[name], REF), reverse=True)[0] == "almost"


def test_beats_and_explanations():
    good, worse = Score(0.85, 0.80, 0.825), Score(0.84, 0.75, 0.795)
    assert FLOOR.beats(good, worse, REF) and FLOOR.beats(good, worse, REF, margin=0.04)
    assert not FLOOR.beats(good, worse, REF, margin=0.05)
    assert FLOOR.beats(good, Score(0.5, 0.99, 0.745), REF, margin=0.5)  # qualifying beats non-qualifying
    assert FLOOR.explain(good, REF) == "qualifies: 94% of full SFT's speciality gain, Vers 0.800"
    assert FLOOR.explain(Score(0.5, 0.9, 0.7), REF) == "below the floor: 50% of full SFT's speciality gain (needs 90%)"
    assert FLOOR.explain(Score(0.5, 0.9, 0.7), Reference(0.1, 0.0)).startswith("speciality gain +0.400")


def test_reference_from_the_base_and_every_full_sft_point():
    assert reference_from(0.1, [0.5, 0.9, 0.7]) == Reference(0.1, pytest.approx(0.8))
    assert reference_from(None, [0.5]) == Reference(0.0, 0.5)
    assert reference_from(0.2, []) == Reference(0.2, None)


def test_invalid_settings_name_their_field():
    with pytest.raises(SettingError, match="spec_floor: must be in"):
        Objective("spec_floor", 1.5)
    with pytest.raises(SettingError, match="objective: 'best' is not one of spec_floor, uni"):
        Objective("best")


SPACE = parse_search_space({
    "strategy": "grid", "references": ["base", "full"],
    "grid": [{"layer_ranges": [[0, 0.5], [0.5, 1], [0.25, 0.5]], "modules": ["all"]}],
})


def grid_winner(table: dict, objective: Objective = FLOOR) -> tuple[str, SearchTree]:
    tree = SearchTree(SPACE, SelectionPolicy(), objective, LearningRates((1e-4,)))
    drive(tree, TableExecutor(table, num_evals=1), StopRules(vers_margin=None, prune_after=None))
    return tree.best().part.key(), tree


def test_the_winner_qualifies_and_keeps_the_most_vers():
    table = {"base": (0.1, 0.95), "full|mask=off": (0.9, 0.60), key(0, 0.5): (0.85, 0.70),
             key(0.5, 1): (0.70, 0.92), key(0.25, 0.5): (0.83, 0.75)}
    winner, tree = grid_winner(table)
    assert winner == key(0.25, 0.5)  # gain 0.73 >= 0.72; Vers 0.75 beats (0, 0.5]'s 0.70 and full SFT's 0.60
    assert [n.part.key() for n in tree.ranking()] == [key(0.25, 0.5), key(0, 0.5), "full|mask=off", key(0.5, 1), "base"]
    assert grid_winner(table, Objective("uni"))[0] == key(0.5, 1)  # Uni (0.81) would pick a node below the floor


def test_full_sft_wins_when_no_part_keeps_more_vers_at_the_floor():
    table = {"base": (0.1, 0.95), "full|mask=off": (0.9, 0.60), key(0, 0.5): (0.85, 0.55),
             key(0.5, 1): (0.60, 0.90), key(0.25, 0.5): (0.70, 0.85)}
    assert grid_winner(table)[0] == "full|mask=off"


def test_the_base_model_wins_only_when_no_trained_node_gains_speciality():
    nothing = {"base": (0.1, 0.95), "full|mask=off": (0.1, 0.50), key(0, 0.5): (0.1, 0.90),
               key(0.5, 1): (0.05, 0.93), key(0.25, 0.5): (0.1, 0.94)}
    winner, tree = grid_winner(nothing)
    assert winner == "base"  # ties at gain 0: fewer trained parameters
    some = dict(nothing, **{key(0.5, 1): (0.12, 0.40)})
    assert grid_winner(some)[0] == key(0.5, 1)  # full SFT gained nothing, but this node did: it wins by gain


def test_the_rung_projects_the_gain_to_the_end_of_the_run_then_keeps_vers():
    # The demo's node (0%, 50%] all modules at half of its 300 steps (calibrated world, seed 0):
    # lr 3e-4 Spec 0.80 Vers 0.711, lr 1e-3 Spec 0.96 Vers 0.411; at step 300 3e-4 reached Spec 0.96, Vers 0.772.
    floor = Objective("spec_floor")
    ref = Reference(base_spec=0.04, full_gain=0.96)  # floor: gain 0.864
    slow, fast = Score(0.80, 0.711, 0.0), Score(0.96, 0.411, 0.0)
    assert floor.value(fast, ref) > floor.value(slow, ref)  # judged on the gain so far, the fast rate wins
    assert floor.rung_value(slow, ref, 0.5) == (1, 0.711)  # 0.76 / 0.5, capped at 0.96: projects to qualify
    assert floor.rung_value(fast, ref, 0.5) == (1, 0.411)
    assert floor.rung_value(Score(0.24, 0.9, 0.0), ref, 0.5) == (0, pytest.approx(0.4))  # projects below the floor
    assert floor.rung_value(slow, ref, 1.0) == floor.value(slow, ref)  # at the end: nothing to project
    assert floor.rung_value(slow, Reference(0.04, None), 0.5) == (0, pytest.approx(0.96))  # no floor yet
    uni = Objective("uni")
    assert uni.rung_value(slow, ref, 0.5) == uni.value(slow, ref)
