"""The search's Tune callbacks (no Ray cluster): how often Tune's steps make them refresh, and in what order
the run directory's files and the terminal's lines are written."""

from types import SimpleNamespace

from cofitune_ray.core.layout import STOPPED_FILE
from cofitune_ray.tuning import refresh
from cofitune_ray.tuning.progress import SearchProgress
from cofitune_ray.tuning.refresh import REFRESH_INTERVAL_S
from cofitune_ray.tuning.run_files import RunFiles
from cofitune_ray.tuning.searcher import TreeSearcher
from test_report import searched


def test_tune_steps_refresh_at_most_once_per_interval_and_trial_ends_at_once(tmp_path, monkeypatch, capsys):
    now = [100.0]
    monkeypatch.setattr(refresh.time, "monotonic", lambda: now[0])
    tree = searched()
    for run in (r for n in tree.nodes.values() for r in n.runs):  # the run directories the stopped runs are marked in
        (tmp_path / "nodes" / f"node-{run.id}").mkdir(parents=True)
    searcher = TreeSearcher(tree)
    files, lines = RunFiles(searcher, str(tmp_path)), SearchProgress(searcher, "test")
    saves = []
    monkeypatch.setattr(searcher.tree, "save", lambda path: saves.append(now[0]))
    for _ in range(10):  # Tune's steps within one interval: one refresh
        files.on_step_begin(0, [])
        now[0] += REFRESH_INTERVAL_S / 20
    assert saves == [100.0]
    now[0] = 100.0 + REFRESH_INTERVAL_S
    files.on_step_begin(0, [])
    assert saves == [100.0, 100.0 + REFRESH_INTERVAL_S]
    files.on_trial_complete(0, [], trial=SimpleNamespace(trial_id="not-this-search's"))  # at once
    assert len(saves) == 3
    stopped = [r.id for n in tree.nodes.values() for r in n.runs if r.status in ("stopped", "pruned")]
    assert stopped and all((tmp_path / "nodes" / f"node-{r}" / STOPPED_FILE).is_file() for r in stopped)
    assert capsys.readouterr().out == ""  # the files' callback prints nothing
    lines.on_step_begin(0, [])
    assert "[cofitune] n10 " in capsys.readouterr().out  # the node lines come from the progress callback
    lines.on_step_begin(0, [])
    assert capsys.readouterr().out == ""  # within the interval: nothing printed again
