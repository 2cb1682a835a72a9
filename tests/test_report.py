"""The end-of-search report, from trees driven in-process by fixed score tables (no Ray)."""

import json
import re
import struct
from pathlib import Path

import pytest

from cofitune_ray.core.drive import drive
from cofitune_ray.core.node import ATTENTION_MODULES, FFN_MODULES
from cofitune_ray.core.objective import Objective
from cofitune_ray.core.settings import LearningRates, SelectionPolicy, StopRules
from cofitune_ray.core.space import load_search_space
from cofitune_ray.core.tree import SearchTree
from cofitune_ray.outputs.document import fmt_score
from cofitune_ray.outputs.report import NODE_TABLE_HEADERS, write_report
from cofitune_ray.outputs.verdict import verdict
from score_table import UP_DOWN, TableExecutor, key

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
FAIL_REASON = "RuntimeError: worker died"
RULES = StopRules(vers_margin=None, prune_after=0.5)

#: A story for spec_floor: full SFT reaches Spec 0.9 (gain 0.8 over the base model, floor 0.72),
#: middle-plus qualifies, and each level finds a qualifying child with more Vers.
FLOOR_SCORES = {
    "base": (0.10, 0.70),
    "full|mask=off": (0.90, 0.30),
    key(0, 0.5): (0.60, 0.40),
    key(0.25, 0.75): (0.85, 0.50),
    key(0.5, 1): (0.50, 0.30),
    key(0.25, 0.5): (0.84, 0.60),
    key(0.5, 0.75): (0.60, 0.50),
    key(0.25, 0.5, ATTENTION_MODULES): (0.55, 0.65),
    key(0.25, 0.5, FFN_MODULES): (0.83, 0.65),
    key(0.25, 0.5, UP_DOWN): (0.83, 0.72),
    key(0.25, 0.5, UP_DOWN, softmask=True): (0.82, 0.80),
}


class FailingExecutor(TableExecutor):
    """The table, except that the runs of the nodes in `failing` raise before their first point."""

    def __init__(self, table, failing=(), **options):
        super().__init__(table, **options)
        self.failing = set(failing)

    def run(self, node, run):
        if node.part.key() in self.failing:
            raise RuntimeError("worker died")
        yield from super().run(node, run)


def searched(table=FLOOR_SCORES, failing=(key(0.5, 1),), objective="spec_floor", **policy) -> SearchTree:
    tree = SearchTree(load_search_space(SPACES / "cofitune.yaml"), SelectionPolicy(**policy), Objective(objective),
                      LearningRates((1e-4, 3e-4)))
    drive(tree, FailingExecutor(table, failing, num_evals=3), RULES)
    return tree


@pytest.fixture(scope="module")
def searched_tree() -> SearchTree:
    """The paper tree under spec_floor at two learning rates: top-plus fails, some nodes are pruned."""
    return searched()


