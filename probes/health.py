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
    """Wait up to `wait_s` for every process to run and every upstream to be healthy."""
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
