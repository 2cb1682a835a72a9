"""The Ray Train worker processes of this test session's cluster, to kill one in fault-tolerance tests.

The machine may run other people's Ray clusters at the same time: only workers started by this
cluster's raylet (found by the node id of the connected driver) are ever returned.
"""

import subprocess


def train_worker_pids(ray) -> list[int]:
    """PIDs of the live Ray Train workers of the cluster `ray` is connected to."""
    node_id = ray.get_runtime_context().get_node_id()
    rows = []
    # -ww: whole lines
    listing = subprocess.run(["ps", "-ww", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout
    for line in listing.splitlines()[1:]:
        pid, ppid, args = line.split(None, 2)
        rows.append((int(pid), int(ppid), args))
    raylets = {pid for pid, _, args in rows if "raylet" in args.split()[0] and f"--node_id={node_id}" in args}
    return [pid for pid, ppid, args in rows if ppid in raylets and "RayTrainWorker" in args]
