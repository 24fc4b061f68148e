"""Load balance across the workers (or nodes) that serve tasks: max/mean - 1 of requests served.

The seed held "load difference between nodes < 15%"; we hold 5% on skewed traffic (DESIGN
section 9). Counts come from the gateway's `gateway_requests_total{worker,status}` (2xx only:
a worker that fails fast must not look busy) as an increase over the window. Only the members
of the routing table count, and each counts even when Prometheus saw nothing for it: an idle
serving worker is exactly the imbalance this probe exists to catch. Workers that serve no task
(idle capacity) are left out.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from chaoslib.exceptions import ActivityFailed

from probes.migration import ROUTING_KEY, store_for, worker_location
from probes.prom import DEFAULT_TIMEOUT_S, PrometheusProbe, _resolve_url
from resilience.store_client import StoreUnavailable

__all__ = ["load_balance"]

GROUPINGS = ("worker", "node")


def max_over_mean_minus_1(counts: Mapping[str, float]) -> float | None:
    """max/mean - 1 of the counts: 0 is perfect balance; None when nothing was counted."""
    values = [float(v) for v in counts.values()]
    if not values:
        return None
    mean = math.fsum(values) / len(values)
    if mean <= 0:
        return None
    return max(values) / mean - 1.0


def routed_members(routing: Iterable[Mapping[str, Any]] | None) -> dict[str, str]:
    """Worker name -> node of the routing table's members; with tasks, only those serving one
    (`labels.task`), else every member (the cluster runs without controllers)."""
    entries = [e for e in routing or [] if e.get("name")]
    with_task = [e for e in entries if (e.get("labels") or {}).get("task")]
    chosen = with_task or entries
    out = {}
    for e in chosen:
        where = worker_location(str(e["name"]), e.get("labels"))
        out[str(e["name"])] = where[0] if where else str((e.get("labels") or {}).get("node", "?"))
    return out


def per_member(
    served: Mapping[str, float], members: Mapping[str, str], by: str = "worker"
) -> dict[str, float]:
    """Requests per routed worker (0 when none was counted) or summed per node."""
    if by not in GROUPINGS:
        raise ValueError(f"by must be one of {', '.join(GROUPINGS)}, got {by!r}")
    per_worker = {w: float(served.get(w, 0.0)) for w in sorted(members)}
    if by == "worker":
        return per_worker
    per_node: dict[str, float] = defaultdict(float)
    for worker, count in per_worker.items():
        per_node[members[worker]] += count
    return dict(sorted(per_node.items()))


def judge_balance(
    served: Mapping[str, float], members: Mapping[str, str], bound: float, by: str = "worker"
) -> dict[str, Any]:
    """The judged result from counts per worker and the routed members (pure)."""
    counts = per_member(served, members, by)
    figure = max_over_mean_minus_1(counts)
    ok = figure is not None and figure <= bound
    if figure is None:
        summary = f"no request served by the {len(counts)} routed {by}(s) in the window"
    else:
        busiest = max(counts, key=lambda k: counts[k])
        summary = (
            f"max/mean - 1 = {figure:.1%} over {len(counts)} {by}(s) (bound {bound:.1%}); "
            f"busiest {busiest} with {counts[busiest]:.0f} requests"
        )
    return {
        "ok": ok,
        "check": "load-balance",
        "max_over_mean_minus_1": figure,
        "bound": bound,
        "by": by,
        "per_member": counts,
        "ignored": sorted(w for w, n in served.items() if w not in members and n > 0),
        "summary": summary,
    }


def load_balance(
    window_s: float = 30,
    bound: float = 0.05,
    by: str = "worker",
    url: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """max/mean - 1 of the requests each routed worker (or node) served over the last
    `window_s` seconds; ok when it is at most `bound`.

    PromQL: ``sum by (worker) (increase(gateway_requests_total{status=~"2.."}[30s]))``.
    """
    if by not in GROUPINGS:
        raise ActivityFailed(f"by: {by!r} is not one of {', '.join(GROUPINGS)}")
    seconds = int(round(float(window_s)))
    if seconds < 1:
        raise ActivityFailed(f"window_s must be at least 1 second, got {window_s}")
    try:
        routing = store_for(configuration).get(ROUTING_KEY)
    except (StoreUnavailable, ValueError) as exc:
        raise ActivityFailed(f"cannot read {ROUTING_KEY}: {exc}") from None
    members = routed_members(routing)
    if not members:
        raise ActivityFailed(f"the routing table ({ROUTING_KEY}) lists no worker")
    promql = f'sum by (worker) (increase(gateway_requests_total{{status=~"2.."}}[{seconds}s]))'
    with PrometheusProbe(_resolve_url(url, configuration), timeout_s) as prom:
        series = prom.instant(promql)
    served = {
        labels["worker"]: value
        for labels, value in series
        if labels.get("worker") and math.isfinite(value)
    }
    if not any(served.get(w, 0) > 0 for w in members):
        raise ActivityFailed(
            f"Prometheus at {prom.url}: no request served by a routed worker in the last "
            f"{seconds}s ({promql!r}); is load running?"
        )
    result = judge_balance(served, members, float(bound), by)
    result.update(window_s=seconds, promql=promql, url=prom.url)
    return result
