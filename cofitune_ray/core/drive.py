"""Running a search without Ray: the same tree, node order and stop rules, runs executed in-process.

The Ray path (`tuning/searcher.py`, `tuning/scheduler.py`) and this loop make the same calls on the
same objects: `order.next_run(tree)` picks the run to start, every evaluation point goes to
`tree.record` and then `rules.decide`, a stop goes to `tree.stop`, the run's end to `tree.complete`
(with its last result) or `tree.fail`. The benchmark and the tests drive searches through it, so
their tree is exactly the one the CLI would build from the same results.

An executor runs one learning-rate run of a node: `executor.run(node, run)` yields one result per
evaluation point (a dict with `eval_index`, `spec`, `vers`, `uni`, `step`, ...) and then a final
result (`final: True`, with `train_steps`, `total_steps`, `wall_time_s`). When the rules stop a
run, the loop closes its iterator (an executor that trains stops training there).
`concurrency` runs advance side by side, one evaluation point each in turn, as Tune's concurrent
trials would. A run that waits at the rung (`SearchTree.waits_at_rung`) is set aside without being
advanced and frees its place, as the scheduler pauses its trial; once its node's verdict is known
it is judged again (`rules.decide`: stopped if it lost, or if a rule stops its rung point) or goes on
before any new run starts. Its iterator (for an executor
that trains: its model and optimizer) is kept meanwhile, so up to a node's number of learning rates
of runs are held at once. Pure Python: no Ray, no torch.
"""

from __future__ import annotations

from typing import Iterator, Protocol

from cofitune_ray.core.order import NodeOrder, TreeOrder
from cofitune_ray.core.rules import Stop, decide
from cofitune_ray.core.settings import StopRules
from cofitune_ray.core.tree import Run, SearchTree, TreeNode


class Executor(Protocol):
    """Runs one learning-rate run of a node, yielding its results (see the module docstring)."""

    def run(self, node: TreeNode, run: Run) -> Iterator[dict]: ...


def drive(tree: SearchTree, executor: Executor, rules: StopRules, order: NodeOrder | None = None,
          concurrency: int = 1) -> SearchTree:
    """Run the search to its end; return the tree."""
    order = order or TreeOrder()
    active: list[tuple[str, Iterator[dict]]] = []
    waiting: list[tuple[str, Iterator[dict], dict]] = []  # at the rung: the run, its results, its rung point
    while not tree.finished or active or waiting:
        for entry in list(waiting):
            run_id, results, point = entry
            stop = decide(tree, run_id, rules)
            if stop is not None:
                waiting.remove(entry)
                _stop(tree, run_id, results, point, stop)
            elif not tree.waits_at_rung(run_id) and len(active) < concurrency:
                waiting.remove(entry)
                active.append((run_id, results))
        while len(active) + sum(not tree.waits_at_rung(w[0]) for w in waiting) < concurrency and not tree.finished:
            pick = order.next_run(tree)
            if pick is None:
                break
            node, run = pick
            tree.start(run.id, trial_id=run.id)
            active.append((run.id, iter(executor.run(node, run))))
        if not active:
            if tree.finished and not waiting:  # the last runs waiting at the rung were stopped just now
                break
            raise RuntimeError(f"the search stalled at depth {tree.depth} with nothing running")
        for run_id, results in list(active):
            outcome = _advance(tree, rules, run_id, results)
            if outcome is not None:
                active.remove((run_id, results))
            if isinstance(outcome, dict):
                waiting.append((run_id, results, outcome))
    return tree


def _advance(tree: SearchTree, rules: StopRules, run_id: str, results: Iterator[dict]) -> bool | dict | None:
    """Take one result of a run: True when the run has ended, its rung point when it waits there, else None."""
    try:
        result = next(results)
    except StopIteration:
        tree.fail(run_id, "the run ended without a final result")
        return True
    except Exception as exc:  # an executor's error fails the run, as a Tune trial's error does
        tree.fail(run_id, f"{type(exc).__name__}: {exc}")
        return True
    if result.get("final"):
        tree.complete(run_id, result)
        return True
    tree.record(run_id, result)
    stop = decide(tree, run_id, rules)
    if stop is not None:
        _stop(tree, run_id, results, result, stop)
        return True
    return result if tree.waits_at_rung(run_id) else None


def _stop(tree: SearchTree, run_id: str, results: Iterator[dict], last: dict, stop: Stop) -> None:
    """End a run the rules stopped at its last result: it trains no further."""
    tree.stop(run_id, stop.status, stop.reason)
    close = getattr(results, "close", None)
    if close:
        close()
    tree.complete(run_id, last)
