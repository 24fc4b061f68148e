"""Is the target whole? Every process alive and every worker in the gateway's rotation.

Used in the steady-state hypothesis: before the method it says the cluster is fit to be
broken, after the method it says the cluster healed (the victim restarted and is routed to).
"""

from __future__ import annotations

import time
from typing import Any

import httpx
from chaoslib.exceptions import ActivityFailed

__all__ = ["cluster_healthy"]


def cluster_healthy(
    wait_s: float = 10.0,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Wait up to `wait_s` for every process to run and every upstream to be healthy (on
    Kubernetes: every pod of the run's namespaces Ready)."""
    if (configuration or {}).get("target") == "kubernetes":
        return _kubernetes_healthy(wait_s, configuration or {})
    from resilience.state import pid_alive, read_state

    deadline = time.monotonic() + wait_s
    problems: list[str] = ["not checked"]
    while time.monotonic() < deadline:
        state = read_state()
        if not state:
            raise ActivityFailed("the embedded cluster is not running")
        problems = [
            f"{p['name']} is not running"
            for p in state["processes"]
            if not (p.get("pid") and pid_alive(p["pid"]))
        ]
        try:
            r = httpx.get(state["gateway_url"] + "/upstreams", timeout=1.0, trust_env=False)
            r.raise_for_status()
            upstreams: dict[str, dict[str, Any]] = r.json()
            problems += [
                f"{name} is out of rotation"
                for name, u in upstreams.items()
                if not u.get("healthy", False) or u.get("ejected")
            ]
        except (httpx.HTTPError, ValueError) as exc:
            problems.append(f"gateway {state['gateway_url']} did not answer: {exc}")
        if not problems:
            return {"ok": True, "processes": len(state["processes"]), "problems": []}
        time.sleep(0.2)
    return {"ok": False, "problems": problems}


def _upstream_problems(gateway_url: str) -> list[str]:
    try:
        r = httpx.get(gateway_url.rstrip("/") + "/upstreams", timeout=1.0, trust_env=False)
        r.raise_for_status()
        upstreams: dict[str, dict[str, Any]] = r.json()
    except (httpx.HTTPError, ValueError) as exc:
        return [f"gateway {gateway_url} did not answer: {exc}"]
    return [
        f"{name} is out of rotation"
        for name, u in upstreams.items()
        if not u.get("healthy", False) or u.get("ejected")
    ]


def pod_problems(pods: list[Any]) -> list[str]:
    """What keeps pods from being whole: not Running, or a container not ready."""
    problems = []
    for pod in pods:
        name = f"{pod.metadata.namespace}/{pod.metadata.name}"
        if pod.metadata.deletion_timestamp is not None:
            problems.append(f"{name} is terminating")
            continue
        phase = pod.status.phase if pod.status else None
        if phase == "Succeeded":
            continue
        if phase != "Running":
            problems.append(f"{name} is {phase or 'unknown'}")
            continue
        unready = [c.name for c in (pod.status.container_statuses or []) if not c.ready]
        if unready:
            problems.append(f"{name}: container(s) {', '.join(unready)} not ready")
    return problems


def _kubernetes_healthy(wait_s: float, configuration: dict[str, Any]) -> dict[str, Any]:
    from experiments.backends import BackendError, backend_for

    try:
        backend = backend_for(configuration)
    except BackendError as exc:
        raise ActivityFailed(str(exc)) from None
    kube, namespaces = backend.kube, backend.settings.namespaces
    deadline = time.monotonic() + wait_s
    problems: list[str] = ["not checked"]
    pods: list[Any] = []
    while time.monotonic() < deadline:
        try:
            pods = [p for ns in namespaces for p in kube.core.list_namespaced_pod(ns).items]
            problems = pod_problems(pods)
        except Exception as exc:  # the API server may blink; judged at the deadline
            problems = [f"listing pods failed: {type(exc).__name__}: {exc}"]
        if configuration.get("gateway_url"):
            problems += _upstream_problems(str(configuration["gateway_url"]))
        if not problems:
            return {"ok": True, "pods": len(pods), "problems": []}
        time.sleep(0.5)
    return {"ok": False, "problems": problems}
