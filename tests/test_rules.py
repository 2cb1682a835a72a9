"""The scheduler's decisions without Ray: learning-rate halving at the rung, and the stop rules."""

import itertools

import pytest
import yaml

from cofitune_ray.core.drive import drive
from cofitune_ray.core.objective import Objective
from cofitune_ray.core.rules import decide
from cofitune_ray.core.settings import LearningRates, SelectionPolicy, SettingError, StopRules
from cofitune_ray.core.space import parse_search_space
from cofitune_ray.core.tree import SearchTree
from conftest import PROJECT
from score_table import PAPER_SCORES, TableExecutor, key

SPACE = parse_search_space({
    "strategy": "grid", "references": ["base", "full"],
    "grid": [{"layer_ranges": [[0, 0.5], [0.5, 1]], "modules": ["all"]}],
})
LRS = LearningRates((1e-5, 1e-4, 1e-3))
RULES = StopRules(vers_margin=0.1, prune_after=0.5, min_evals=1)


def point(i, spec, vers, step=None, total=40):
    return {"eval_index": i, "spec": spec, "vers": vers, "uni": (spec + vers) / 2, "step": step or 10 * i,
            "total_steps": total}


def tree_after_references(objective="spec_floor", full=(0.9, 0.5)) -> SearchTree:
    """Base Spec 0.1 / Vers 0.95 and full SFT as given, at every learning rate; level 1 ready to run."""
    tree = SearchTree(SPACE, SelectionPolicy(), Objective(objective), LRS)
    for node in tree.at_depth(0):
        for run in node.runs:
            tree.start(run.id, run.id)
            tree.record(run.id, point(1, *((0.1, 0.95) if node.part.kind == "base" else full)))
            tree.complete(run.id, {"final": True})
    assert tree.depth == 1 and tree.reference_final()
    return tree


def start_all(tree):
    node = tree.at_depth(1)[0]
    for run in node.runs:
        tree.start(run.id, run.id)
    return node, node.runs


def report(tree, run, p, rules=RULES):
    tree.record(run.id, p)
    return decide(tree, run.id, rules)


def test_learning_rates_are_halved_at_the_rung_once_every_run_of_the_node_is_there():
    tree = tree_after_references()  # floor: gain 0.72, i.e. Spec 0.82
    node, (low, mid, high) = start_all(tree)
    assert report(tree, mid, point(1, 0.85, 0.80)) is None  # first at the rung: it waits
    assert report(tree, high, point(1, 0.95, 0.60)) is None  # worse than mid, but low is not there yet: it waits
    assert tree.waits_at_rung(mid.id) and tree.waits_at_rung(high.id) and not tree.rung_decided(node)
    assert report(tree, low, point(1, 0.86, 0.90)) is None  # the best: kept, and no longer waiting
    assert tree.rung_decided(node) and not tree.waits_at_rung(low.id)
    stops = {run.lr: decide(tree, run.id, RULES) for run in (mid, high)}  # what the drivers ask the waiting runs
    assert {s.status for s in stops.values()} == {"stopped"}
    assert stops[1e-3].reason.startswith("learning rate 0.001 lost to 1e-05")
    assert "Vers 0.600" in stops[1e-3].reason and "Vers 0.900" in stops[1e-3].reason
    assert report(tree, low, point(2, 0.88, 0.88)) is None


def test_every_run_of_a_reference_trains_to_the_end_and_its_best_end_point_is_the_yardstick():
    tree = SearchTree(SPACE, SelectionPolicy(), Objective("spec_floor"), LRS)
    base, full = tree.at_depth(0)
    tree.start(base.runs[0].id, "b")
    tree.record(base.runs[0].id, point(1, 0.1, 0.95))
    tree.complete(base.runs[0].id, {"final": True})
    low, mid, high = full.runs
    for run in full.runs:
        tree.start(run.id, run.id)
    # At the rung the fastest rate is far ahead; a trained node's slower runs would be stopped here.
    assert report(tree, high, point(1, 0.9, 0.3)) is None
    assert report(tree, mid, point(1, 0.6, 0.8)) is None
    assert report(tree, low, point(1, 0.3, 0.9)) is None
    # At the end of the budget the middle rate has learned as much and kept more Vers.
    assert report(tree, high, point(2, 0.92, 0.2)) is None
    assert report(tree, mid, point(2, 0.95, 0.7)) is None
    assert report(tree, low, point(2, 0.5, 0.9)) is None
    for run in full.runs:
        tree.complete(run.id, {"final": True, "train_steps": 20, "total_steps": 20})
    assert {r.status for r in full.runs} == {"finished"} and full.cost()["steps_saved"] == 0
    assert {r.id for r in tree.kept_runs(full)} == {high.id, mid.id, low.id}
    best = tree.best_point(full)
    assert best.run is mid and best.point["eval_index"] == 2 and tree.reference().full_gain == pytest.approx(0.85)


