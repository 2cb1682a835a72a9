"""Where a command's CPU goes on this machine: CPU-seconds by kind of process while it runs (Linux `/proc`).

    python benchmarks/cpu_by_process.py [--interval 0.25] -- python -m cofitune_ray.search storage_path=/tmp/demo

Runs the command and samples every process of the machine every `--interval` seconds: its CPU time (user and
system) and its title. A Ray worker names itself after its actor's class (`ray::TrainController`,
`ray::RayTrainWorker`, `ray::ImplicitFunc` for a Tune trial); every process is counted under the kind it last had
(not `ray::IDLE`, the title of a pooled worker that runs nothing). What each process spent during the command is
its CPU time at the last sample less its CPU time when the command started (0 for a process started since), so a
process that lived between two samples is missed, and one that ended less than `--interval` after its last sample
is short by that part: keep the interval short against the processes' lives (a Ray Train run's helpers live for
seconds).

Prints the command's wall time, the machine's CPU-seconds (`/proc/stat`: every process, the sampler too), and a
table: CPU-seconds per kind, processes of that kind, seconds per process, and the share of the machine's
CPU-seconds. Run it on a quiet machine: everything that runs meanwhile is counted.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from time_split import table  # this directory's (run as a script)

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
IDLE_WORKER = "ray::IDLE"


def machine_cpu_seconds() -> float:
    """CPU-seconds spent by the whole machine since boot (user, nice, system, irq, softirq, steal)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / CLOCK_TICKS  # less idle and iowait


def process_kind(cmdline: str) -> str:
    """A process's kind from its command line: a Ray worker's title up to its method (`ray::TrainController`), a
    dashboard module's name, or its first 60 characters (white space runs made one space)."""
    cmdline = " ".join(cmdline.split())
    if cmdline.startswith("ray::"):
        return cmdline.split()[0].split(".")[0]
    if cmdline.startswith("ray-dashboard-"):
        return cmdline.split()[0]
    return cmdline[:60]


def processes() -> dict[int, tuple[str, float]]:
    """Every process now: pid -> (kind, CPU-seconds since it started); kind "" when its command line is empty."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # ended meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after the executable's name, which may hold spaces
        found[int(entry)] = (process_kind(cmdline), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between samples (default 0.25)")
    parser.add_argument("--top", type=int, default=20, help="kinds printed (default 20; the rest summed)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to measure after --")

    before = {pid: cpu for pid, (_, cpu) in processes().items()}
    kinds: dict[int, str] = {}
    last: dict[int, float] = {}
    machine, started = machine_cpu_seconds(), time.time()
    child = subprocess.Popen(command)
    while True:
        done = child.poll() is not None
        for pid, (kind, cpu) in processes().items():
            last[pid] = cpu
            if kind and (kinds.get(pid, IDLE_WORKER) == IDLE_WORKER or kind != IDLE_WORKER):
                kinds[pid] = kind
        if done:
            break
        time.sleep(args.interval)
    wall, machine = time.time() - started, machine_cpu_seconds() - machine

    spent: dict[str, list[float]] = defaultdict(list)
    for pid, cpu in last.items():
        seconds = cpu - before.get(pid, 0.0)
        if seconds > 0:
            spent[kinds.get(pid, "(no command line)")].append(seconds)
    ranked = sorted(spent.items(), key=lambda kv: -sum(kv[1]))
    print(f"command: {' '.join(command)}  (exit {child.returncode})")
    print(f"wall {wall:.1f} s; machine {machine:.1f} CPU-s = {machine / wall:.2f} cores busy on average; "
          f"sampled processes {sum(map(sum, spent.values())):.1f} CPU-s")
    rows = [(kind, f"{sum(s):.1f}", str(len(s)), f"{sum(s) / len(s):.2f}", f"{sum(s) / machine:.1%}")
            for kind, s in ranked[:args.top]]
    rest = [c for _, s in ranked[args.top:] for c in s]
    if rest:
        rows.append((f"({len(ranked) - args.top} more kinds)", f"{sum(rest):.1f}", str(len(rest)),
                     f"{sum(rest) / len(rest):.2f}", f"{sum(rest) / machine:.1%}"))
    print(table(rows, ("process kind", "CPU-s", "processes", "per process", "of machine")))
    sys.exit(child.returncode)


if __name__ == "__main__":
    main()