def parse_node_table(markdown: str) -> dict[str, list[str]]:
    """The all-nodes table of report.md as {key: row cells}, undoing the `\\|` escapes."""
    section = markdown.split("## All nodes", 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    cells = [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows]
    assert tuple(cells[0]) == NODE_TABLE_HEADERS
    return {row[1]: row for row in cells[2:]}


def assert_png(path: Path, min_kb: int) -> tuple[int, int]:
    """The file is a PNG of at least `min_kb` KB; returns its (width, height)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert len(data) > min_kb * 1024
    return struct.unpack(">II", data[16:24])


def test_the_story_runs_as_intended(searched_tree):
    tree = searched_tree
    assert tree.end_reason == "search space exhausted"
    assert tree.best().part.key() == key(0.25, 0.5, UP_DOWN, softmask=True)
    statuses = {n.part.key(): n.status for n in tree.nodes.values()}
    assert statuses[key(0.5, 1)] == "failed" and statuses[key(0, 0.5)] == "pruned"
    # every trained node's second learning rate lost at the first evaluation point (less Vers, same gain),
    # except full SFT's: a reference's runs all train to the end
    assert {r.status for n in tree.nodes.values() if n.part.trains and n.status != "failed" and not n.is_reference
            for r in n.runs[1:]} == {"stopped"}
    assert {r.status for r in tree.reference_node("full").runs} == {"finished"}


def test_report_files_and_images(searched_tree, tmp_path):
    paths = write_report(searched_tree, tmp_path / "run")
    assert set(paths) == {"markdown", "html", "pareto", "curves"}
    assert all(p.is_file() and p.parent == tmp_path / "run" for p in paths.values())
    assert assert_png(paths["pareto"], min_kb=20) == (900, 720)
    width, height = assert_png(paths["curves"], min_kb=40)
    assert width > 1000 and height > 600  # 10 nodes with curves: 4 columns, 3 rows
    md = paths["markdown"].read_text()
    assert md.startswith("# CoFiTune search report: cofitune.yaml\n")
    assert "![Spec vs Vers" in md and "(pareto.png)" in md and "(curves.png)" in md
    page = paths["html"].read_text()
    assert page.startswith("<!DOCTYPE html>") and '<img src="pareto.png"' in page and '<img src="curves.png"' in page


def test_report_agrees_with_tree_json(searched_tree, tmp_path):
    paths = write_report(searched_tree, tmp_path)
    data = json.loads(searched_tree.to_json())
    table = parse_node_table(paths["markdown"].read_text())
    assert {k: row[2] for k, row in table.items()} == {n["key"]: n["status"] for n in data["nodes"]}
    for node in data["nodes"]:
        row = table[node["key"]]
        assert row[0] == node["id"]
        assert row[5] == (fmt_score(node["score"]["uni"]) if node["score"] else "n/a")
        assert row[8] == f"{node['cost']['train_steps']:,}" and row[9] == f"{node['cost']['steps_saved']:,}"
    restored = write_report(SearchTree.from_json(searched_tree.to_json()), tmp_path / "from_json")
    assert restored["markdown"].read_text() == paths["markdown"].read_text()
    page = paths["html"].read_text()
    assert all(f"<td>{n['key']}</td><td>{n['status']}</td>" in page for n in data["nodes"])


def test_tree_drawing_shows_every_node_with_status_reason_and_learning_rate(searched_tree, tmp_path):
    md = write_report(searched_tree, tmp_path)["markdown"].read_text()
    drawing = md.split("## Search tree", 1)[1].split("```")[1]
    lines = {line.split("── ", 1)[1].split(" ", 1)[0]: line for line in drawing.strip().splitlines()}
    assert set(lines) == set(searched_tree.nodes)
    by_key = {n.part.key(): n.id for n in searched_tree.nodes.values()}
    pruned, failed = lines[by_key[key(0, 0.5)]], lines[by_key[key(0.5, 1)]]
    assert pruned.startswith("├── n2 (0%, 50%] all modules |")
    assert ("| 3,500 params | pruned: cannot reach the speciality floor: best gain 0.400 after 67% of its steps"
            in pruned)
    assert failed.endswith(f"| no score | n/a params | failed: {FAIL_REASON}")
    assert lines[by_key[key(0.25, 0.75)]].endswith("| 3,500 params | expanded (promising)")
    winner = lines[by_key[key(0.25, 0.5, UP_DOWN, softmask=True)]]
    assert ("(25%, 50%] up+down soft-mask [winner] [Pareto] | Spec 0.820  Vers 0.800  Uni 0.810 at lr 0.0001 "
            "| 500 params" in winner)
    assert winner.endswith("promising (no deeper level to expand)")
    assert lines["n0"].startswith("├── n0 base model |") and lines["n0"].endswith("| 0 params | reference")


def test_summary_ranking_and_pareto(searched_tree, tmp_path):
    md = write_report(searched_tree, tmp_path)["markdown"].read_text()
    costs = [n.cost() for n in searched_tree.nodes.values()]
    assert ("- Objective: spec_floor at spec_floor 0.9; learning rates 0.0001, 0.0003 "
            "(best 1 kept at the first evaluation point)" in md)
    assert "- Nodes run: 11 (7 finished, 3 pruned, 1 failed); not expanded: 0" in md
    assert (f"- Trials (learning-rate runs): {sum(c['trials'] for c in costs)}; "
            f"train steps: {sum(c['train_steps'] for c in costs):,}; "
            f"steps saved by early stops: {searched_tree.steps_saved():,};") in md
    ranking = md.split("## Ranking", 1)[1].split("## Pareto front", 1)[0]
    rows = [line for line in ranking.splitlines() if line.startswith("| ")][2:]
    assert rows[0].startswith("| 1 | n10 (25%, 50%] up+down soft-mask [winner] [Pareto] "
                              "| 0.0001 | 0.820 | 0.800 | 0.810 | "
                              "qualifies: 90% of full SFT's speciality gain, Vers 0.800 | 114.3% | 500 | 2 |")
    assert rows[-1].startswith("| 10 | n0 base model | n/a | 0.100 | 0.700 | 0.400 | below the floor: 0% of full SFT's")
    front = md.split("## Pareto front", 1)[1].split("## Curves", 1)[0]
    names = [line.split(" | ")[0][2:] for line in front.splitlines() if line.startswith("| n")]
    assert names == ["n1 full SFT", "n3 (25%, 75%] all modules", "n5 (25%, 50%] all modules", "n9 (25%, 50%] up+down",
                     "n10 (25%, 50%] up+down soft-mask"]  # FFN (0.83, 0.65) is dominated by up+down (0.83, 0.72)


def test_verdict_for_a_trained_part():
    tree = searched()
    assert verdict(tree) == (
        "The answer is n10 (25%, 50%] up+down soft-mask at lr 0.0001: qualifies: 90% of full SFT's speciality gain, "
        "Vers 0.800. It keeps Vers 0.800 against full SFT's 0.300 (+0.500), 114.3% of the base model's versatility, "
        "training 500 parameters (7.1% of full SFT's)."
    )


def test_verdict_when_full_sft_is_the_answer():
    table = {k: (min(s, 0.8), v) if k != "full|mask=off" else (s, v) for k, (s, v) in FLOOR_SCORES.items()}
    tree = searched(table)
    assert tree.best().part.kind == "full"
    assert verdict(tree) == (
        "The answer is full SFT at lr 0.0001 (qualifies: 100% of full SFT's speciality gain, Vers 0.300): "
        "no trained part reached the speciality floor with more versatility. The closest trained part, "
        "n5 (25%, 50%] all modules: below the floor: 88% of full SFT's speciality gain (needs 90%)."
    )


def test_verdict_when_nothing_gains_speciality():
    table = {k: (0.10, v) for k, (_, v) in FLOOR_SCORES.items()}
    tree = searched(table, failing=())
    assert tree.best().part.kind == "base"
    assert verdict(tree) == "The answer is the base model: no trained node gained speciality on the speciality set."


def test_missing_full_sft_and_trial_budget(tmp_path):
    tree = searched(failing=("full|mask=off",), objective="uni", max_trials=5)  # base, 2 full SFT runs, 2 runs
    assert tree.finished and [n.status for n in tree.at_depth(1)] == ["finished", "not_expanded", "not_expanded"]
    paths = write_report(tree, tmp_path)
    md = paths["markdown"].read_text()
    verdict_text = md.split("## Verdict", 1)[1].split("##", 1)[0].strip()
    assert verdict_text == (
        "The answer is n2 (0%, 50%] all modules at lr 0.0001: Uni 0.500. It keeps 57.1% of the base model's "
        f"versatility, training 3,500 parameters. Not compared: the full SFT reference is failed ({FAIL_REASON})."
    )
    table = parse_node_table(md)
    assert table[key(0.5, 1)][2:6] == ["not_expanded", "n/a", "n/a", "n/a"]
    assert table[key(0.5, 1)][11] == "not run (search ended: max_trials reached)"
    assert "- Nodes run: 3 (2 finished, 0 pruned, 1 failed); not expanded: 2" in md
    assert_png(paths["pareto"], min_kb=10)


def test_report_before_any_node_ran(tmp_path):
    tree = SearchTree(load_search_space(SPACES / "cofitune.yaml"))
    paths = write_report(tree, tmp_path, title="Nothing yet")
    md = paths["markdown"].read_text()
    assert md.startswith("# Nothing yet\n")
    assert "- Search still running" in md and "pending or running: 2" in md
    assert "- Trials (learning-rate runs): 0; train steps: 0; steps saved by early stops: 0;" in md
    assert "No node has ended with a score, so there is no answer yet." in md
    assert_png(paths["pareto"], min_kb=2)
    assert_png(paths["curves"], min_kb=2)


class PerSetExecutor(TableExecutor):
    """The table, with each point's Spec as the speciality set's score and its Vers split over two sets."""

    def run(self, node, run):
        for result in super().run(node, run):
            if "eval_index" in result:
                v = result["vers"]
                result = {**result, "spec/score": result["spec"], "vers/copy/score": v - 0.05,
                          "vers/arc-easy/score": v + 0.05}
            yield result


def test_scores_per_set_at_each_node_s_best_point(tmp_path):
    tree = SearchTree(load_search_space(SPACES / "smoke.yaml"), objective=Objective("uni"))
    drive(tree, PerSetExecutor({}, default=(0.5, 0.4)), RULES)
    markdown = write_report(tree, tmp_path)["markdown"].read_text()
    section = markdown.split("## Scores per set", 1)[1].split("## ", 1)[0]
    assert "| Node | speciality | copy | arc-easy |" in section
    for node in tree.ranking():
        best = tree.best_point(node).point
        row = (f"| {node.id} {node.part.describe()} | {fmt_score(best['spec'])} | {fmt_score(best['vers'] - 0.05)} | "
               f"{fmt_score(best['vers'] + 0.05)} |")
        assert row in section
