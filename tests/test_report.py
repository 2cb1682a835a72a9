"""The end-of-search report, from a tree driven by the fixed score table (no Ray)."""

import json
import re
import struct
from pathlib import Path

import pytest

from cofitune_ray.outputs.report import NODE_TABLE_HEADERS, fmt_score, write_report
from cofitune_ray.core.space import load_search_space
from cofitune_ray.core.tree import SearchTree, SelectionPolicy
from score_table import PAPER_SCORES, UP_DOWN, evaluation_points, key

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
PRUNE_REASON = "vers 0.38 below best sibling's 0.48 by more than 0.05"
FAIL_REASON = "RuntimeError: worker died"
STEPS_PER_NODE, WALL_PER_NODE = 60, 12.5


def finish(tree: SearchTree, node_id: str) -> None:
    """Run one started node to its end: three evaluation points (with steps) and a cost."""
    node = tree.node(node_id)
    points = [{**p, "step": 20 * p["eval_index"]} for p in evaluation_points(node.part, PAPER_SCORES, num_evals=3)]
    for point in points:
        tree.record(node_id, point)
    tree.complete(node_id, {**points[-1], "train_steps": STEPS_PER_NODE, "wall_time_s": WALL_PER_NODE})


def run_level(tree: SearchTree, special=None) -> None:
    """Start every runnable node; `special` (node key -> callable(tree, id)) ends some nodes its own way."""
    batch = tree.runnable()
    for node in batch:
        tree.start(node.id, f"trial-{node.id}")
    for node in batch:
        (special or {}).get(node.part.key(), finish)(tree, node.id)


def prune(tree: SearchTree, node_id: str) -> None:
    """One evaluation point, then the scheduler stops the trial with a reason."""
    first = evaluation_points(tree.node(node_id).part, PAPER_SCORES, num_evals=2)[0]
    tree.record(node_id, {**first, "step": 20})
    tree.prune(node_id, PRUNE_REASON)
    tree.complete(node_id, {"train_steps": 20, "wall_time_s": 4.0})


def fail(tree: SearchTree, node_id: str) -> None:
    tree.fail(node_id, FAIL_REASON)


@pytest.fixture
def searched_tree() -> SearchTree:
    """The paper tree, beam 1, with bottom-plus pruned and top-plus failed at level 1."""
    tree = SearchTree(load_search_space(SPACES / "cofitune.yaml"), SelectionPolicy())
    special = {key(0, 0.5): prune, key(0.5, 1): fail}
    while not tree.finished:
        run_level(tree, special)
    return tree


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


def test_report_files_and_images(searched_tree, tmp_path):
    paths = write_report(searched_tree, tmp_path / "run")
    assert set(paths) == {"markdown", "html", "pareto", "curves"}
    assert all(p.is_file() and p.parent == tmp_path / "run" for p in paths.values())
    width, height = assert_png(paths["pareto"], min_kb=20)
    assert (width, height) == (900, 720)
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
    statuses = sorted(n["status"] for n in data["nodes"])
    assert statuses == ["failed"] + ["finished"] * 9 + ["pruned"]
    for node in data["nodes"]:
        row = table[node["key"]]
        score = searched_tree.node(node["id"]).score()
        assert row[0] == node["id"]
        assert row[5] == (fmt_score(score.uni) if score else "n/a")
    # a report written later from tree.json alone says the same
    restored = write_report(SearchTree.from_json(searched_tree.to_json()), tmp_path / "from_json")
    assert restored["markdown"].read_text() == paths["markdown"].read_text()
    # the HTML page holds the same rows
    page = paths["html"].read_text()
    assert all(f"<td>{n['key']}</td><td>{n['status']}</td>" in page for n in data["nodes"])


def test_tree_drawing_shows_every_node_with_status_and_reason(searched_tree, tmp_path):
    md = write_report(searched_tree, tmp_path)["markdown"].read_text()
    drawing = md.split("## Search tree", 1)[1].split("```")[1]
    lines = {line.split("── ", 1)[1].split(" ", 1)[0]: line for line in drawing.strip().splitlines()}
    assert set(lines) == set(searched_tree.nodes)
    by_key = {n.part.key(): n.id for n in searched_tree.nodes.values()}
    pruned, failed = lines[by_key[key(0, 0.5)]], lines[by_key[key(0.5, 1)]]
    assert pruned.startswith("├── n2 (0%, 50%] all modules |")
    assert f"| Spec 0.580  Vers 0.380  Uni 0.480 | 3,500 params | pruned: {PRUNE_REASON}" in pruned
    assert failed.endswith(f"| no score | n/a params | failed: {FAIL_REASON}")
    assert lines[by_key[key(0.25, 0.75)]].endswith("| 3,500 params | expanded (promising)")
    assert lines[by_key[key(0.5, 0.75)]].endswith("finished, not expanded")
    winner = lines[by_key[key(0.25, 0.5, UP_DOWN, softmask=True)]]
    assert "(25%, 50%] up+down soft-mask [winner] [Pareto] | Spec 0.760  Vers 0.800  Uni 0.780 | 500 params" in winner
    assert winner.endswith("promising (no deeper level to expand)")
    # depth 5 under middle-plus (n3) and (25%, 50%] (n5), which both have later siblings
    assert winner.startswith("│   │           └── n10 ")
    assert lines["n0"].startswith("├── n0 base model |") and lines["n0"].endswith("| 0 params | reference")


