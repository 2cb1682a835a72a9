"""latest_saved_tree: the newest driver session's searcher state, whatever the files' mtimes say, read whole."""

import json
import os
import threading

import pytest

from cofitune_ray.core.space import load_search_space
from cofitune_ray.core.tree import SearchTree
from cofitune_ray.tuning.searcher import latest_saved_tree
from conftest import PROJECT


def test_newest_session_wins_even_when_an_older_file_was_rewritten_later(tmp_path):
    space = load_search_space(PROJECT / "search_spaces" / "smoke.yaml")
    old, new = SearchTree(space), SearchTree(space)
    new.end_reason = "from the resumed session"
    old_file = tmp_path / "searcher-state-2026-11-26_08-59-59.pkl"
    new_file = tmp_path / "searcher-state-2026-11-26_09-01-23.pkl"
    old_file.write_text(json.dumps({"tree": old.to_dict()}))
    new_file.write_text(json.dumps({"tree": new.to_dict()}))
    os.utime(new_file, (1000, 1000))  # Tune's final sync rewrites both; the old one may end up newer
    assert latest_saved_tree(tmp_path).end_reason == "from the resumed session"
    assert latest_saved_tree(tmp_path / "missing") is None


def test_a_state_still_being_copied_is_read_once_whole(tmp_path):
    tree = SearchTree(load_search_space(PROJECT / "search_spaces" / "smoke.yaml"))
    tree.end_reason = "copied"
    state = tmp_path / "searcher-state-2026-11-26_09-01-23.pkl"
    state.write_text("")  # Tune's copy to storage has begun, not finished
    finish = threading.Timer(1.0, lambda: state.write_text(json.dumps({"tree": tree.to_dict()})))
    finish.start()
    assert latest_saved_tree(tmp_path).end_reason == "copied"
    finish.join()
    state.write_text('{"tree": {')  # cut short for good
    with pytest.raises(RuntimeError, match="not a whole searcher state after 0.5 s"):
        latest_saved_tree(tmp_path, wait_s=0.5)
