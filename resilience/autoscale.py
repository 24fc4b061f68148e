"""How many replicas to run: the seed's scale-factor rule, made sane.

The seed scaled *out* when the current QPS fell *below* 80% of the target, which is backwards.
The rule here:

- Capacity: one replica serves `target_qps_per_replica` at full load; we plan to run it at
  `target_utilisation` (0.8), so desired = ceil(qps / (target_qps_per_replica * 0.8)), clamped to
  [min_replicas, max_replicas].
- Scale out at once, to the larger of what the latest demand and a short-horizon forecast need.
  The forecast is Holt's linear method (EWMA of level and trend) over the last `forecast_window`
  samples, projected `forecast_horizon_s` ahead, so a rising spike gets replicas before its peak
  (a new replica needs time to load its model). A falling trend never lowers the target.
- Scale in only when the demand stayed low for the whole `scale_in_cooldown_s`, and only down to
  the largest count that every sample in that window fits at `scale_in_utilisation` (0.65 < 0.8)
  and that every forecast made in that window asked for (so a forecast scale-out is not undone
  before a whole cool-down has passed).
  The band between 0.65 and 0.8 is the hysteresis: a load that wobbles around a boundary, or a dip
  shorter than the cool-down, never removes a replica it will want back a minute later.

`decide` keeps no state: a controller that just won leader election decides from the samples it
reads, exactly as the old leader would have.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class AutoscaleConfig:
    """The knobs; defaults suit a replica that takes about a minute to come up."""

    target_qps_per_replica: float
    min_replicas: int = 1
    max_replicas: int = 64
    target_utilisation: float = 0.8
    scale_in_utilisation: float = 0.65
    scale_in_cooldown_s: float = 300.0
    forecast_horizon_s: float = 60.0
    forecast_window: int = 12
    smoothing_level: float = 0.5
    smoothing_trend: float = 0.3

    def __post_init__(self) -> None:
        if self.target_qps_per_replica <= 0:
            raise ValueError("target_qps_per_replica must be positive")
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ValueError("need 1 <= min_replicas <= max_replicas")
        if not 0 < self.scale_in_utilisation < self.target_utilisation <= 1:
            raise ValueError("need 0 < scale_in_utilisation < target_utilisation <= 1")


@dataclass(frozen=True)
class Decision:
    """The replica count to run and a short reason, for the controller's log and the report."""

    replicas: int
    reason: str
    forecast_qps: float | None = None

    def to_json(self) -> dict[str, object]:
        return {"replicas": self.replicas, "reason": self.reason, "forecast_qps": self.forecast_qps}


def holt_forecast(
    samples: Sequence[tuple[float, float]], horizon_s: float, alpha: float, beta: float
) -> float:
    """Holt's linear forecast `horizon_s` after the last (time, value) sample; needs 2 or more.

    The trend is kept per second (each step divided by its time gap), so uneven scrape
    intervals do not distort it.
    """
    (t0, v0), (t1, v1) = samples[0], samples[1]
    level, trend = v0, (v1 - v0) / max(t1 - t0, 1e-9)
    previous_t = t0
    for t, value in samples[1:]:
        dt = max(t - previous_t, 1e-9)
        predicted = level + trend * dt
        new_level = alpha * value + (1 - alpha) * predicted
        trend = beta * (new_level - level) / dt + (1 - beta) * trend
        level, previous_t = new_level, t
    return level + trend * horizon_s


class Autoscaler:
    """Turns QPS samples into a replica count, with forecast scale-out and hysteresis scale-in."""

    def __init__(self, config: AutoscaleConfig) -> None:
        self.config = config

    def replicas_for(self, qps: float, utilisation: float | None = None) -> int:
        """Replicas needed so each runs at `utilisation` (default the target), unclamped."""
        per_replica = self.config.target_qps_per_replica * (
            utilisation or self.config.target_utilisation
        )
        return max(0, math.ceil(max(qps, 0.0) / per_replica - 1e-9))

    def clamp(self, replicas: int) -> int:
        return min(self.config.max_replicas, max(self.config.min_replicas, replicas))

    def _forecast_at(self, samples: Sequence[tuple[float, float]], end: int) -> float | None:
        """The forecast as it was made at sample `end` (inclusive)."""
        cfg = self.config
        recent = samples[max(0, end + 1 - cfg.forecast_window) : end + 1]
        if len(recent) < 2:
            return None
        return holt_forecast(
            recent, cfg.forecast_horizon_s, cfg.smoothing_level, cfg.smoothing_trend
        )

    def _peak_need_since(self, samples: Sequence[tuple[float, float]], start: float) -> int:
        """The most replicas any moment since `start` asked for: its demand at the scale-in
        utilisation, or its forecast at the target one. Scale-in never goes below this, so a
        forecast that just scaled out cannot be undone before a whole cool-down has passed."""
        need = 0
        for index, (t, qps) in enumerate(samples):
            if t < start:
                continue
            need = max(need, self.replicas_for(qps, self.config.scale_in_utilisation))
            forecast = self._forecast_at(samples, index)
            if forecast is not None:
                need = max(need, self.replicas_for(forecast))
        return need

    def decide(
        self, now: float, qps_samples: Sequence[tuple[float, float]], current_replicas: int
    ) -> Decision:
        """The replica count for `now`, from (time, qps) samples in time order."""
        cfg = self.config
        samples = [(t, q) for t, q in qps_samples if t <= now]
        if not samples:
            clamped = self.clamp(current_replicas)
            reason = "hold: no samples" if clamped == current_replicas else "clamp"
            return Decision(clamped, reason)

        latest = samples[-1][1]
        forecast = self._forecast_at(samples, len(samples) - 1)
        now_need = self.replicas_for(latest)
        forecast_need = self.replicas_for(forecast) if forecast is not None else 0
        wanted = self.clamp(max(now_need, forecast_need))
        if wanted > current_replicas:
            why = "scale-out: demand" if now_need >= forecast_need else "scale-out: forecast"
            return Decision(wanted, why, forecast)

        window_start = now - cfg.scale_in_cooldown_s
        if samples[0][0] <= window_start:
            target = self.clamp(self._peak_need_since(samples, window_start))
            if target < current_replicas:
                return Decision(target, "scale-in: low for the whole cool-down", forecast)
        clamped = self.clamp(current_replicas)
        return Decision(clamped, "hold" if clamped == current_replicas else "clamp", forecast)
