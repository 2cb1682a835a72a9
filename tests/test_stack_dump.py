"""`kill -USR1 <pid>` of a running search prints its driver's thread stacks to stderr, and the search goes on: what a
user (or a test that waited in vain, `smoke_search.SearchDriver`) needs to see where a search that seems stuck waits.

The toy demo's driver is signalled once its preflight has passed; it is pointed at an address where no Ray cluster
answers, so it never starts one, and is killed after the check.
"""

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the demo's preflight: seconds

PROJECT = Path(__file__).resolve().parent.parent


def test_sigusr1_prints_the_driver_stacks_and_the_search_goes_on(tmp_path):
    driver = subprocess.Popen([sys.executable, "-m", "cofitune_ray.search", f"storage_path={tmp_path}",
                               "--address", "127.0.0.1:9"], cwd=PROJECT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    errors: list[str] = []
    threading.Thread(target=lambda: errors.extend(driver.stderr), daemon=True).start()
    try:
        for line in driver.stdout:
            if "preflight ok" in line:
                break
        assert driver.poll() is None, "".join(errors)
        driver.send_signal(signal.SIGUSR1)
        deadline = time.time() + 30
        while not any("search.py" in line for line in errors) and time.time() < deadline:
            time.sleep(0.1)
        assert driver.poll() is None  # the signal did not end it
    finally:
        driver.kill()
        driver.wait()
    dump = "".join(errors)
    assert "(most recent call first)" in dump
    assert 'cofitune_ray/search.py", line' in dump and "in main" in dump
