"""Consistency probes for the Raft experiments: one leader, a deposed leader that steps down,
and a recorded history that is linearizable.

They work on any store the `probes.raft` clients speak to (ours or etcd) and return plain
data; a judged result carries `ok`, a `check` name and a one-line `summary`, so the verdict
control weighs it like an SLO.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from chaoslib.exceptions import ActivityFailed

from probes.raft import actions as raft_actions
from probes.raft.clients import NodeStatus, make_client

__all__ = [
    "store_has_leader",
    "isolated_replica_stepped_down",
    "history_linearizable",
    "stop_raft_probes",
]


def _where(configuration: dict[str, Any] | None) -> tuple[str, list[str]]:
    kind = raft_actions._kind(None, configuration)
    return kind, raft_actions._endpoints(None, kind, configuration)


async def _statuses(
    kind: str, endpoints: list[str], timeout_s: float
) -> dict[str, NodeStatus | str]:
    client = make_client(kind, endpoints, timeout_s)
    try:
        results = await asyncio.gather(
            *(client.status(e, timeout_s) for e in endpoints), return_exceptions=True
        )
    finally:
        await client.aclose()
    return {
        e: (r if isinstance(r, NodeStatus) else f"{type(r).__name__}: {r}")
        for e, r in zip(endpoints, results, strict=True)
    }


def store_has_leader(
    wait_s: float = 5.0,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every replica answers and all follow the same leader (waits up to `wait_s`)."""
    kind, endpoints = _where(configuration)
    deadline = time.monotonic() + wait_s
    while True:
        seen = asyncio.run(_statuses(kind, endpoints, 0.5))
        answered = {e: s for e, s in seen.items() if isinstance(s, NodeStatus)}
        leaders = {s.leader for s in answered.values()}
        claimants = [e for e, s in answered.items() if s.claims_leadership]
        ok = (
            len(answered) == len(endpoints)
            and len(leaders) == 1
            and None not in leaders
            and len(claimants) == 1
        )
        if ok or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return {
        "ok": ok,
        "kind": kind,
        "leader": claimants[0] if len(claimants) == 1 else None,
        "replicas": {e: (s.__dict__ if isinstance(s, NodeStatus) else s) for e, s in seen.items()},
    }


def _isolated_victims() -> list[str]:
    """Names of replicas cut off by the run's active network partition."""
    from experiments.context import current_run

    run = current_run()
    if run is None:
        raise ActivityFailed("no run: this probe reads the run's partition fault")
    return [
        v
        for f in run.faults()
        if f["kind"] == "network-partition" and f["injected_at"] and not f["removed_at"]
        for v in f["victims"]
    ]


def isolated_replica_stepped_down(
    within_s: float = 1.0,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """While a replica is partitioned away, it must stop claiming leadership within
    `within_s` (check-quorum) and the majority must have a leader of its own."""
    from resilience.state import read_state

    victims = _isolated_victims()
    if not victims:
        raise ActivityFailed("no replica is partitioned away right now")
    state = read_state() or {}
    ports = {p["name"]: p["ports"].get("http") for p in state.get("processes", [])}
    isolated = {f"http://127.0.0.1:{ports[v]}" for v in victims if v in ports}
    kind, endpoints = _where(configuration)
    started = time.monotonic()
    stepped_down_s = None
    majority_leader = None
    while time.monotonic() - started <= within_s:
        seen = asyncio.run(_statuses(kind, endpoints, 0.3))
        claims = {e for e, s in seen.items() if isinstance(s, NodeStatus) and s.claims_leadership}
        majority = claims - isolated
        if not claims & isolated and majority:
            stepped_down_s = time.monotonic() - started
            majority_leader = sorted(majority)[0]
            break
        time.sleep(0.02)
    ok = stepped_down_s is not None
    summary = (
        f"isolated {', '.join(victims)} stopped leading after {stepped_down_s:.2f}s; "
        f"majority leader {majority_leader}"
        if ok
        else f"isolated {', '.join(victims)} still claimed leadership (or the majority had "
        f"none) {within_s:.1f}s after the check began"
    )
    return {
        "ok": ok,
        "check": "isolated-leader-steps-down",
        "summary": summary,
        "victims": victims,
        "stepped_down_s": stepped_down_s,
        "majority_leader": majority_leader,
    }


def history_linearizable(
    path: str | None = None,
    model: str = "kv",
    timeout_s: float = 30.0,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Check the recorded history; `unknown` (deadline) is not a pass."""
    from probes.linearizability import check, history_html, load_history, make_model, verdict_text

    if path is None:
        found = sorted(
            Path((configuration or {}).get("run_dir") or ".").glob("raft-history*.jsonl"),
            key=lambda p: p.stat().st_mtime,
        )
        if not found:
            raise ActivityFailed("no recorded history: run start_history/stop_history first")
        path = str(found[-1])
    try:
        history = load_history(path)
    except (OSError, ValueError) as exc:
        raise ActivityFailed(f"cannot read history {path}: {exc}") from None
    if not history.operations:
        raise ActivityFailed(f"history {path} holds no operation")
    verdict = check(
        history.operations, make_model(model, history.initial_value), timeout=float(timeout_s)
    )
    data = verdict.to_json()
    keys = data.get("keys") or []
    bad = [k["key"] for k in keys if k.get("result") == "illegal"]
    key = bad[0] if bad else (keys[0]["key"] if keys else None)
    html = history_html(history.operations, verdict, key) if keys else ""
    return {
        "ok": verdict.result == "ok",
        "check": "linearizability",
        "summary": verdict_text(verdict).splitlines()[0],
        "result": verdict.result,
        "operations": len(history.operations),
        "history_path": path,
        "verdict": data,
        "history_html": html,
    }


def stop_raft_probes(
    configuration: dict[str, Any] | None = None, secrets: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Rollback: stop the observer and the history recorder if they run; never fails."""
    stopped = {"observer": raft_actions.stop_observer()["stopped"], "history": False}
    try:
        raft_actions.stop_history()
        stopped["history"] = True
    except ActivityFailed:
        pass
    return stopped
