"""Fault to every task serving again, on the embedded cluster with its controllers.

Repeats each fault `--rounds` times on a 4 x 2 GPU cluster running 4 tasks: Xid 79 on a GPU
that serves a task, and a crash of a whole node. For each round it reads the controller's
events and prints the medians and maxima of: injection to detection, detection to the task
serving through the gateway (DESIGN's target: under 1 s), and injection to serving. The
reference, measured in the same run, is what a cluster without controllers gets: a killed
worker restarted by its supervisor (the kubelet) until it answers its health check again.

Run: `python -m benchmarks.task_recovery [--rounds 5]`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from experiments import context, faults
from resilience import launcher
from resilience.state import read_state
from resilience.store_client import Store

SERVING = {"labelSelectors": {"role": "worker", "task-state": "serving"}}


def _events(store: Store) -> list[dict[str, Any]]:
    return store.get("controller.events") or []


def _settled(timeout: float = 30.0) -> None:
    """Wait until the leading controller says every task serves and nothing is cordoned."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in (read_state() or {}).get("processes", []):
            if p["labels"].get("role") != "controller":
                continue
            try:
                s = httpx.get(f"http://127.0.0.1:{p['ports']['http']}/status", timeout=1).json()
            except (httpx.HTTPError, ValueError):
                continue
            if s.get("role") == "leader" and s.get("settled") and not s.get("cordoned"):
                return
        time.sleep(0.1)
    raise RuntimeError("the controllers did not settle")


def _round(store: Store, inject: Any) -> dict[str, float | None]:
    record = inject()
    injected = record["injected_at"]
    victims = set(record["victims"])
    deadline = time.monotonic() + 10
    moved: list[dict[str, Any]] = []
    detected: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        events = [e for e in _events(store) if e.get("at", e.get("assigned_at", 0)) >= injected]
        detected = [e for e in events if e["kind"] == "detected" and e["worker"] in victims]
        moved = [
            e for e in _events(store) if e["kind"] == "migration" and e["assigned_at"] >= injected
        ]
        if moved and all(e.get("routed_at") for e in moved):
            break
        time.sleep(0.1)
    faults.recover_all()
    _settled()
    if not moved or not all(e.get("routed_at") for e in moved):
        why = "no migration" if not moved else "a task never routed within 3 s"
        print(f"  round without a complete migration ({record['victims']}): {why}", flush=True)
        return {"detect": None, "detect_to_serving": None, "fault_to_serving": None}
    return {
        "detect": min(e["at"] for e in detected) - injected if detected else None,
        "detect_to_serving": max(e["routed_at"] - e["detected_at"] for e in moved),
        "fault_to_serving": max(e["routed_at"] for e in moved) - injected,
        "tasks": len(moved),
    }


def _busiest_node(store: Store) -> str:
    """The node (not node-0, which hosts the gateway) with the most tasks: a crash must move
    something, and earlier rounds moved tasks away from the nodes they crashed."""
    placements = (store.get("tasks.assignment") or {}).get("placements", {})
    counts: dict[str, int] = {}
    for p in placements.values():
        if p["node"] != "node-0":
            counts[p["node"]] = counts.get(p["node"], 0) + 1
    return max(sorted(counts), key=lambda n: counts[n])


def _restart_reference() -> float:
    """Without controllers: a killed worker comes back when its supervisor restarts it."""
    state = read_state() or {}
    worker = next(p for p in state["processes"] if p["name"] == "worker-n0-g1")
    url = f"http://127.0.0.1:{worker['ports']['http']}/health"
    record = faults.pod_kill(
        selector={"labelSelectors": {"role": "worker", "node": "node-0", "gpu": "1"}},
        mode="one",
        restart_after=0,
    )
    started = record["injected_at"]
    while True:
        try:
            if httpx.get(url, timeout=0.5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.01)
    elapsed = time.time() - started
    faults.recover_all()
    _settled()
    return elapsed


def _summary(name: str, rounds: list[dict[str, float | None]]) -> None:
    def figure(key: str) -> str:
        values = [r[key] for r in rounds if r.get(key) is not None]
        if not values:
            return "n/a"
        return (
            f"median {statistics.median(values) * 1000:6.0f} ms  max {max(values) * 1000:6.0f} ms"
        )

    failed = sum(1 for r in rounds if r.get("fault_to_serving") is None)
    print(f"{name} ({len(rounds)} rounds, {failed} without a complete migration)")
    print(f"  injection to detection     {figure('detect')}")
    print(f"  detection to serving       {figure('detect_to_serving')}  (target < 1000 ms)")
    print(f"  injection to serving       {figure('fault_to_serving')}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-tasks-"))
    os.environ["INFERENCE_CHAOS_HOME"] = str(work / "home")
    state = launcher.up(launcher.UpOptions(nodes=4, gpus_per_node=2, tasks=4))
    context.start_run("bench-task-recovery", work / "runs")
    store = Store(state["raft_endpoints"])
    results: dict[str, list[dict[str, float | None]]] = {"xid79": [], "node": []}
    try:
        _settled()
        reference = _restart_reference()
        for _ in range(args.rounds):
            results["xid79"].append(
                _round(store, lambda: faults.gpu_xid(79, selector=SERVING, mode="one"))
            )
            node = _busiest_node(store)
            results["node"].append(
                _round(store, lambda node=node: faults.node_crash(node=node, restart_after=None))
            )
    finally:
        faults.recover_all()
        context.end_run()
        launcher.down()
    _summary("Xid 79 on a serving GPU", results["xid79"])
    _summary("crash of the busiest node (2 GPUs, maybe a store replica)", results["node"])
    fault_to_serving = [
        r["fault_to_serving"] for rs in results.values() for r in rs if r["fault_to_serving"]
    ]
    print(f"reference: a killed worker restarted by its supervisor serves after {reference:.2f} s")
    if fault_to_serving:
        median = statistics.median(fault_to_serving)
        print(f"ratio (median fault to serving / reference restart): {median / reference:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
