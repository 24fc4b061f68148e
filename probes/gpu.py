"""GPU health and serving-regression probes, from dcgm-exporter and vLLM metrics in Prometheus.

Each probe asks Prometheus through `probes.prom.PrometheusProbe` (own deadline and retry) and
judges what it gets: the output carries `ok`, a `check` name and a one-line `summary`, so the
verdict control weighs it like any other judging probe. A probe that gets no series to judge
raises ActivityFailed: "no GPU reported anything" must never read as "every GPU is healthy".

The thresholds are the seed's alert values (util > 85% sustained, p95 latency > 1.2x baseline,
throughput down > 5%); `resilience/alerts/inference-chaos.rules.yml` states the same rules as
Prometheus alerts. PromQL stays the same on a real cluster: dcgm-exporter labels a GPU with
`gpu`, `UUID` and `Hostname`; in the embedded cluster Prometheus also adds the scrape target's
`node`, `instance_name` and `gpu` (the exporter's own `gpu` then reads `exported_gpu`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from chaoslib.exceptions import ActivityFailed

from probes.prom import DEFAULT_TIMEOUT_S, PrometheusProbe, _resolve_url

__all__ = [
    "xid_seen",
    "gpu_throttled",
    "gpu_memory",
    "gpu_util_high",
    "latency_regression",
    "throughput_drop",
]

XID = "DCGM_FI_DEV_XID_ERRORS"
GPU_UTIL = "DCGM_FI_DEV_GPU_UTIL"
SM_CLOCK = "DCGM_FI_DEV_SM_CLOCK"
GPU_TEMP = "DCGM_FI_DEV_GPU_TEMP"
FB_USED = "DCGM_FI_DEV_FB_USED"
FB_FREE = "DCGM_FI_DEV_FB_FREE"
LATENCY_HISTOGRAMS = {
    "e2e": "vllm:e2e_request_latency_seconds",
    "ttft": "vllm:time_to_first_token_seconds",
}
GENERATION_TOKENS = "vllm:generation_tokens_total"

# XIDs after which the GPU needs a reset or is gone (NVIDIA's XID catalogue): 13 graphics engine
# exception, 31 MMU fault, 43 channel stopped, 48 double-bit ECC, 79 fell off the bus, 95
# uncontained ECC. The alert rule XIDFatal uses the same list.
FATAL_XIDS = (13, 31, 43, 48, 79, 95)

Series = list[tuple[dict[str, str], float]]


# --- helpers -----------------------------------------------------------------------------------


def _selector(selector: str | None) -> str:
    """Extra label matchers as PromQL braces: 'app="inference-worker"' -> '{app="..."}'."""
    selector = (selector or "").strip().strip("{}").strip()
    return f"{{{selector}}}" if selector else ""


def _whole_seconds(seconds: float, name: str) -> int:
    whole = int(round(seconds))
    if whole < 1:
        raise ActivityFailed(f"{name} must be at least 1 second, got {seconds}")
    return whole


def gpu_identity(labels: dict[str, str]) -> dict[str, str | None]:
    """Which GPU a series belongs to, from dcgm-exporter's labels or the embedded cluster's."""
    return {
        "node": labels.get("node") or labels.get("Hostname") or labels.get("instance"),
        "gpu": labels.get("exported_gpu") or labels.get("gpu"),
        "uuid": labels.get("UUID"),
        "instance": labels.get("instance_name") or labels.get("instance"),
    }


def _on_node(labels: dict[str, str], node: str | None) -> bool:
    return node is None or node in (labels.get("node"), labels.get("Hostname"))


def _name(gpu: dict[str, Any]) -> str:
    return f"{gpu['node']}/gpu{gpu['gpu']}"


def _query(
    promql: str, url: str | None, at: float | None, timeout_s: float, configuration: dict | None
) -> tuple[Series, str]:
    """(labels, value) per series of one instant query, and the URL that answered."""
    with PrometheusProbe(_resolve_url(url, configuration), timeout_s) as prom:
        return prom.instant(promql, at), prom.url


def _per_gpu(series: Series, node: str | None, promql: str, url: str) -> list[tuple[dict, float]]:
    """Each GPU's finite value, filtered by node; ActivityFailed when there is none to judge."""
    gpus = [
        (gpu_identity(labels), value)
        for labels, value in series
        if _on_node(labels, node) and math.isfinite(value)
    ]
    if not gpus:
        where = f" on node {node!r}" if node else ""
        raise ActivityFailed(f"Prometheus at {url}: no GPU series{where} for {promql!r}")
    return sorted(gpus, key=lambda item: (str(item[0]["node"]), str(item[0]["gpu"])))


