"""Error-budget burn rate over a short window, from the gateway's request counter.

The SRE workbook's fast-burn rule: with an availability target `slo` the error budget is
`1 - slo`; a burn rate of 1 spends it exactly over the SLO period, 14.4 spends 2% of a 30-day
budget in one hour. A chaos run that burns faster than its threshold is hurting users more
than the experiment is worth, which is why a stop condition (`experiments.stop_condition`)
aborts on it.

The counts come from Prometheus, not from the load generator's records, so the same queries
judge the embedded cluster and a Kubernetes cluster: errors are every outcome of
`gateway_requests_total` that is not 2xx (HTTP errors, `stream_error`, `client_closed`, as the
availability probes count them), over `increase()` of the window. increase() extrapolates to
the window's edges, so counts are rounded to whole requests, and it does not count a series'
first sample: the first errors of a new status label show up one scrape late.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from chaoslib.exceptions import ActivityFailed

from probes.prom import GATEWAY_COUNTER, PrometheusProbe, _resolve_url

__all__ = ["measure_burn_rate"]

GATEWAY_ERRORS = 'status!~"2.."'
DEFAULT_POLL_TIMEOUT_S = 2.0


def error_budget(slo: float) -> float:
    """The share of requests an SLO allows to fail."""
    if not 0.0 < slo < 1.0:
        raise ValueError(f"slo must be within (0, 1), got {slo!r}")
    return 1.0 - slo


def burn_rate(errors: float, requests: float, slo: float) -> float | None:
    """How many times faster than the budget allows errors arrive; None without requests."""
    if requests <= 0:
        return None
    return (min(errors, requests) / requests) / error_budget(slo)


def prom_range(window_s: float) -> str:
    """A PromQL range for `window_s`: whole seconds as "30s", anything finer in milliseconds."""
    if not window_s > 0:
        raise ValueError(f"window must be positive, got {window_s!r}")
    millis = round(window_s * 1000)
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def burn_rate_queries(
    window_s: float, counter: str = GATEWAY_COUNTER, errors_selector: str = GATEWAY_ERRORS
) -> dict[str, str]:
    """The two instant queries: failed requests and all requests in the window."""
    span = prom_range(window_s)
    return {
        "errors": f"sum(increase({counter}{{{errors_selector}}}[{span}]))",
        "requests": f"sum(increase({counter}[{span}]))",
    }


def judge(
    errors: float,
    requests: float,
    slo: float,
    max_burn_rate: float,
    min_requests: int,
) -> dict[str, Any]:
    """Counts -> burn rate and whether it breaches; fewer than `min_requests` is never judged
    (three errors in the first five requests after a quiet spell say little)."""
    requests_n = max(0, int(round(requests)))
    errors_n = min(max(0, int(round(errors))), requests_n)
    rate = burn_rate(errors_n, requests_n, slo)
    judged = requests_n >= min_requests and rate is not None
    return {
        "burn_rate": rate,
        "error_ratio": errors_n / requests_n if requests_n else None,
        "requests": requests_n,
        "errors": errors_n,
        "judged": judged,
        "breached": bool(judged and rate is not None and rate > max_burn_rate),
    }


def describe(result: Mapping[str, Any]) -> str:
    """One line with the figures, e.g. "burn rate 35.2x > 14.4x over 30s (14/412 failed)"."""
    rate, limit = result.get("burn_rate"), result.get("max_burn_rate")
    window = prom_range(float(result.get("window_s") or 1))
    counts = f"{result.get('errors')}/{result.get('requests')} failed"
    if rate is None:
        return f"no requests over {window}"
    if not result.get("judged"):
        return f"burn rate {rate:.1f}x over {window}, not judged ({counts}, fewer than minimum)"
    sign = ">" if result.get("breached") else "<="
    shown = f"{limit:g}x" if isinstance(limit, int | float) else "the limit"
    return f"burn rate {rate:.1f}x {sign} {shown} over {window} ({counts})"


def _count(prom: PrometheusProbe, promql: str, at: float) -> float:
    """A sum over the window; no series yet (no request had that outcome) is zero."""
    values = prom.instant(promql, at)
    if not values or not math.isfinite(values[0][1]):
        return 0.0
    return values[0][1]


def measure_burn_rate(
    window_s: float = 30.0,
    slo: float = 0.999,
    max_burn_rate: float = 14.4,
    min_requests: int = 20,
    url: str | None = None,
    at: float | None = None,
    timeout_s: float = DEFAULT_POLL_TIMEOUT_S,
    configuration: dict | None = None,
    secrets: dict | None = None,
) -> dict[str, Any]:
    """The burn rate over the `window_s` seconds before `at` (default now), judged against
    `max_burn_rate`. Usable as a probe too: `ok` is false when it breaches.

    Returns {burn_rate, error_ratio, requests, errors, judged, breached, ...}; burn_rate and
    error_ratio are None without requests. Prometheus failures raise ActivityFailed.
    """
    try:
        budget = error_budget(float(slo))
        queries = burn_rate_queries(float(window_s))
    except ValueError as exc:
        raise ActivityFailed(f"burn rate: {exc}") from None
    url = _resolve_url(url, configuration)
    at = time.time() if at is None else float(at)
    with PrometheusProbe(url, timeout_s) as prom:
        requests = _count(prom, queries["requests"], at)
        errors = _count(prom, queries["errors"], at) if requests > 0 else 0.0
    result = judge(errors, requests, float(slo), float(max_burn_rate), int(min_requests))
    result.update(
        check="burn-rate",
        ok=not result["breached"],
        slo=float(slo),
        error_budget=budget,
        max_burn_rate=float(max_burn_rate),
        min_requests=int(min_requests),
        window_s=float(window_s),
        at=at,
        promql=queries,
        url=prom.url,
    )
    result["summary"] = describe(result)
    return result
