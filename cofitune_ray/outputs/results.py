"""The files a finished search leaves in its run directory, and the summary printed last.

tree.json (every node and run), pareto.csv, best_node.yaml, best_model/ (a standard HF directory),
recipes/ (the answer for axolotl and LLaMA-Factory), report.md / report.html / pareto.png /
curves.png, and summary.json (which marks the run done).
The answer is the best scored node under the objective, references included: when full SFT or the
base model is the answer, best_node.yaml, best_model/ and the summary say so.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import yaml

from cofitune_ray.config import Config
from cofitune_ray.core.layout import (
    BEST_MODEL_DIR,
    BEST_NODE_FILE,
    PARETO_FILE,
    RECIPES_DIR,
    REPORT_FILES,
    SUMMARY_FILE,
    TREE_FILE,
)
from cofitune_ray.core.tree import STOPPED_EARLY, SearchTree, Status, TreeNode
from cofitune_ray.outputs.recipes import write_recipes
from cofitune_ray.outputs.report import write_report
from cofitune_ray.outputs.verdict import verdict
from cofitune_ray.training.checkpoint import delta_names
from cofitune_ray.training.export import export_merged
from cofitune_ray.training.model import load_model, load_tokenizer, parameter_names

PARETO_COLUMNS = ("node_id", "key", "label", "status", "lr", "spec", "vers", "uni", "qualifies", "trained_params",
                  "trials", "train_steps", "pareto")


def write_pareto_csv(tree: SearchTree, path: Path) -> None:
    """Every scored node, best first: its best point's scores and lr, cost, and whether it is on the Pareto front."""
    front = {n.id for n in tree.pareto_front()}
    reference = tree.reference()
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(PARETO_COLUMNS)
        for node in tree.ranking():
            best = tree.best_point(node, reference)
            cost = node.cost()
            writer.writerow([node.id, node.part.key(), node.part.label, node.status, best.run.lr, best.score.spec,
                             best.score.vers, best.score.uni, tree.objective.qualifies(best.score, reference),
                             node.trained_params, cost["trials"], cost["train_steps"], node.id in front])


def export_best_model(config: Config, tree: SearchTree, out_dir: Path) -> Path | None:
    """The answer as a model directory: the winner's best point merged into the base model (the base model itself
    when it is the answer)."""
    best = tree.best()
    if best is None:
        return None
    tokenizer = config.model.tokenizer or config.model.path
    checkpoint = tree.best_point(best).checkpoint
    if best.part.kind == "base" or not checkpoint:
        load_model(config.model.path, config.model.dtype).save_pretrained(out_dir)
        load_tokenizer(tokenizer).save_pretrained(out_dir)
        return out_dir
    return export_merged(config.model.path, checkpoint, out_dir, tokenizer, config.model.dtype)


def answer_kind(node: TreeNode) -> str:
    """What the answer is, for a user: a trained part, full SFT, or the base model."""
    return {"base": "the base model", "full": "full SFT"}.get(node.part.kind, "a trained part of the model")


def export_recipes(config: Config, tree: SearchTree, out_dir: Path) -> Path | None:
    """The answer's recipes for axolotl and LLaMA-Factory (`outputs/recipes.py`): its trained tensors and the
    learning rate of its best run; none when the answer is the base model."""
    best = tree.best()
    point = tree.best_point(best) if best is not None else None
    if point is None or not best.part.trains or not point.checkpoint:
        return None
    write_recipes(out_dir, best.part, delta_names(point.checkpoint), parameter_names(config.model.path), point.run.lr,
                  config)
    return out_dir


def summarise(tree: SearchTree, run_dir: Path, wall_time_s: float | None = None) -> dict:
    """The search in figures and words (summary.json). Two times, each under its own name: `wall_time_s`,
    what this driver's search took from its start to its results (None when not given), and `run_time_s`,
    the runs' times summed (every attempt of every learning-rate run; runs side by side each count)."""
    nodes = list(tree.nodes.values())
    counts = {s.value: sum(n.status == s for n in nodes)
              for s in (Status.FINISHED, Status.PRUNED, Status.FAILED, Status.NOT_EXPANDED)}
    costs = [n.cost() for n in nodes]
    runs = [r for n in nodes for r in n.runs]
    best = tree.best()
    return {
        "run_dir": str(run_dir),
        "nodes": len(nodes),
        "counts": counts,
        "depth": tree.depth,
        "end_reason": tree.end_reason,
        "objective": tree.objective.name,
        "trials": sum(c["trials"] for c in costs),
        "train_steps": sum(c["train_steps"] for c in costs),
        "steps_saved": tree.steps_saved(),
        "runs_stopped_early": sum(r.status in STOPPED_EARLY for r in runs),
        "wall_time_s": wall_time_s,
        "run_time_s": sum(c["wall_time_s"] for c in costs),
        "answer": answer_kind(best) if best else None,
        "verdict": verdict(tree),
        "best": _node_summary(tree, best),
        "base": _node_summary(tree, tree.reference_node("base")),
        "full": _node_summary(tree, tree.reference_node("full")),
        "pareto": [n.part.describe() for n in tree.pareto_front()],
    }


