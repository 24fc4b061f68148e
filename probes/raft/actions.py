"""Chaos Toolkit activities for Raft: watch failover, record a history, judge both.

A typical method: `start_observer` and `start_history` (actions, in the background), then
`mark_fault` right before the fault action, then `observer_report` (a probe that waits up to its
own deadline for the new leader and the first acknowledged write, then judges) and
`stop_history` (returns the history file for `inference-chaos check-history`).

Endpoints come from the `endpoints` argument, else `configuration["raft_endpoints"]`, else (for
our store) the embedded cluster's state file (`raft_endpoints`). The kind ("ours" or "etcd")
from `kind`, else `configuration["raft_kind"]`, else "ours". Files go to
`configuration["run_dir"]`, else a temporary folder. One observer and one recorder per process:
starting another stops the previous one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from chaoslib.exceptions import ActivityFailed

from probes.raft.clients import (
    NodeStatus,
    NotARaftStore,
    StatusUnavailable,
    make_client,
)
from probes.raft.history import HistoryRecorder, fresh_keys
from probes.raft.observer import RaftObserver

__all__ = [
    "mark_fault",
    "observer_report",
    "start_history",
    "start_observer",
    "stop_history",
    "stop_observer",
]

CHECK_TIMEOUT_S = 1.0
WAIT_GRACE_S = 1.0
MAX_WAIT_S = 60.0

_lock = threading.Lock()
_observer: RaftObserver | None = None
_recorder: HistoryRecorder | None = None
_temp_dir: Path | None = None


# -- where, what and which files -----------------------------------------------------------


def _kind(kind: str | None, configuration: dict[str, Any] | None) -> str:
    kind = kind or (configuration or {}).get("raft_kind") or "ours"
    if kind not in ("ours", "etcd"):
        raise ActivityFailed(f"unknown Raft store kind {kind!r}: expected 'ours' or 'etcd'")
    return kind


def _endpoints(
    endpoints: list[str] | None, kind: str, configuration: dict[str, Any] | None
) -> list[str]:
    found = endpoints or (configuration or {}).get("raft_endpoints")
    if not found and kind == "ours":
        from resilience.state import read_state

        found = (read_state() or {}).get("raft_endpoints")
    if not found:
        raise ActivityFailed(
            "no Raft endpoints: pass endpoints, set configuration raft_endpoints, "
            "or start a cluster whose state lists raft_endpoints"
        )
    if isinstance(found, str):
        found = [e for e in found.split(",") if e]
    return [str(e).rstrip("/") for e in found]


def _out_dir(configuration: dict[str, Any] | None) -> Path:
    global _temp_dir
    run_dir = (configuration or {}).get("run_dir")
    if run_dir:
        path = Path(run_dir)
    else:
        if _temp_dir is None:
            _temp_dir = Path(tempfile.mkdtemp(prefix="raft-probes-"))
        path = _temp_dir
    path.mkdir(parents=True, exist_ok=True)
    return path


def _unique(folder: Path, stem: str, suffix: str) -> Path:
    path, n = folder / f"{stem}{suffix}", 1
    while path.exists():
        n += 1
        path = folder / f"{stem}-{n}{suffix}"
    return path


def check_endpoints(kind: str, endpoints: list[str], timeout_s: float = CHECK_TIMEOUT_S) -> list:
    """Ask every endpoint its status once; ActivityFailed unless they are the Raft store said.

    An endpoint that does not answer is allowed (a replica may be down), one that answers as
    something else is not, and at least one must answer.
    """

    async def ask_all() -> list[NodeStatus | Exception]:
        client = make_client(kind, endpoints, timeout_s)
        try:
            return await asyncio.gather(
                *(client.status(e, timeout_s) for e in endpoints), return_exceptions=True
            )
        finally:
            await client.aclose()

    answers = asyncio.run(ask_all())
    wrong = [str(a) for a in answers if isinstance(a, NotARaftStore)]
    if wrong:
        raise ActivityFailed("; ".join(wrong))
    odd = [a for a in answers if isinstance(a, Exception) and not isinstance(a, StatusUnavailable)]
    if odd:
        raise ActivityFailed(f"status check failed: {odd[0]!r}")
    if not any(isinstance(a, NodeStatus) for a in answers):
        raise ActivityFailed(f"no Raft endpoint answered: {'; '.join(map(str, answers))}")
    return [
        dataclasses.asdict(a) if isinstance(a, NodeStatus) else {"endpoint": e, "error": str(a)}
        for e, a in zip(endpoints, answers, strict=True)
    ]


# -- the observer ----------------------------------------------------------------------------


def start_observer(
    endpoints: list[str] | None = None,
    kind: str | None = None,
    poll_interval_s: float = 0.01,
    status_timeout_s: float = 0.2,
    write_timeout_s: float = 0.5,
    write_key: str = "inference-chaos-observer",
    write: bool = True,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Start watching the store in the background (status polls and a counter writer)."""
    global _observer
    kind = _kind(kind, configuration)
    endpoints = _endpoints(endpoints, kind, configuration)
    replicas = check_endpoints(kind, endpoints)
    observer = RaftObserver(
        make_client(kind, endpoints, write_timeout_s),
        poll_interval_s=poll_interval_s,
        status_timeout_s=status_timeout_s,
        write_timeout_s=write_timeout_s,
        write_key=write_key,
        write=write,
    )
    with _lock:
        previous, _observer = _observer, observer
    if previous is not None:
        previous.stop()
    observer.start()
    return {"kind": kind, "endpoints": endpoints, "replicas": replicas, "started_at": time.time()}


