"""The result files and the summary of a finished search, from trees driven by score tables (no Ray)."""

import csv
import json
import time

import yaml

from cofitune_ray.outputs.results import PARETO_COLUMNS, summarise, summary_text, write_pareto_csv
from test_report import FLOOR_SCORES, searched


def test_summary_states_the_answer_the_cost_and_the_steps_saved(tmp_path):
    tree = searched()
    summary = summarise(tree, tmp_path)
    assert summary["answer"] == "a trained part of the model" and summary["objective"] == "spec_floor"
    assert summary["best"]["id"] == "n10" and summary["best"]["lr"] == 1e-4 and summary["best"]["qualifies"]
    assert summary["steps_saved"] == tree.steps_saved() > 0 and summary["runs_stopped_early"] == 11
    text = summary_text(summary)
    lines = text.splitlines()
    planned = summary["train_steps"] + summary["steps_saved"]
    assert lines[0].startswith(f"CoFiTune search done (search space exhausted): 11 nodes "
                               f"(7 finished, 3 pruned, 1 failed, 0 not run), {summary['trials']} trials; depth 5; "
                               f"{summary['train_steps']:,} train steps; "
                               f"11 run(s) stopped early saved {summary['steps_saved']:,} of {planned:,} planned steps")
    assert lines[1] == f"Answer: {summary['verdict']}"
    assert lines[1].startswith("Answer: The answer is n10 (25%, 50%] up+down")
    assert lines[2].startswith("Winner      (25%, 50%] up+down soft-mask lr 0.0001: Spec 0.820  Vers 0.800")
    assert lines[-1] == f"Results: {tmp_path}"


def test_summary_names_the_wall_time_and_the_summed_run_time_apart(tmp_path):
    tree = searched()
    summary = summarise(tree, tmp_path, wall_time_s=300.0)
    run_time = sum(n.cost()["wall_time_s"] for n in tree.nodes.values())
    assert summary["wall_time_s"] == 300.0 and summary["run_time_s"] == run_time > 0
    assert summary_text(summary).splitlines()[0].endswith(
        f"; 5.0 minutes wall time, {run_time / 60:.1f} run-minutes (the runs' times summed)")
    assert summarise(tree, tmp_path)["wall_time_s"] is None


def test_full_sft_as_the_answer_is_said_plainly(tmp_path):
    table = {k: (min(s, 0.8), v) if k != "full|mask=off" else (s, v) for k, (s, v) in FLOOR_SCORES.items()}
    summary = summarise(searched(table), tmp_path)
    assert summary["answer"] == "full SFT" and summary["best"]["node"] == "full SFT"
    assert "Answer: The answer is full SFT at lr 0.0001" in summary_text(summary)


def test_pareto_csv_lists_every_scored_node_best_first(tmp_path):
    tree = searched()
    write_pareto_csv(tree, tmp_path / "pareto.csv")
    with (tmp_path / "pareto.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == PARETO_COLUMNS
    assert [r["node_id"] for r in rows] == [n.id for n in tree.ranking()]
    assert rows[0]["qualifies"] == "True" and rows[0]["lr"] == "0.0001" and rows[0]["pareto"] == "True"
    assert {r["status"] for r in rows} == {"finished", "pruned"}


def test_best_node_yaml_names_the_answer_and_its_point(tmp_path, monkeypatch):
    from cofitune_ray.outputs import results

    tree = searched()
    # no model files in a table search
    monkeypatch.setattr(results, "export_best_model", lambda config, tree, out: None)
    monkeypatch.setattr(results, "export_recipes", lambda config, tree, out: None)
    monkeypatch.setattr(results, "write_report", lambda tree, run_dir: None)
    started = time.time()
    results.write_results(None, tree, tmp_path, started)
    best = yaml.safe_load((tmp_path / "best_node.yaml").read_text())
    assert best["answer"] == "a trained part of the model" and best["id"] == "n10"
    assert best["lr"] == 1e-4 and best["run"] == "n10-lr0.0001" and best["eval_index"] == 3
    assert best["checkpoint"] == "ckpt/" + tree.node("n10").part.key() + "/0.0001/3"
    assert (tmp_path / "summary.json").is_file() and (tmp_path / "tree.json").is_file()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert 0 <= summary["wall_time_s"] <= time.time() - started