def _node_summary(tree: SearchTree, node: TreeNode | None) -> dict | None:
    best = tree.best_point(node) if node is not None else None
    if best is None:
        return None
    return {"id": node.id, "node": node.part.describe(), "lr": best.run.lr, "spec": best.score.spec,
            "vers": best.score.vers, "uni": best.score.uni,
            "qualifies": tree.objective.qualifies(best.score, tree.reference()), "trained_params": node.trained_params}


def write_results(config: Config, tree: SearchTree, run_dir: Path, started: float | None = None) -> dict:
    """Write every output file; return the summary (also saved as summary.json, written last).

    `started`: when the search began (`time.time()`), for the summary's wall time."""
    tree.save(run_dir / TREE_FILE)
    write_pareto_csv(tree, run_dir / PARETO_FILE)
    best = tree.best()
    if best is not None:
        point = tree.best_point(best)
        best_node = {"answer": answer_kind(best), "verdict": verdict(tree), "node": best.part.to_dict(),
                     "key": best.part.key(), "id": best.id, "lr": point.run.lr, "run": point.run.id,
                     "eval_index": point.point["eval_index"], "step": point.point.get("step"),
                     "scores": _node_summary(tree, best), "checkpoint": point.checkpoint}
        (run_dir / BEST_NODE_FILE).write_text(yaml.safe_dump(best_node, sort_keys=False))
    export_best_model(config, tree, run_dir / BEST_MODEL_DIR)
    recipes = export_recipes(config, tree, run_dir / RECIPES_DIR)
    write_report(tree, run_dir)
    summary = summarise(tree, run_dir, time.time() - started if started is not None else None)
    summary["recipes"] = str(recipes) if recipes else None
    (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    return summary


def _times(summary: dict) -> str:
    """`9.4 minutes wall time, 12.0 run-minutes (the runs' times summed)`; no wall time when unknown."""
    runs = f"{summary['run_time_s'] / 60:.1f} run-minutes (the runs' times summed)"
    wall = summary.get("wall_time_s")
    return runs if wall is None else f"{wall / 60:.1f} minutes wall time, {runs}"


def summary_text(summary: dict) -> str:
    """The summary printed at the end of a search; its last line is `Results: <run directory>`."""
    c = summary["counts"]
    planned = summary["train_steps"] + summary["steps_saved"]
    saved = (f"; {summary['runs_stopped_early']} run(s) stopped early saved {summary['steps_saved']:,} of "
             f"{planned:,} planned steps ({summary['steps_saved'] / planned:.0%})") if summary["steps_saved"] else \
        "; no run was stopped early"
    lines = [
        f"CoFiTune search done ({summary['end_reason']}): {summary['nodes']} nodes "
        f"({c[Status.FINISHED]} finished, {c[Status.PRUNED]} pruned, {c[Status.FAILED]} failed, "
        f"{c[Status.NOT_EXPANDED]} not run), {summary['trials']} trials; "
        f"depth {summary['depth']}; {summary['train_steps']:,} train steps{saved}; "
        + _times(summary),
        f"Answer: {summary['verdict']}",
    ]
    for label, key in (("Winner", "best"), ("Base model", "base"), ("Full SFT", "full")):
        s = summary[key]
        if s:
            lr = f" lr {s['lr']:.3g}" if s["lr"] is not None else ""
            lines.append(f"{label:<11} {s['node']}{lr}: Spec {s['spec']:.3f}  Vers {s['vers']:.3f}  Uni {s['uni']:.3f}"
                         f"  ({s['trained_params'] or 0:,} trained parameters)")
    lines.append("Pareto front: " + "; ".join(summary["pareto"]))
    run_dir = Path(summary["run_dir"])
    lines.append(f"Report: {run_dir / REPORT_FILES['markdown']}  Best model: {run_dir / BEST_MODEL_DIR}"
                 + (f"  Recipes: {summary['recipes']}" if summary.get("recipes") else ""))
    lines.append(f"Results: {run_dir}")
    return "\n".join(lines)