def mark_fault(
    at: float | None = None,
    from_run_fault: bool = False,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Set the fault time t0: now, `at` (Unix seconds), or with `from_run_fault` the moment the
    run's latest fault was injected (so the time spent choosing and reaching the victim does
    not count as failover time)."""
    observer = _current_observer()
    if from_run_fault:
        from experiments.context import current_run

        run = current_run()
        injected = [f["injected_at"] for f in (run.faults() if run else []) if f["injected_at"]]
        if not injected:
            raise ActivityFailed("from_run_fault: this run has injected no fault yet")
        at = max(injected)
    t0 = observer.mark_fault(None if at is None else at - observer.wall_offset_s)
    return {"t0": t0, "at": t0 + observer.wall_offset_s}


def observer_report(
    failover_bound_s: float = 1.0,
    write_bound_s: float | None = None,
    expect_new_leader: bool = True,
    wait_s: float | None = None,
    stop: bool = True,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Wait (up to `wait_s` after t0; default the larger bound + 1 s) for a new leader and a
    first acknowledged write, then judge. `ok` = new leader within `failover_bound_s` (when
    `expect_new_leader`), first write within `write_bound_s` (when given), no split brain,
    terms only growing. Also writes the verdict and the raw samples to the run folder."""
    observer = _current_observer()
    if observer.t0 is None:
        raise ActivityFailed("no fault time: call mark_fault before observer_report")
    if wait_s is None:
        wait_s = max(failover_bound_s, write_bound_s or 0.0) + WAIT_GRACE_S
    remaining = min(wait_s, MAX_WAIT_S) - (observer.clock() - observer.t0)

    def measured() -> bool:
        try:
            v = observer.report(failover_bound_s, expect_new_leader=expect_new_leader)
        except ValueError:
            return False
        leader_seen = v["failover_s"] is not None or not expect_new_leader
        return leader_seen and v["first_write_s"] is not None

    try:
        if observer.running and remaining > 0:
            observer.wait_for(measured, remaining)
        not_raft = observer.not_raft()
        if not_raft:
            raise ActivityFailed("; ".join(not_raft.values()))
        try:
            verdict = observer.report(
                failover_bound_s,
                write_bound_s=write_bound_s,
                expect_new_leader=expect_new_leader,
            )
        except ValueError as exc:
            raise ActivityFailed(str(exc)) from exc
    finally:
        if stop:
            observer.stop()
    verdict["check"] = "raft-failover"  # a judged result: the verdict control weighs it
    verdict["summary"] = _summary(verdict)
    path = _unique(_out_dir(configuration), "raft-observer", ".json")
    detail = {
        **verdict,
        "samples": [dataclasses.asdict(s) for s in observer.samples()],
        "wall_offset_s": observer.wall_offset_s,
    }
    path.write_text(json.dumps(detail, indent=2) + "\n", encoding="utf-8")
    verdict["path"] = str(path)
    return verdict


def _summary(verdict: dict[str, Any]) -> str:
    """One line a person reads first: failover against its bound, and what went wrong."""
    failover = verdict.get("failover_s")
    shown = f"new leader after {failover:.3f} s" if failover is not None else "no new leader"
    bound = verdict.get("failover_bound_s")
    text = f"{shown} (bound {bound} s)" if bound is not None else shown
    if verdict.get("problems"):
        text += "; " + "; ".join(str(p) for p in verdict["problems"])
    return text


def stop_observer(
    configuration: dict[str, Any] | None = None, secrets: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Stop the observer if one runs (safe in rollbacks: it never fails)."""
    global _observer
    with _lock:
        observer, _observer = _observer, None
    if observer is None:
        return {"stopped": False}
    observer.stop()
    return {"stopped": True}


def _current_observer() -> RaftObserver:
    with _lock:
        observer = _observer
    if observer is None:
        raise ActivityFailed("no Raft observer: call start_observer first")
    return observer


# -- the history recorder -----------------------------------------------------------------


def start_history(
    endpoints: list[str] | None = None,
    kind: str | None = None,
    keys: int | list[str] = 3,
    clients: int = 4,
    op_timeout_s: float = 1.0,
    mix: dict[str, float] | None = None,
    think_s: float = 0.0,
    seed: int | None = None,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Start `clients` concurrent clients on `keys` (a count gives fresh, absent keys)."""
    global _recorder
    kind = _kind(kind, configuration)
    endpoints = _endpoints(endpoints, kind, configuration)
    check_endpoints(kind, endpoints)
    key_names = fresh_keys(keys) if isinstance(keys, int) else list(keys)
    path = _unique(_out_dir(configuration), "raft-history", ".jsonl")
    try:
        recorder = HistoryRecorder(
            make_client(kind, endpoints, op_timeout_s),
            path,
            keys=key_names,
            clients=clients,
            op_timeout_s=op_timeout_s,
            mix=mix,
            think_s=think_s,
            seed=seed,
            meta={"store": kind},
        )
    except ValueError as exc:
        raise ActivityFailed(str(exc)) from exc
    with _lock:
        previous, _recorder = _recorder, recorder
    if previous is not None:
        previous.stop()
    recorder.start()
    return {
        "path": str(recorder.path),
        "meta_path": str(recorder.meta_path),
        "keys": key_names,
        "clients": clients,
    }


def stop_history(
    configuration: dict[str, Any] | None = None, secrets: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Stop the recorder; the history path, counts by status and by operation."""
    global _recorder
    with _lock:
        recorder, _recorder = _recorder, None
    if recorder is None:
        raise ActivityFailed("no history recorder: call start_history first")
    return recorder.stop()