def _scalar(series: Series) -> float | None:
    """The one finite value of an aggregated query, or None (no data, NaN)."""
    finite = [value for _, value in series if math.isfinite(value)]
    return finite[0] if len(finite) == 1 else None


def _xid_codes(xid: int | Iterable[int] | None) -> list[int]:
    if xid is None:
        return []
    codes = [int(xid)] if isinstance(xid, int | str) else [int(code) for code in xid]
    if any(code <= 0 for code in codes):
        raise ActivityFailed(f"XID codes are positive integers, got {codes}")
    return sorted(set(codes))


# --- GPU health --------------------------------------------------------------------------------


def xid_promql(codes: list[int], within_s: int, selector: str | None = None) -> str:
    """PromQL for the XIDs each GPU reported over the last `within_s` seconds."""
    metric = f"{XID}{_selector(selector)}"
    if not codes:
        return f"max_over_time({metric}[{within_s}s])"
    matches = " or ".join(f"{metric} == {code}" for code in codes)
    return f"max_over_time(({matches})[{within_s}s:])"


def xid_seen(
    xid: int | list[int] | None = None,
    node: str | None = None,
    within_s: float = 60,
    expect: bool = False,
    selector: str | None = None,
    url: str | None = None,
    at: float | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    configuration: dict | None = None,
    secrets: dict | None = None,
) -> dict[str, Any]:
    """Which GPUs reported an XID (any, or one of `xid`) in the `within_s` seconds before `at`.

    PromQL, any XID: ``max_over_time(DCGM_FI_DEV_XID_ERRORS[60s])`` (> 0 is an XID: the gauge
    holds the last XID code). Given codes: ``max_over_time((DCGM_FI_DEV_XID_ERRORS == 79 or
    ...)[60s:])``, a subquery so that a later, different XID does not hide the one asked for.
    `ok` means no XID was seen; with `expect=True` (a fault was injected) it means one was.
    """
    codes = _xid_codes(xid)
    within = _whole_seconds(within_s, "within_s")
    every = xid_promql([], within, selector)
    with PrometheusProbe(_resolve_url(url, configuration), timeout_s) as prom:
        watched = _per_gpu(prom.instant(every, at), node, every, prom.url)
        matched = prom.instant(xid_promql(codes, within, selector), at) if codes else None
    if matched is None:
        hits = [(gpu, value) for gpu, value in watched if value > 0]
    else:
        hits = [(gpu_identity(labels), v) for labels, v in matched if _on_node(labels, node)]
    seen = [{**gpu, "xid": int(value)} for gpu, value in hits]
    asked = f"XID {'/'.join(map(str, codes))}" if codes else "an XID"
    if seen:
        names = ", ".join(f"{_name(g)} (XID {g['xid']})" for g in seen)
        summary = f"{len(seen)} of {len(watched)} GPUs reported {asked} in {within}s: {names}"
    else:
        summary = f"none of {len(watched)} GPUs reported {asked} in {within}s"
    return {
        "ok": bool(seen) if expect else not seen,
        "check": "xid_seen",
        "summary": summary,
        "seen": seen,
        "gpus_watched": len(watched),
        "xid": codes or None,
        "fatal": sorted({g["xid"] for g in seen} & set(FATAL_XIDS)),
        "expect": expect,
        "within_s": within,
        "promql": xid_promql(codes, within, selector),
        "url": prom.url,
    }


