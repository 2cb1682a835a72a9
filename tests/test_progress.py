"""The search's progress callback (no Ray cluster): how often Tune's steps make it write tree.json."""

from types import SimpleNamespace

from cofitune_ray.tuning import progress
from cofitune_ray.tuning.progress import REFRESH_INTERVAL_S, SearchProgress
from cofitune_ray.tuning.searcher import TreeSearcher
from test_report import searched


def test_tune_steps_refresh_at_most_once_per_interval_and_trial_ends_at_once(tmp_path, monkeypatch, capsys):
    now = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    tree = searched()
    for run in (r for n in tree.nodes.values() for r in n.runs):  # the run directories the stopped runs are marked in
        (tmp_path / "nodes" / f"node-{run.id}").mkdir(parents=True)
    callback = SearchProgress(TreeSearcher(tree), str(tmp_path), "test")
    saves = []
    monkeypatch.setattr(callback.searcher.tree, "save", lambda path: saves.append(now[0]))
    for _ in range(10):  # Tune's steps within one interval: one refresh
        callback.on_step_begin(0, [])
        now[0] += REFRESH_INTERVAL_S / 20
    assert saves == [100.0]
    now[0] = 100.0 + REFRESH_INTERVAL_S
    callback.on_step_begin(0, [])
    assert saves == [100.0, 100.0 + REFRESH_INTERVAL_S]
    callback.on_trial_complete(0, [], trial=SimpleNamespace(trial_id="not-this-search's"))  # shown at once
    assert len(saves) == 3
    assert "[cofitune] n10 " in capsys.readouterr().out  # the node lines were printed by the first refresh
