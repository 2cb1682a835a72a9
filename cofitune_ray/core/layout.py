"""Where a search keeps its files: every name in a run directory, in one place.

    <storage_path>/<name>/               the run directory (a new run never reuses one: `search.run_directory`)
        config.yaml                      the resolved config
        timeline.jsonl                   the driver's phases with their times (`core/timeline.py`)
        base_result.json                 the base model's evaluation, computed once
        tree.json                        every node and run, kept current while the search runs
        tune/                            the Ray Tune experiment (what --resume restores)
        nodes/node-<run id>/             one learning-rate run of a node (`run_dir_name`):
            history.jsonl                    one line per evaluation point
            points/eval-<k>/                 the delta checkpoint of evaluation point k (`point_dir`)
            attempts.jsonl                   one line per start of its training, with its end
            timeline.jsonl                   its trial's and its workers' events with their times
            kept.json                        the search kept it at the rung: it trains on past its rung point
            stopped.json                     the search stopped it: never trained again
            checkpoint_*/, checkpoint_manager_snapshot.json   Ray Train's training state (while it trains)
            result.json                      written last: the run finished
        logs/driver.log                  this driver's Ray and Tune records
        pareto.csv, best_node.yaml, best_model/, recipes/, report.md, report.html, pareto.png, curves.png
        summary.json                     written last: the search finished

Caches shared by the runs of one storage path (importance, Spectrum's scores, tokenised data) name
their own folders next to the run directories. Pure Python: no Ray, no torch.
"""

from __future__ import annotations

from pathlib import Path

# ---- the run directory ------------------------------------------------------------------------
CONFIG_FILE = "config.yaml"
BASE_RESULT_FILE = "base_result.json"
TREE_FILE = "tree.json"
EXPERIMENT_DIR = "tune"
NODES_DIR = "nodes"
LOG_DIR = "logs"
DRIVER_LOG = "driver.log"
PARETO_FILE = "pareto.csv"
BEST_NODE_FILE = "best_node.yaml"
BEST_MODEL_DIR = "best_model"
RECIPES_DIR = "recipes"
#: The report's files, by the key `outputs.report.write_report` returns them under.
REPORT_FILES = {"markdown": "report.md", "html": "report.html", "pareto": "pareto.png", "curves": "curves.png"}
SUMMARY_FILE = "summary.json"
#: The driver's phases (the run directory) and a run's events (its directory): `core/timeline.py`.
TIMELINE_FILE = "timeline.jsonl"

# ---- one run's directory, under NODES_DIR -----------------------------------------------------------
HISTORY_FILE = "history.jsonl"
POINTS_DIR = "points"
ATTEMPTS_FILE = "attempts.jsonl"
RUNG_KEPT_FILE = "kept.json"
STOPPED_FILE = "stopped.json"
RESULT_FILE = "result.json"
#: Ray Train's record of a run's checkpoints (ray.train.v2._internal.constants), and its checkpoint folders.
RAY_TRAIN_SNAPSHOT = "checkpoint_manager_snapshot.json"
RAY_TRAIN_CHECKPOINTS = "checkpoint_*"


def run_dir_name(run_id: str) -> str:
    """The name of a run's directory under NODES_DIR, and of its Ray Train run."""
    return f"node-{run_id}"


def point_dir(run_dir: str | Path, eval_index: int) -> Path:
    """The directory of a run's evaluation point `eval_index` (its delta checkpoint)."""
    return Path(run_dir) / POINTS_DIR / f"eval-{eval_index}"