def gpu_throttled(
    min_sm_clock_mhz: float = 1400,
    max_temp_c: float = 85,
    within_s: float = 60,
    node: str | None = None,
    selector: str | None = None,
    url: str | None = None,
    at: float | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    expect_throttled: bool = False,
    configuration: dict | None = None,
    secrets: dict | None = None,
) -> dict[str, Any]:
    """GPUs whose SM clock fell below `min_sm_clock_mhz` or whose temperature rose above
    `max_temp_c` at any scrape in the window (an H100 boosts to 1980 MHz; its base is ~1590).
    `ok` means none throttled, or with `expect_throttled` (an experiment that throttles a GPU
    on purpose and must see it) that some did.

    PromQL: ``min_over_time(DCGM_FI_DEV_SM_CLOCK[60s])`` and
    ``max_over_time(DCGM_FI_DEV_GPU_TEMP[60s])``, judged per GPU.
    """
    within = _whole_seconds(within_s, "within_s")
    sel = _selector(selector)
    promql = {
        "sm_clock": f"min_over_time({SM_CLOCK}{sel}[{within}s])",
        "temperature": f"max_over_time({GPU_TEMP}{sel}[{within}s])",
    }
    with PrometheusProbe(_resolve_url(url, configuration), timeout_s) as prom:
        clocks = _per_gpu(prom.instant(promql["sm_clock"], at), node, promql["sm_clock"], prom.url)
        temps = {
            _name(gpu): value
            for gpu, value in _per_gpu(
                prom.instant(promql["temperature"], at), node, promql["temperature"], prom.url
            )
        }
    gpus, throttled = [], []
    for gpu, clock in clocks:
        temp = temps.get(_name(gpu))
        reasons = []
        if clock < min_sm_clock_mhz:
            reasons.append(f"SM clock {clock:g} MHz < {min_sm_clock_mhz:g}")
        if temp is not None and temp > max_temp_c:
            reasons.append(f"{temp:g} C > {max_temp_c:g}")
        entry = {**gpu, "min_sm_clock_mhz": clock, "max_temp_c": temp, "reasons": reasons}
        gpus.append(entry)
        if reasons:
            throttled.append(entry)
    if throttled:
        detail = "; ".join(f"{_name(g)}: {', '.join(g['reasons'])}" for g in throttled)
        summary = f"{len(throttled)} of {len(gpus)} GPUs throttled in {within}s: {detail}"
    else:
        summary = f"none of {len(gpus)} GPUs throttled in {within}s"
    return {
        "ok": bool(throttled) if expect_throttled else not throttled,
        "check": "gpu_throttled",
        "summary": summary,
        "throttled": throttled,
        "gpus": gpus,
        "min_sm_clock_mhz": min_sm_clock_mhz,
        "max_temp_c": max_temp_c,
        "within_s": within,
        "promql": promql,
        "url": prom.url,
    }


def gpu_memory(
    max_used_share: float = 0.95,
    node: str | None = None,
    selector: str | None = None,
    url: str | None = None,
    at: float | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    expect_over: bool = False,
    configuration: dict | None = None,
    secrets: dict | None = None,
) -> dict[str, Any]:
    """Framebuffer (HBM) used share per GPU; above `max_used_share` fails (with `expect_over`,
    an experiment that fills HBM on purpose, none above it fails: the pressure went unseen).

    vLLM preallocates 90% of HBM at start, so a healthy serving GPU sits near 0.9.
    PromQL: ``DCGM_FI_DEV_FB_USED / (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE)``.
    """
    if not 0.0 < max_used_share <= 1.0:
        raise ActivityFailed(f"max_used_share must be within (0, 1], got {max_used_share}")
    sel = _selector(selector)
    promql = f"{FB_USED}{sel} / ({FB_USED}{sel} + {FB_FREE}{sel})"
    series, answered = _query(promql, url, at, timeout_s, configuration)
    gpus = [{**gpu, "used_share": share} for gpu, share in _per_gpu(series, node, promql, answered)]
    full = [g for g in gpus if g["used_share"] > max_used_share]
    highest = max(gpus, key=lambda g: g["used_share"])
    summary = (
        f"{len(full)} of {len(gpus)} GPUs above {max_used_share:.0%} HBM used"
        f" (highest {_name(highest)} at {highest['used_share']:.1%})"
    )
    return {
        "ok": bool(full) if expect_over else not full,
        "check": "gpu_memory",
        "summary": summary,
        "over": full,
        "gpus": gpus,
        "max_used_share": max_used_share,
        "promql": promql,
        "url": answered,
    }