def test_the_vers_rule_stops_runs_below_the_incumbent():
    tree = tree_after_references()  # full SFT is the incumbent: Spec 0.9, Vers 0.5
    node, (low, mid, high) = start_all(tree)
    assert report(tree, low, point(1, 0.85, 0.45)) is None  # within vers_margin 0.1 of 0.5
    stop = report(tree, low, point(2, 0.85, 0.35))
    assert stop.status == "pruned"
    assert stop.reason.startswith("vers 0.350 is more than vers_margin 0.1 below the incumbent n1's 0.500")
    tree2 = tree_after_references()
    _, (low2, _, _) = start_all(tree2)
    assert report(tree2, low2, point(2, 0.95, 0.35)) is None  # higher Spec than the incumbent: may still win
    assert report(tree2, low2, point(2, 0.95, 0.35), StopRules(vers_margin=None, prune_after=None)) is None


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_a_run_waiting_at_the_rung_is_judged_by_the_rules_once_kept_in_any_order(order):
    """The rung decides first, the rules then judge the kept run: whichever run reports first, the losers are
    stopped by the comparison and the kept run pruned by the uni rule (Uni 0.55, more than 0.1 below full SFT's)."""
    rules = StopRules(vers_margin=None, prune_after=None, uni_margin=0.1)
    tree = tree_after_references("uni", full=(0.9, 0.5))
    node, runs = start_all(tree)
    points = [point(1, 0.5, 0.6), point(1, 0.6, 0.3), point(1, 0.55, 0.55)]  # Uni 0.55, 0.45, 0.55
    for i in order:
        tree.record(runs[i].id, points[i])
        for run in runs:  # what the drivers do after each point: judge it, and every run waiting at the rung
            stop = decide(tree, run.id, rules)
            if stop:
                tree.stop(run.id, stop.status, stop.reason)
    assert [r.status for r in runs] == ["pruned", "stopped", "stopped"]
    assert runs[0].stop_reason.startswith("uni 0.550 is more than uni_margin 0.1 below the incumbent")
    losses = [r.stop_reason.split(" at ")[0] for r in runs[1:]]
    assert losses == [f"learning rate {r.lr:g} lost to 1e-05" for r in runs[1:]]


def test_the_floor_rule_projects_the_best_gain_to_the_end():
    tree = tree_after_references()  # floor: gain 0.72
    node, (low, mid, high) = start_all(tree)
    assert report(tree, low, point(1, 0.30, 0.95, step=10)) is None  # 25% of the steps: too early to judge
    assert report(tree, low, point(2, 0.40, 0.95, step=20)).reason.startswith(
        "cannot reach the speciality floor: best gain 0.300 after 50% of its steps projects to 0.600")
    assert report(tree, mid, point(1, 0.50, 0.96, step=20)) is None  # gain 0.4 / 0.5 = 0.8 >= 0.72
    tree.stop(low.id, "pruned", "floor")
    assert report(tree, high, point(1, 0.85, 0.97, step=20)) is None  # qualifies already


def test_the_uni_rule_only_under_the_uni_objective():
    rules = StopRules(vers_margin=None, prune_after=None, uni_margin=0.1)
    tree = tree_after_references("uni", full=(0.9, 0.5))  # incumbent: full SFT, Uni 0.7
    node, (low, mid, high) = start_all(tree)
    assert report(tree, low, point(2, 0.5, 0.6), rules).reason.startswith("uni 0.550 is more than uni_margin 0.1 below")
    floor_tree = tree_after_references("spec_floor")
    _, (low2, _, _) = start_all(floor_tree)
    assert report(floor_tree, low2, point(2, 0.5, 0.6, step=10), rules) is None


def test_min_evals_delays_the_vers_rule():
    tree = tree_after_references()
    node, (low, mid, high) = start_all(tree)
    rules = StopRules(vers_margin=0.1, prune_after=None, min_evals=2)
    assert report(tree, low, point(1, 0.85, 0.2), rules) is None
    assert report(tree, low, point(2, 0.85, 0.2), rules).status == "pruned"


def test_invalid_rules_name_their_field():
    with pytest.raises(SettingError, match="prune_after: must be in"):
        StopRules(prune_after=0)
    with pytest.raises(SettingError, match="lr_keep: must be at least 1"):
        LearningRates((1e-4,), keep=0)


def test_stopped_runs_save_steps_and_the_same_table_gives_the_same_tree_at_any_concurrency():
    table = {"base": (0.1, 0.95), "full|mask=off": (0.9, 0.5), key(0, 0.5): (0.85, 0.7), key(0.5, 1): (0.5, 0.9)}

    def search(concurrency):
        tree = SearchTree(SPACE, SelectionPolicy(), Objective("spec_floor"), LRS)
        executor = TableExecutor(table, num_evals=4)
        drive(tree, executor, RULES, concurrency=concurrency)
        return tree, executor

    (one, ex1), (three, ex3) = search(1), search(3)
    for tree in (one, three):
        assert tree.best().part.key() == key(0, 0.5)
        kept = {n.part.key(): [r.lr for r in tree.kept_runs(n)] for n in tree.nodes.values() if n.part.trains}
        assert kept == {"full|mask=off": [1e-4, 1e-3, 1e-5], key(0, 0.5): [1e-4], key(0.5, 1): [1e-4]}
        assert tree.steps_saved() > 0
    assert decisions(one) == decisions(three)
    # Stopped runs were closed: the executor served them only up to the stop.
    for tree, executor in ((one, ex1), (three, ex3)):
        stopped = [r.id for n in tree.nodes.values() for r in n.runs if r.status in ("stopped", "pruned")]
        assert stopped and all(executor.consumed[r] < 5 for r in stopped)
        # the rung's losers waited there: they trained to the rung and no further, and count only the rest as saved
        for run in (r for n in tree.nodes.values() for r in n.runs if r.status == "stopped"):
            assert [p["eval_index"] for p in run.history] == [1] and executor.consumed[run.id] == 1
            assert run.train_steps == 10 and run.steps_saved() == 30


