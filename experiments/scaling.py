"""Autoscaling in experiments: turn the controllers' autoscaler on and off, and judge whether it
scaled out in time for the load's peak.

The leader controller scales `tasks.spec` by the policy under `autoscale.policy` (the knobs of
`resilience.autoscale.AutoscaleConfig`); no key means no autoscaling, so `disable_autoscaler`
is the rollback. Each decision is a `scale` event in `controller.events`, which is what
`scaled_out` reads: the replica count the controller asked for, and when.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from chaoslib.exceptions import ActivityFailed

from probes.migration import (
    EVENTS_KEY,
    read_cluster,
    serving_state,
    spec_task_ids,
    store_for,
)
from resilience.autoscale import AutoscaleConfig
from resilience.store_client import StoreUnavailable

__all__ = ["enable_autoscaler", "disable_autoscaler", "replicas", "scaled_out"]

POLICY_KEY = "autoscale.policy"
PEAK_BIN_S = 5.0


def _number(value: Any, what: str, whole: bool = False) -> float:
    if isinstance(value, bool):
        raise ActivityFailed(f"{what}: {value!r} is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ActivityFailed(f"{what}: {value!r} is not a number") from None
    if not math.isfinite(number) or (whole and number != int(number)):
        kind = "a whole number" if whole else "a finite number"
        raise ActivityFailed(f"{what}: {value!r} is not {kind}")
    return number


def autoscale_policy(
    target_qps_per_replica: Any,
    min_replicas: Any = 1,
    max_replicas: Any = 8,
    scale_in_cooldown_s: Any = 30,
    forecast_horizon_s: Any = 10,
) -> dict[str, Any]:
    """The policy document, validated by AutoscaleConfig; a bad value is a one-line error."""
    cooldown = _number(scale_in_cooldown_s, "scale_in_cooldown_s")
    horizon = _number(forecast_horizon_s, "forecast_horizon_s")
    if cooldown < 0 or horizon < 0:
        raise ActivityFailed("scale_in_cooldown_s and forecast_horizon_s must not be negative")
    try:
        config = AutoscaleConfig(
            target_qps_per_replica=_number(target_qps_per_replica, "target_qps_per_replica"),
            min_replicas=int(_number(min_replicas, "min_replicas", whole=True)),
            max_replicas=int(_number(max_replicas, "max_replicas", whole=True)),
            scale_in_cooldown_s=cooldown,
            forecast_horizon_s=horizon,
        )
    except ValueError as exc:
        raise ActivityFailed(f"autoscale policy: {exc}") from None
    return dataclasses.asdict(config)


def enable_autoscaler(
    target_qps_per_replica: float,
    min_replicas: int = 1,
    max_replicas: int = 8,
    scale_in_cooldown_s: float = 30,
    forecast_horizon_s: float = 10,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the autoscale policy the leader controller follows from its next decision on."""
    policy = autoscale_policy(
        target_qps_per_replica, min_replicas, max_replicas, scale_in_cooldown_s, forecast_horizon_s
    )
    try:
        store_for(configuration).put(POLICY_KEY, policy)
    except StoreUnavailable as exc:
        raise ActivityFailed(f"cannot write {POLICY_KEY}: {exc}") from None
    return {"policy": policy, "at": time.time()}


