"""The files a finished search leaves in its run directory, and the summary printed last.

tree.json (every node), pareto.csv, best_node.yaml, best_model/ (a standard HF directory),
report.md / report.html / pareto.png / curves.png, and summary.json (which marks the run done).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml

from cofitune_ray.config import Config
from cofitune_ray.training.export import export_merged
from cofitune_ray.training.model import load_model, load_tokenizer
from cofitune_ray.outputs.report import write_report
from cofitune_ray.core.tree import SearchTree

SUMMARY_FILE = "summary.json"


def write_pareto_csv(tree: SearchTree, path: Path) -> None:
    front = {n.id for n in tree.pareto_front()}
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["node_id", "key", "label", "status", "spec", "vers", "uni", "trained_params", "pareto"])
        for node in tree.ranking():
            score = node.score()
            writer.writerow([node.id, node.part.key(), node.part.label, node.status, score.spec, score.vers,
                             score.uni, node.trained_params, node.id in front])


def export_best_model(config: Config, tree: SearchTree, out_dir: Path) -> Path | None:
    """The winner merged into the base model (or the base model itself if nothing beat it)."""
    best = tree.best()
    if best is None:
        return None
    tokenizer = config.model.tokenizer or config.model.path
    if best.part.kind == "base" or not best.checkpoint:
        load_model(config.model.path, config.model.dtype).save_pretrained(out_dir)
        load_tokenizer(tokenizer).save_pretrained(out_dir)
        return out_dir
    return export_merged(config.model.path, best.checkpoint, out_dir, tokenizer, config.model.dtype)


def summarise(tree: SearchTree, run_dir: Path) -> dict:
    nodes = list(tree.nodes.values())
    counts = {s: sum(n.status == s for n in nodes) for s in ("finished", "pruned", "failed", "not_expanded")}
    best = tree.best()
    refs = {n.part.kind: n for n in nodes if n.is_reference}
    return {
        "run_dir": str(run_dir),
        "nodes": len(nodes),
        "counts": counts,
        "depth": tree.depth,
        "end_reason": tree.end_reason,
        "train_steps": sum(n.final.get("train_steps", 0) for n in nodes),
        "wall_time_s": sum(n.final.get("wall_time_s", 0.0) for n in nodes),
        "best": _node_summary(best),
        "base": _node_summary(refs.get("base")),
        "full": _node_summary(refs.get("full")),
        "pareto": [n.part.describe() for n in tree.pareto_front()],
    }


def _node_summary(node) -> dict | None:
    if node is None or node.score() is None:
        return None
    score = node.score()
    return {"id": node.id, "node": node.part.describe(), "spec": score.spec, "vers": score.vers, "uni": score.uni,
            "trained_params": node.trained_params}


def write_results(config: Config, tree: SearchTree, run_dir: Path) -> dict:
    """Write every output file; return the summary (also saved as summary.json, written last)."""
    (run_dir / "tree.json").write_text(tree.to_json())
    write_pareto_csv(tree, run_dir / "pareto.csv")
    best = tree.best()
    if best is not None:
        best_node = {"node": best.part.to_dict(), "key": best.part.key(), "id": best.id,
                     "scores": _node_summary(best), "checkpoint": best.checkpoint}
        (run_dir / "best_node.yaml").write_text(yaml.safe_dump(best_node, sort_keys=False))
    export_best_model(config, tree, run_dir / "best_model")
    write_report(tree, run_dir)
    summary = summarise(tree, run_dir)
    (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    return summary


def summary_text(summary: dict) -> str:
    """The summary printed at the end of a search; its last line is `Results: <run directory>`."""
    c = summary["counts"]
    lines = [
        f"CoFiTune search done ({summary['end_reason']}): {summary['nodes']} nodes, {c['finished']} finished, "
        f"{c['pruned']} pruned, {c['failed']} failed, {c['not_expanded']} not run; depth {summary['depth']}; "
        f"{summary['train_steps']} train steps, {summary['wall_time_s'] / 60:.1f} node-minutes",
    ]
    for label, key in (("Winner", "best"), ("Base model", "base"), ("Full SFT", "full")):
        s = summary[key]
        if s:
            lines.append(f"{label:<11} {s['node']}: Spec {s['spec']:.3f}  Vers {s['vers']:.3f}  Uni {s['uni']:.3f}"
                         f"  ({s['trained_params'] or 0:,} trained parameters)")
    lines.append("Pareto front: " + "; ".join(summary["pareto"]))
    run_dir = Path(summary["run_dir"])
    lines.append(f"Report: {run_dir / 'report.md'}  Best model: {run_dir / 'best_model'}")
    lines.append(f"Results: {run_dir}")
    return "\n".join(lines)