def decisions(tree: SearchTree) -> dict:
    """Everything a search decided and trained, without trial ids: statuses, reasons, histories, steps."""
    return {"nodes": [(n.id, n.part.key(), n.status, n.stop_reason, n.promising,
                       [(r.id, r.status, r.stop_reason, r.history, r.train_steps) for r in n.runs])
                      for n in tree.nodes.values()],
            "best": tree.best().id, "end": tree.end_reason, "saved": tree.steps_saved()}


@pytest.mark.parametrize("objective,rules", [("uni", StopRules(vers_margin=0.1, prune_after=None)),
                                             ("spec_floor", StopRules(vers_margin=0.05, prune_after=0.5))])
def test_the_paper_search_gives_the_same_tree_at_concurrency_1_2_and_3(objective, rules):
    """The vers rule and the rung decide on levels that have ended and on every rung point of a node, never on
    which runs happened to report first: the whole tree is the same whatever the concurrency."""
    space = parse_search_space(yaml.safe_load((PROJECT / "search_spaces" / "cofitune.yaml").read_text()))
    trees = []
    for concurrency in (1, 2, 3):
        tree = SearchTree(space, SelectionPolicy(), Objective(objective), LearningRates((3e-5, 1e-4, 3e-4)))
        trees.append(drive(tree, TableExecutor(PAPER_SCORES, num_evals=3, default=(0.3, 0.3)), rules,
                           concurrency=concurrency))
    assert decisions(trees[0]) == decisions(trees[1]) == decisions(trees[2])
    runs = [r for n in trees[0].nodes.values() for r in n.runs]
    assert {r.status for r in runs} >= {"finished", "stopped"} and trees[0].depth >= 2


def test_a_spectrum_reference_is_halved_like_a_trained_node_only_full_sft_keeps_every_run():
    space = parse_search_space({"strategy": "grid", "references": ["base", "full", {"snr": 25}],
                                "grid": [{"layer_ranges": [[0, 0.5]], "modules": ["all"]}]})
    tree = SearchTree(space, SelectionPolicy(), Objective("spec_floor"), LearningRates((1e-4, 1e-3)))
    base, full, snr = tree.at_depth(0)
    assert snr.part.kind == "snr" and snr.is_reference and not snr.is_yardstick and full.is_yardstick
    for run in [base.runs[0], *full.runs, *snr.runs]:
        tree.start(run.id, run.id)
    assert report(tree, base.runs[0], point(1, 0.1, 0.95)) is None
    assert report(tree, full.runs[0], point(1, 0.9, 0.5)) is None
    assert report(tree, full.runs[1], point(1, 0.9, 0.2)) is None  # worse at the rung, trains on
    assert report(tree, snr.runs[0], point(1, 0.85, 0.7)) is None
    # full SFT is still training, so the reference (its best Spec) may change: both runs wait at the rung
    assert report(tree, snr.runs[1], point(1, 0.85, 0.6)) is None
    assert tree.waits_at_rung(snr.runs[0].id) and tree.waits_at_rung(snr.runs[1].id)
    for run in [base.runs[0], *full.runs]:
        tree.complete(run.id, {"final": True})
    assert not tree.waits_at_rung(snr.runs[0].id) and decide(tree, snr.runs[0].id, RULES) is None
    stop = decide(tree, snr.runs[1].id, RULES)
    assert stop.status == "stopped" and stop.reason.startswith("learning rate 0.001 lost to 0.0001")


def test_the_rung_stops_the_fast_rate_when_the_slow_one_projects_to_the_floor_with_more_vers():
    tree = tree_after_references(full=(0.9, 0.5))  # floor: gain 0.72
    node, (low, mid, high) = start_all(tree)
    # mid has learned less by the rung (step 20 of 40) and kept more Vers: 0.4 / 0.5 = 0.8 reaches the floor.
    assert report(tree, high, point(1, 0.90, 0.40, step=20)) is None  # qualifies already
    assert report(tree, mid, point(1, 0.50, 0.80, step=20)) is None
    # low projects below the floor (0.16 / 0.5 = 0.32), so its extra Vers does not count.
    assert report(tree, low, point(1, 0.26, 0.95, step=20)).reason.startswith("learning rate 1e-05 lost to 0.0001")
    stop = decide(tree, high.id, RULES)
    assert stop.status == "stopped" and stop.reason.startswith("learning rate 0.001 lost to 0.0001")