def test_summary_ranking_and_pareto(searched_tree, tmp_path):
    md = write_report(searched_tree, tmp_path)["markdown"].read_text()
    # 11 trials: 9 finished with 60 steps and 12.5 s each, 1 pruned with 20 steps and 4 s
    assert "- Nodes run: 11 (9 finished, 1 pruned, 1 failed); not expanded: 0" in md
    assert "- Total train steps: 560; total node wall time: 1m 56s" in md
    assert "- Search ended: search space exhausted" in md
    ranking = md.split("## Ranking", 1)[1].split("## Pareto front", 1)[0]
    rows = [line for line in ranking.splitlines() if line.startswith("| ")][2:]
    assert len(rows) == 9
    assert rows[0] == "| 1 | n10 (25%, 50%] up+down soft-mask [winner] [Pareto] | 0.760 | 0.800 | 0.780 | 114.3% | 500 | 60 | 12.5 s |"
    assert rows[-1].startswith("| 9 | n0 base model | 0.100 | 0.700 | 0.400 | 100.0% | 0 |")
    front = md.split("## Pareto front", 1)[1].split("## Curves", 1)[0]
    names = [line.split(" | ")[0][2:] for line in front.splitlines() if line.startswith("| n")]
    assert names == ["n1 full SFT", "n9 (25%, 50%] up+down", "n10 (25%, 50%] up+down soft-mask"]


def test_verdict_numbers_come_from_the_tree(searched_tree, tmp_path):
    md = write_report(searched_tree, tmp_path)["markdown"].read_text()
    verdict = md.split("## Verdict", 1)[1].split("##", 1)[0].strip()
    base, full, win = (searched_tree.node(i) for i in ("n0", "n1", "n10"))
    assert searched_tree.best() is win
    # the same numbers computed here from the tree's scores and parameter counts
    kept, kept_full = win.score().vers / base.score().vers, full.score().vers / base.score().vers
    assert (f"{100 * kept:.1f}", f"{100 * kept_full:.1f}") == ("114.3", "42.9")
    assert f"{100 * win.score().spec / full.score().spec:.1f}" == "84.4"
    assert f"{100 * win.trained_params / full.trained_params:.1f}" == "7.1"
    assert verdict == (
        "The winner, n10 (25%, 50%] up+down soft-mask, has Spec 0.760, Vers 0.800, Uni 0.780. "
        "The winner keeps 114.3% of the base model's versatility vs 42.9% for full SFT, "
        "reaches 84.4% of full SFT's speciality, training 500 parameters (7.1% of full SFT's). "
        "Uni: winner 0.780, full SFT 0.600, base model 0.400."
    )


def test_missing_full_sft_and_trial_budget(tmp_path):
    tree = SearchTree(load_search_space(SPACES / "cofitune.yaml"), SelectionPolicy(max_trials=4))
    run_level(tree, {"full|mask=off": fail})
    run_level(tree)
    assert tree.finished and [n.status for n in tree.at_depth(1)] == ["finished", "finished", "not_expanded"]
    paths = write_report(tree, tmp_path)
    md = paths["markdown"].read_text()
    verdict = md.split("## Verdict", 1)[1].split("##", 1)[0].strip()
    assert verdict == (
        "The winner, n3 (25%, 75%] all modules, has Spec 0.700, Vers 0.500, Uni 0.600. "
        "The winner keeps 71.4% of the base model's versatility, training 3,500 parameters. "
        "Uni: winner 0.600, base model 0.400. "
        f"Not compared: the full SFT reference is failed ({FAIL_REASON})."
    )
    table = parse_node_table(md)
    assert table[key(0.5, 1)][2:6] == ["not_expanded", "n/a", "n/a", "n/a"]
    assert table[key(0.5, 1)][9] == "not run (search ended: max_trials reached)"
    assert "- Nodes run: 4 (3 finished, 0 pruned, 1 failed); not expanded: 1" in md
    assert_png(paths["pareto"], min_kb=10)


def test_report_before_any_node_ran(tmp_path):
    tree = SearchTree(load_search_space(SPACES / "cofitune.yaml"))
    paths = write_report(tree, tmp_path, title="Nothing yet")
    md = paths["markdown"].read_text()
    assert md.startswith("# Nothing yet\n")
    assert "- Search still running" in md and "pending or running: 2" in md
    assert "- Total train steps: n/a; total node wall time: n/a" in md
    assert "No trained node has finished with a score, so there is no winner to compare yet." in md
    assert_png(paths["pareto"], min_kb=2)
    assert_png(paths["curves"], min_kb=2)


def test_short_names():
    assert tree_spec(key(0.25, 0.5, UP_DOWN, softmask=True)).describe() == "(25%, 50%] up+down soft-mask"
    assert tree_spec("full|mask=off").describe() == "full SFT"


def tree_spec(node_key: str):
    """The ModelPart of a node key of the paper tree's reachable nodes."""
    space = load_search_space(SPACES / "cofitune.yaml")
    return next(s for s in space.reachable_nodes() if s.key() == node_key)
