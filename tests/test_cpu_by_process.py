"""`benchmarks/cpu_by_process.py`: a command's CPU by kind of process (no Ray: a process that spins for a while)."""

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SPIN = "import time; end = time.process_time() + 1.0\nwhile time.process_time() < end: pass"


def test_a_spinning_child_is_counted_under_its_command_line():
    # the command starts a child (named `spinner` in its command line) that spins for 1 CPU-second, then ends: the
    # child is counted, under its own kind
    command = [sys.executable, "-c",
               f"import subprocess, sys; subprocess.run(['spinner', '-c', {SPIN!r}], executable=sys.executable)"]
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "cpu_by_process.py"), "--interval", "0.05",
                           "--", *command], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert f"command: {' '.join(command)}  (exit 0)" in done.stdout
    spinner = [line for line in done.stdout.splitlines() if line.startswith("spinner -c import time;")]
    assert len(spinner) == 1, done.stdout
    cpu, count = re.split(r"\s{2,}", spinner[0].strip())[1:3]
    assert 0.8 <= float(cpu) <= 1.3 and count == "1"
    machine = float(re.search(r"machine ([\d.]+) CPU-s", done.stdout).group(1))
    assert machine >= float(cpu) - 0.05


def test_a_command_is_required():
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "cpu_by_process.py")], capture_output=True,
                          text=True)
    assert done.returncode == 2 and "give the command to measure after --" in done.stderr
