"""Probes of the recovery controllers: one of them leads, a standby takes over, repairs happen.

They read what the controllers publish (their `GET /status` and the `controller.events` list in
the store, docs/internals.md "Tasks and the controllers") and judge it against the fault the run
injected, so each answer says how long after the injection something happened.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
from chaoslib.exceptions import ActivityFailed

from resilience.state import read_state
from resilience.store_client import Store, StoreUnavailable

EVENTS_KEY = "controller.events"


def _store(configuration: dict[str, Any] | None) -> Store:
    endpoints = (configuration or {}).get("raft_endpoints") or (read_state() or {}).get(
        "raft_endpoints"
    )
    if not endpoints:
        raise ActivityFailed("no metadata store: configuration raft_endpoints is empty")
    return Store(list(endpoints))


def _controllers() -> list[dict[str, Any]]:
    state = read_state() or {}
    return [
        p for p in state.get("processes", []) if p.get("labels", {}).get("role") == "controller"
    ]


def _status(process: dict[str, Any]) -> dict[str, Any] | None:
    try:
        r = httpx.get(
            f"http://127.0.0.1:{process['ports']['http']}/status", timeout=1.0, trust_env=False
        )
        return r.json() if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def _latest_fault(fault_id: str | None) -> dict[str, Any]:
    from experiments.context import current_run

    run = current_run()
    faults = [f for f in (run.faults() if run else []) if f.get("injected_at")]
    if fault_id is not None:
        faults = [f for f in faults if f["id"] == fault_id]
    if not faults:
        raise ActivityFailed(
            f"no injected fault {fault_id!r} in this run" if fault_id else "no fault injected yet"
        )
    return max(faults, key=lambda f: f["injected_at"])


def _events(configuration: dict[str, Any] | None) -> list[dict[str, Any]]:
    try:
        return _store(configuration).get(EVENTS_KEY) or []
    except StoreUnavailable as exc:
        raise ActivityFailed(str(exc)) from None


def controllers_settled(
    wait_s: float = 15.0,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Steady state: exactly one controller leads and every task serves where it is assigned."""
    if not _controllers():
        raise ActivityFailed(
            "the cluster runs no controllers: start it with tasks (inference-chaos up --tasks N)"
        )
    deadline = time.monotonic() + float(wait_s)
    while True:
        statuses = {p["name"]: _status(p) for p in _controllers()}
        leaders = [n for n, s in statuses.items() if s and s.get("role") == "leader"]
        settled = len(leaders) == 1 and bool(statuses[leaders[0]].get("settled"))
        if settled or time.monotonic() > deadline:
            return {
                "ok": settled,
                "leaders": leaders,
                "statuses": statuses,
            }
        time.sleep(0.2)


def controller_failover(
    bound_s: float = 3.0,
    wait_s: float = 10.0,
    fault_id: str | None = None,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """After the leading controller was killed: how long until another one took the lead."""
    fault = _latest_fault(fault_id)
    victims = set(fault.get("victims") or [])
    injected = float(fault["injected_at"])
    deadline = time.monotonic() + float(wait_s)
    while True:
        leaders = [
            e
            for e in _events(configuration)
            if e.get("kind") == "leader" and e["at"] >= injected and e.get("id") not in victims
        ]
        if leaders or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    seconds = leaders[0]["at"] - injected if leaders else None
    ok = seconds is not None and seconds <= float(bound_s)
    return {
        "ok": ok,
        "check": "controller-failover",
        "verdict": "pass" if ok else "fail",
        "seconds": seconds,
        "bound_s": float(bound_s),
        "new_leader": leaders[0]["id"] if leaders else None,
        "killed": sorted(victims),
        "summary": (
            f"{leaders[0]['id']} took the lead {seconds:.2f}s after the kill (bound {bound_s}s)"
            if leaders
            else f"no other controller took the lead within {wait_s}s"
        ),
    }


def remediated(
    action: str,
    bound_s: float = 5.0,
    wait_s: float = 10.0,
    fault_id: str | None = None,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The controller repaired the fault's victim by `action` (restart: the worker process;
    cordon: its node) within `bound_s` of the injection."""
    if action not in ("restart", "cordon", "uncordon"):
        raise ActivityFailed(f"action: {action!r} is not restart, cordon or uncordon")
    fault = _latest_fault(fault_id)
    victims = set(fault.get("victims") or [])
    state = read_state() or {}
    nodes = {
        p["labels"].get("node") for p in state.get("processes", []) if p["name"] in victims
    } | set((fault.get("params") or {}).get("nodes") or [])
    injected = float(fault["injected_at"])
    deadline = time.monotonic() + float(wait_s)
    while True:
        found = [
            e
            for e in _events(configuration)
            if e.get("kind") == "remediation"
            and e.get("action") == action
            and e["at"] >= injected
            and (e.get("worker") in victims or e.get("node") in nodes)
        ]
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    seconds = found[0]["at"] - injected if found else None
    ok = seconds is not None and seconds <= float(bound_s) and found[0].get("ok", True)
    return {
        "ok": ok,
        "check": f"remediation-{action}",
        "verdict": "pass" if ok else "fail",
        "seconds": seconds,
        "bound_s": float(bound_s),
        "events": found,
        "summary": (
            f"{action} of {found[0].get('worker') or found[0].get('node')} "
            f"{seconds:.2f}s after the fault"
            if found
            else f"no {action} of {', '.join(sorted(victims))} within {wait_s}s"
        ),
    }
