"""How long the embedded cluster takes to start and to stop cleanly.

Start-to-ready is from `up()` until every process answers its ready URL (workers, gateway,
fault proxy, Prometheus); down-to-clean is from `down()` until every pid is gone and every
port is free. The reference, measured in the same run, is one bare Python interpreter start
on this machine (the floor under any process the cluster starts).

Run: `python -m benchmarks.cluster_lifecycle [--nodes 4 --gpus-per-node 2 --repeat 3]`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from resilience import launcher
from resilience.state import pid_alive


def python_start_seconds() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - started


def one_cycle(nodes: int, gpus: int) -> tuple[float, float, int]:
    started = time.perf_counter()
    state = launcher.up(launcher.UpOptions(nodes=nodes, gpus_per_node=gpus))
    ready = time.perf_counter() - started
    pids = [p["pid"] for p in state["processes"]] + [state["supervisor"]["pid"]]
    started = time.perf_counter()
    outcome = launcher.down()
    clean = time.perf_counter() - started
    left = [pid for pid in pids if pid_alive(pid)] + outcome["ports_still_bound"]
    if left:
        raise SystemExit(f"down left something behind: {left}")
    return ready, clean, len(state["processes"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--gpus-per-node", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    os.environ["INFERENCE_CHAOS_HOME"] = tempfile.mkdtemp(prefix="bench-cluster-")
    reference = statistics.median(python_start_seconds() for _ in range(5))
    ready, clean = [], []
    for _ in range(args.repeat):
        r, c, count = one_cycle(args.nodes, args.gpus_per_node)
        ready.append(r)
        clean.append(c)
    r_med, c_med = statistics.median(ready), statistics.median(clean)
    print(
        f"cluster {args.nodes} nodes x {args.gpus_per_node} GPUs: {count} processes, "
        f"{args.repeat} cycles"
    )
    print(f"  start-to-ready  median {r_med:.2f} s  (max {max(ready):.2f} s; target < 5 s)")
    print(f"  down-to-clean   median {c_med:.2f} s  (max {max(clean):.2f} s)")
    print(
        f"  reference: bare python start {reference * 1000:.0f} ms; "
        f"start-to-ready = {r_med / reference:.1f}x that"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
