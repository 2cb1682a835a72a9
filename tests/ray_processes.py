"""Processes of the Ray clusters tests start: the Ray Train workers of this test session's cluster, to kill one in
fault-tolerance tests, the whole process tree of a `ray start` head, to stop it, and the actors the session's
cluster has started, to check which helper processes a run starts.

The machine may run other people's Ray clusters at the same time: only workers started by this
cluster's raylet (found by the node id of the connected driver) are ever returned.
"""

import subprocess
from collections import Counter
from pathlib import Path


def _processes() -> list[tuple[int, int, str]]:
    """(pid, parent pid, whole command line) of every process on the machine."""
    rows = []
    # -ww: whole lines
    listing = subprocess.run(["ps", "-ww", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout
    for line in listing.splitlines()[1:]:
        pid, ppid, args = line.split(None, 2)
        rows.append((int(pid), int(ppid), args))
    return rows


def descendants(pid: int) -> list[int]:
    """Every live process started, directly or not, by `pid` (Ray's detached actors run in sessions of their own,
    so a process group does not hold them all)."""
    children: dict[int, list[int]] = {}
    for child, parent, _ in _processes():
        children.setdefault(parent, []).append(child)
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child, []))
    return found


def running(pid: int) -> bool:
    """Whether `pid` is a live process (not gone, not a zombie waiting for its parent)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def train_worker_pids(ray) -> list[int]:
    """PIDs of the live Ray Train workers of the cluster `ray` is connected to."""
    node_id = ray.get_runtime_context().get_node_id()
    rows = _processes()
    raylets = {pid for pid, _, args in rows if "raylet" in args.split()[0] and f"--node_id={node_id}" in args}
    return [pid for pid, ppid, args in rows if ppid in raylets and "RayTrainWorker" in args]


def actors_started() -> Counter:
    """How many actors of each class the connected cluster has started, ended ones included (Ray's state API)."""
    from ray.util.state import list_actors

    return Counter(actor.class_name for actor in list_actors(limit=10000))


def cluster_state() -> str:
    """What the connected cluster holds now, for a test that waited in vain: its live actors, its placement groups
    not removed, and its free and total resources (Ray's state API)."""
    import ray
    from ray.util.state import list_actors, list_placement_groups

    actors = sorted(f"{a.class_name} {a.state} pid {a.pid}" for a in list_actors(limit=10000) if a.state != "DEAD")
    groups = [f"{g.placement_group_id} {g.state} {[b['unit_resources'] for b in g.bundles]}"
              for g in list_placement_groups(limit=10000, detail=True) if g.state != "REMOVED"]
    free, total = ray.available_resources(), ray.cluster_resources()
    return "\n".join([", ".join(f"{r} free {free.get(r, 0):g} of {total[r]:g}" for r in ("CPU", "GPU") if r in total),
                      f"live actors: {actors}", f"placement groups: {groups}"])