def gpu_util_high(
    threshold: float = 85,
    for_s: float = 60,
    node: str | None = None,
    selector: str | None = None,
    url: str | None = None,
    at: float | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    configuration: dict | None = None,
    secrets: dict | None = None,
) -> dict[str, Any]:
    """GPUs busier than `threshold` percent at every scrape of the last `for_s` seconds.

    The seed's alert "GPU utilisation above 85%", sustained rather than a single spike.
    PromQL: ``min_over_time(DCGM_FI_DEV_GPU_UTIL[60s])``, > threshold fails that GPU.
    """
    window = _whole_seconds(for_s, "for_s")
    promql = f"min_over_time({GPU_UTIL}{_selector(selector)}[{window}s])"
    series, answered = _query(promql, url, at, timeout_s, configuration)
    gpus = [
        {**gpu, "min_util_percent": util} for gpu, util in _per_gpu(series, node, promql, answered)
    ]
    hot = [g for g in gpus if g["min_util_percent"] > threshold]
    if hot:
        names = ", ".join(f"{_name(g)} ({g['min_util_percent']:g}%)" for g in hot)
        summary = f"{len(hot)} of {len(gpus)} GPUs above {threshold:g}% for {window}s: {names}"
    else:
        summary = f"none of {len(gpus)} GPUs above {threshold:g}% for all of {window}s"
    return {
        "ok": not hot,
        "check": "gpu_util_high",
        "summary": summary,
        "hot": hot,
        "gpus": gpus,
        "threshold": threshold,
        "for_s": window,
        "promql": promql,
        "url": answered,
    }


# --- serving regressions against a baseline ------------------------------------------------------


def latency_promql(
    metric: str, quantile: float, window_s: int, offset_s: int = 0, selector: str | None = None
) -> str:
    """PromQL for the cluster-wide latency quantile over a window, `offset_s` seconds back."""
    if metric not in LATENCY_HISTOGRAMS:
        raise ActivityFailed(f"metric must be one of {sorted(LATENCY_HISTOGRAMS)}, got {metric!r}")
    offset = f" offset {offset_s}s" if offset_s else ""
    buckets = f"{LATENCY_HISTOGRAMS[metric]}_bucket{_selector(selector)}"
    return f"histogram_quantile({quantile:g}, sum by (le) (rate({buckets}[{window_s}s]{offset})))"


