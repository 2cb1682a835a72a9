"""Score a finished search's kept evaluation points again with this checkout's evaluator; compare with the record.

    python benchmarks/rescore_points.py --config CONFIG RUN_DIR

Every delta checkpoint still in RUN_DIR (each node's best point once the search has ended) and the base model
are loaded in this process (the base model with the delta merged, as `best_model/` is made) and evaluated by
`training.evaluate.Evaluator` on CONFIG's sets; the table says whether Spec, Vers, Uni and every set's score
equal what the search recorded at that point, and the largest difference of any other reported number
(log-likelihoods). It checks that a change to evaluation gives the same scores on a real search's models.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from cofitune_ray.config import load_config
from cofitune_ray.core.layout import BASE_RESULT_FILE, NODES_DIR, POINTS_DIR
from cofitune_ray.training.checkpoint import METRICS_FILE
from cofitune_ray.training.evaluate import Evaluator
from cofitune_ray.training.export import merge_delta
from cofitune_ray.training.model import load_model, load_tokenizer

SCORES = ("spec", "vers", "uni")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the config the search ran")
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = load_config(args.config)
    tokenizer = load_tokenizer(config.model.tokenizer or config.model.path)
    evaluator = Evaluator.from_config(config, tokenizer)
    points = [("base model", None, json.loads((args.run_dir / BASE_RESULT_FILE).read_text())["history"][0])]
    for directory in sorted((args.run_dir / NODES_DIR).glob(f"*/{POINTS_DIR}/eval-*")):
        points.append((f"{directory.parent.parent.name}/{directory.name}", directory,
                       json.loads((directory / METRICS_FILE).read_text())))
    print(f"{'point':30s} {'Spec':>6s} {'Vers':>7s}  same scores  max other diff  seconds")
    for name, directory, recorded in points:
        model = load_model(config.model.path, config.model.dtype)
        if directory is not None:
            merge_delta(model, directory)
        started = time.time()
        scored = evaluator.evaluate(model)
        seconds = time.time() - started
        keys = [k for k in recorded if k in SCORES or k.endswith("/score") or k.endswith("/exact_match")]
        same = all(scored[k] == recorded[k] for k in keys)
        other = max((abs(scored[k] - recorded[k]) for k in recorded
                     if k not in keys and isinstance(recorded[k], float) and isinstance(scored.get(k), float)),
                    default=0.0)
        print(f"{name:30s} {scored['spec']:6.3f} {scored['vers']:7.4f}  {str(same) + f' ({len(keys)})':>11s}  "
              f"{other:14.1e}  {seconds:7.1f}")


if __name__ == "__main__":
    main()
