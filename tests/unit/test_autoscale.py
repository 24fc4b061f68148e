"""Autoscaling: forecast scale-out before a spike's peak, hysteresis scale-in, clamps."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from resilience.autoscale import AutoscaleConfig, Autoscaler, holt_forecast

STEP = 5.0  # seconds between QPS samples


def config(**overrides: float) -> AutoscaleConfig:
    values = {"target_qps_per_replica": 100.0, "min_replicas": 1, "max_replicas": 50}
    values.update(overrides)
    return AutoscaleConfig(**values)  # type: ignore[arg-type]


def simulate(
    scaler: Autoscaler, load: Callable[[float], float], until: float, start_replicas: int
) -> list[tuple[float, int]]:
    """Feed the scaler one sample per STEP, applying each decision; (time, replicas) per step."""
    samples: list[tuple[float, float]] = []
    replicas, history = start_replicas, []
    t = 0.0
    while t <= until:
        samples.append((t, load(t)))
        replicas = scaler.decide(t, samples, replicas).replicas
        history.append((t, replicas))
        t += STEP
    return history


def changes(history: list[tuple[float, int]]) -> int:
    return sum(1 for (_, a), (_, b) in zip(history, history[1:], strict=False) if a != b)


def test_rule_direction_is_sane() -> None:
    scaler = Autoscaler(config())
    assert scaler.replicas_for(800) == 10  # 800 / (100 * 0.8)
    assert scaler.replicas_for(801) == 11
    assert scaler.decide(0, [(0, 1000)], 5).replicas == 13  # more demand -> more replicas
    assert scaler.decide(0, [(0, 1000)], 5).reason == "scale-out: demand"


def test_holt_follows_a_linear_trend() -> None:
    samples = [(t, 100 + 10 * t) for t in range(0, 60, 5)]
    assert holt_forecast(samples, 30, 0.5, 0.3) == pytest.approx(100 + 10 * 85, rel=1e-6)


def test_spike_scales_out_before_its_peak() -> None:
    peak_at, peak = 120.0, 2000.0

    def ramp(t: float) -> float:
        return 200 + (peak - 200) * min(t, peak_at) / peak_at

    scaler = Autoscaler(config(forecast_horizon_s=60))
    history = simulate(scaler, ramp, peak_at, start_replicas=3)
    needed = math.ceil(peak / 80)
    reached = next(t for t, r in history if r >= needed)
    assert reached <= peak_at - 30  # at least half a minute of warning
    # Without the forecast the rule would only reach the peak's count at the peak itself.
    blind = Autoscaler(config(forecast_horizon_s=0))
    assert next(t for t, r in simulate(blind, ramp, peak_at, 3) if r >= needed) >= peak_at - STEP


def test_steady_load_holds() -> None:
    scaler = Autoscaler(config())
    history = simulate(scaler, lambda t: 640.0, 1200, start_replicas=8)
    assert {r for _, r in history} == {8}
    assert scaler.decide(1200, [(t, 640.0) for t in range(0, 1201, 5)], 8).reason == "hold"


def test_dip_shorter_than_cooldown_does_not_scale_in() -> None:
    def dip(t: float) -> float:
        return 100.0 if 400 <= t < 600 else 800.0  # 200 s dip, cool-down 300 s

    history = simulate(Autoscaler(config()), dip, 1200, start_replicas=10)
    assert min(r for _, r in history) == 10


def test_long_low_load_scales_in_after_cooldown() -> None:
    def drop(t: float) -> float:
        return 100.0 if t >= 400 else 800.0

    history = simulate(Autoscaler(config()), drop, 1200, start_replicas=10)
    first_in = next(t for t, r in history if r < 10)
    assert 400 + 300 <= first_in <= 400 + 300 + STEP
    assert history[-1][1] == 2  # 100 qps at 0.65 utilisation


def test_oscillating_load_does_not_flap() -> None:
    def wave(t: float) -> float:
        return 750 + 120 * math.sin(2 * math.pi * t / 120)  # crosses 800 every two minutes

    history = simulate(Autoscaler(config()), wave, 3600, start_replicas=10)
    assert changes(history) <= 2
    assert all(r >= 10 for _, r in history[len(history) // 2 :])


def test_clamps_to_min_and_max() -> None:
    scaler = Autoscaler(config(min_replicas=2, max_replicas=20))
    assert scaler.decide(0, [(0, 1e6)], 5).replicas == 20
    quiet = [(float(t), 0.0) for t in range(0, 1000, 5)]
    assert scaler.decide(995, quiet, 10).replicas == 2
    assert scaler.decide(0, [], 40).replicas == 20
    assert scaler.decide(0, [], 1).replicas == 2


def test_no_samples_holds() -> None:
    decision = Autoscaler(config()).decide(0, [], 7)
    assert decision.replicas == 7 and decision.reason == "hold: no samples"


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ValueError):
        config(target_qps_per_replica=0)
    with pytest.raises(ValueError):
        config(min_replicas=5, max_replicas=2)
    with pytest.raises(ValueError):
        config(scale_in_utilisation=0.9)