def disable_autoscaler(
    configuration: dict[str, Any] | None = None, secrets: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Delete the policy: the controller keeps the replicas it has and stops scaling."""
    store = store_for(configuration)
    try:
        existed = store.get(POLICY_KEY) is not None
        store.delete(POLICY_KEY)
    except StoreUnavailable as exc:
        raise ActivityFailed(f"cannot delete {POLICY_KEY}: {exc}") from None
    return {"deleted": existed, "at": time.time()}


def replicas(
    configuration: dict[str, Any] | None = None, secrets: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Desired replicas (`tasks.spec`) against those placed and routed now."""
    cluster = read_cluster(store_for(configuration))
    if cluster["spec"] is None:
        raise ActivityFailed("no tasks.spec in the store: the cluster runs no controllers")
    state = serving_state(cluster)
    return {
        "desired": len(spec_task_ids(cluster["spec"])),
        "placed": state["placed"],
        "serving": state["serving"],
        "at": time.time(),
    }


def load_peak(sent_at: Sequence[float], bin_s: float = PEAK_BIN_S) -> float | None:
    """Middle of the busiest `bin_s` span of request sends (the first one on a tie)."""
    if not sent_at:
        return None
    start = min(sent_at)
    bins = Counter(int((t - start) // bin_s) for t in sent_at)
    busiest = min(bins, key=lambda k: (-bins[k], k))
    return start + (busiest + 0.5) * bin_s


def judge_scale_out(
    events: Sequence[Mapping[str, Any]],
    min_replicas: int,
    since: float | None,
    peak_at: float | None,
    desired_now: int | None = None,
) -> dict[str, Any]:
    """Did a `scale` event since `since` reach `min_replicas`, and when against the peak (pure)."""
    scales = [  # replica decisions only; node additions are `scale` events without `to`
        e
        for e in events
        if e.get("kind") == "scale"
        and e.get("to") is not None
        and (since is None or float(e.get("at") or 0) >= since)
    ]
    scales.sort(key=lambda e: float(e["at"]))
    reached = next((e for e in scales if int(e.get("to") or 0) >= min_replicas), None)
    start_count = int(scales[0].get("from") or 0) if scales else desired_now
    reached_at = float(reached["at"]) if reached else None
    before_peak = None if reached_at is None or peak_at is None else round(peak_at - reached_at, 3)
    most = max((int(e.get("to") or 0) for e in scales), default=start_count)
    if reached is not None:
        summary = f"scaled out to {reached['to']} replicas (>= {min_replicas})"
        if before_peak is not None:
            side = "before" if before_peak >= 0 else "after"
            summary += f" {abs(before_peak):.1f} s {side} the load's peak"
    elif start_count is not None and start_count >= min_replicas:
        summary = f"already {start_count} replicas before any scale event: nothing scaled out"
    else:
        summary = f"never reached {min_replicas} replicas (most: {most})"
    return {
        "ok": reached is not None,
        "check": "scaled-out",
        "min_replicas": min_replicas,
        "reached_at": reached_at,
        "peak_at": peak_at,
        "seconds_before_peak": before_peak,
        "replicas_at_start": start_count,
        "max_replicas_seen": most,
        "scale_events": [dict(e) for e in scales],
        "since": since,
        "summary": summary,
    }


def _run_started_at(configuration: Mapping[str, Any] | None) -> float | None:
    configured = (configuration or {}).get("run_started_at")
    if configured is not None:
        return float(configured)
    from experiments.context import current_run

    run = current_run()
    return run.started_at if run is not None else None


def _sent_times(records_path: str | None, configuration: Mapping[str, Any] | None) -> list[float]:
    """Send times of the run's load records; none when the run has no records yet."""
    from probes.recovery import records_path_for
    from probes.slo import read_record_lines

    try:
        records, _ = read_record_lines(records_path_for(records_path, configuration))
    except ActivityFailed:
        return []
    return [float(r["sent_at"]) for r in records]


def scaled_out(
    min_replicas: int,
    since: float | None = None,
    records_path: str | None = None,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Judged: the controller scaled the replicas out to at least `min_replicas` since the run
    started (or `since`), and how long before (or after) the load's busiest moment."""
    wanted = int(_number(min_replicas, "min_replicas", whole=True))
    store = store_for(configuration)
    try:
        events = store.get(EVENTS_KEY) or []
        spec = store.get("tasks.spec")
    except (StoreUnavailable, ValueError) as exc:
        raise ActivityFailed(f"cannot read {EVENTS_KEY}: {exc}") from None
    if spec is None:
        raise ActivityFailed("no tasks.spec in the store: the cluster runs no controllers")
    start = float(since) if since is not None else _run_started_at(configuration)
    peak = load_peak(
        [t for t in _sent_times(records_path, configuration) if start is None or t >= start]
    )
    return judge_scale_out(events, wanted, start, peak, len(spec_task_ids(spec)))