def latency_regression(
    percent: float = 20,
    window_s: float = 60,
    baseline_offset_s: float = 300,
    quantile: float = 0.95,
    metric: str = "e2e",
    selector: str | None = None,
    url: str | None = None,
    at: float | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    configuration: dict | None = None,
    secrets: dict | None = None,
) -> dict[str, Any]:
    """p95 latency now against the same window `baseline_offset_s` earlier; fails when it is
    more than `percent` above the baseline (the seed's "latency up more than 20%").

    PromQL (metric "e2e"; "ttft" uses vllm:time_to_first_token_seconds):
    ``histogram_quantile(0.95, sum by (le) (rate(vllm:e2e_request_latency_seconds_bucket[60s])))``
    and the same with ``[60s] offset 300s``. No finished request in either window is
    ActivityFailed: there is nothing to compare.
    """
    if not 0.0 < quantile < 1.0:
        raise ActivityFailed(f"quantile must be within (0, 1), got {quantile}")
    window = _whole_seconds(window_s, "window_s")
    offset = _whole_seconds(baseline_offset_s, "baseline_offset_s")
    promql = {
        "now": latency_promql(metric, quantile, window, 0, selector),
        "baseline": latency_promql(metric, quantile, window, offset, selector),
    }
    with PrometheusProbe(_resolve_url(url, configuration), timeout_s) as prom:
        now = _scalar(prom.instant(promql["now"], at))
        baseline = _scalar(prom.instant(promql["baseline"], at))
    if now is None or baseline is None:
        missing = "now" if now is None else "baseline"
        raise ActivityFailed(
            f"Prometheus at {prom.url}: no {metric} latency {missing} ({promql[missing]!r}): "
            "no request finished in that window"
        )
    change = (now / baseline - 1.0) * 100.0 if baseline > 0 else math.inf
    ok = now <= baseline * (1.0 + percent / 100.0)
    label = f"p{quantile * 100:g} {metric}"
    summary = (
        f"{label} {now:.3f}s vs baseline {baseline:.3f}s ({change:+.1f}%, limit +{percent:g}%)"
    )
    return {
        "ok": ok,
        "check": "latency_regression",
        "summary": summary,
        "metric": metric,
        "quantile": quantile,
        "now_s": now,
        "baseline_s": baseline,
        "change_percent": change if math.isfinite(change) else None,
        "limit_percent": percent,
        "window_s": window,
        "baseline_offset_s": offset,
        "promql": promql,
        "url": prom.url,
    }


def throughput_promql(window_s: int, offset_s: int = 0, selector: str | None = None) -> str:
    """PromQL for the cluster's generated tokens per second over a window."""
    offset = f" offset {offset_s}s" if offset_s else ""
    return f"sum(rate({GENERATION_TOKENS}{_selector(selector)}[{window_s}s]{offset}))"


def throughput_drop(
    percent: float = 5,
    window_s: float = 60,
    baseline_offset_s: float = 300,
    selector: str | None = None,
    url: str | None = None,
    at: float | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    configuration: dict | None = None,
    secrets: dict | None = None,
) -> dict[str, Any]:
    """Generated tokens/s now against the same window `baseline_offset_s` earlier; fails when
    it dropped by more than `percent` (the seed's "throughput down more than 5%").

    PromQL: ``sum(rate(vllm:generation_tokens_total[60s]))`` and the same with
    ``[60s] offset 300s``. No series now counts as 0 tokens/s (every worker gone); no tokens
    in the baseline is ActivityFailed: there is nothing to compare.
    """
    window = _whole_seconds(window_s, "window_s")
    offset = _whole_seconds(baseline_offset_s, "baseline_offset_s")
    promql = {
        "now": throughput_promql(window, 0, selector),
        "baseline": throughput_promql(window, offset, selector),
    }
    with PrometheusProbe(_resolve_url(url, configuration), timeout_s) as prom:
        now = _scalar(prom.instant(promql["now"], at))
        baseline = _scalar(prom.instant(promql["baseline"], at))
    if not baseline:
        raise ActivityFailed(
            f"Prometheus at {prom.url}: no baseline throughput ({promql['baseline']!r} gave "
            f"{'no data' if baseline is None else 0})"
        )
    now = now or 0.0
    change = (now / baseline - 1.0) * 100.0
    ok = now >= baseline * (1.0 - percent / 100.0)
    summary = f"{now:.1f} tokens/s vs baseline {baseline:.1f} ({change:+.1f}%, limit -{percent:g}%)"
    return {
        "ok": ok,
        "check": "throughput_drop",
        "summary": summary,
        "now_tokens_per_s": now,
        "baseline_tokens_per_s": baseline,
        "change_percent": change,
        "limit_percent": percent,
        "window_s": window,
        "baseline_offset_s": offset,
        "promql": promql,
        "url": prom.url,
    }
