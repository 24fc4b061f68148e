"""Outlier ejection: failures, slowness, health checks, back-off and the ejection cap."""

from __future__ import annotations

import pytest

from resilience.outliers import (
    REASON_FAILURES,
    REASON_HEALTH,
    REASON_SLOW_HEALTH,
    REASON_SLOW_TTFT,
    OutlierConfig,
    OutlierDetector,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


MEMBERS = ["a", "b", "c", "d"]


def make(**overrides: object) -> tuple[OutlierDetector, FakeClock]:
    clock = FakeClock()
    config = OutlierConfig(**overrides)  # type: ignore[arg-type]
    return OutlierDetector(config, MEMBERS, clock=clock), clock


def feed_ttft(detector: OutlierDetector, member: str, seconds: float, count: int) -> list:
    return [detector.record_ttft(member, seconds) for _ in range(count)]


def test_consecutive_failures_eject() -> None:
    detector, clock = make(consecutive_failures=3, base_ejection_s=2.0)
    assert detector.record_failure("a") is None
    assert detector.record_failure("a") is None
    ejection = detector.record_failure("a")
    assert ejection is not None
    assert (ejection.member, ejection.reason) == ("a", REASON_FAILURES)
    assert ejection.until == pytest.approx(clock.now + 2.0)
    assert detector.is_ejected("a")
    assert detector.ejected_members() == {"a"}
    assert not detector.is_healthy("a")


def test_a_success_breaks_the_run_of_failures() -> None:
    detector, _ = make(consecutive_failures=3)
    for _ in range(2):
        detector.record_failure("a")
    detector.record_success("a")
    for _ in range(2):
        assert detector.record_failure("a") is None
    assert not detector.is_ejected("a")


def test_return_needs_expiry_and_a_passing_health_check() -> None:
    detector, clock = make(consecutive_failures=1, base_ejection_s=2.0)
    detector.record_failure("a")
    clock.advance(1.0)
    detector.record_health("a", ok=True, latency_s=0.001)
    assert detector.is_ejected("a"), "returned before its ejection time"
    clock.advance(1.5)
    assert detector.is_ejected("a"), "returned without a health check"
    detector.record_health("a", ok=False, latency_s=0.001)
    assert detector.is_ejected("a"), "returned while failing health checks"
    detector.record_health("a", ok=True, latency_s=0.001)
    assert not detector.is_ejected("a")
    assert detector.is_healthy("a")


def test_expiry_alone_returns_when_health_is_not_required() -> None:
    detector, clock = make(
        consecutive_failures=1, base_ejection_s=2.0, return_requires_health=False
    )
    detector.record_failure("a")
    assert detector.is_ejected("a")
    clock.advance(2.0)
    assert not detector.is_ejected("a")


def test_repeated_ejections_last_longer_up_to_the_cap() -> None:
    detector, clock = make(
        consecutive_failures=1, base_ejection_s=2.0, max_ejection_s=5.0, ejection_decay_s=100.0
    )
    durations = []
    for _ in range(4):
        ejection = detector.record_failure("a")
        assert ejection is not None
        durations.append(ejection.duration_s)
        clock.advance(ejection.duration_s)
        detector.record_health("a", ok=True, latency_s=0.001)
        assert not detector.is_ejected("a")
    assert durations == [2.0, 4.0, 5.0, 5.0]


def test_a_quiet_period_forgives_past_ejections() -> None:
    detector, clock = make(consecutive_failures=1, base_ejection_s=2.0, ejection_decay_s=10.0)
    for _ in range(2):
        ejection = detector.record_failure("a")
        assert ejection is not None
        clock.advance(ejection.duration_s)
        detector.record_health("a", ok=True, latency_s=0.001)
    clock.advance(25.0)  # two decay periods without trouble
    ejection = detector.record_failure("a")
    assert ejection is not None and ejection.duration_s == 2.0


def test_never_more_than_max_ejection_percent() -> None:
    detector, clock = make(consecutive_failures=1, max_ejection_percent=50.0, base_ejection_s=1.0)
    assert detector.record_failure("a") is not None
    assert detector.record_failure("b") is not None
    assert detector.record_failure("c") is None, "ejected 3 of 4 with a 50% cap"
    assert detector.ejected_members() == {"a", "b"}
    clock.advance(1.0)
    detector.record_health("a", ok=True, latency_s=0.001)
    # 'c' kept failing while the cap held it in; its next failure ejects it.
    ejection = detector.record_failure("c")
    assert ejection is not None and ejection.member == "c"


def test_cap_still_allows_one_of_three_and_none_of_one() -> None:
    clock = FakeClock()
    three = OutlierDetector(OutlierConfig(consecutive_failures=1), ["a", "b", "c"], clock=clock)
    assert three.record_failure("a") is not None
    assert three.record_failure("b") is None
    alone = OutlierDetector(OutlierConfig(consecutive_failures=1), ["a"], clock=clock)
    assert alone.record_failure("a") is None


def test_slow_member_is_ejected_relative_to_its_peers() -> None:
    detector, _ = make(slow_factor=3.0, slow_floor_s=0.1, ttft_min_samples=3)
    for peer in ["b", "c", "d"]:
        feed_ttft(detector, peer, 0.05, 5)
    results = feed_ttft(detector, "a", 0.6, 3)
    assert results[:2] == [None, None], "judged before ttft_min_samples"
    assert results[2] is not None and results[2].reason == REASON_SLOW_TTFT
    assert detector.is_ejected("a")


def test_floor_protects_against_ejecting_for_small_differences() -> None:
    detector, _ = make(slow_factor=3.0, slow_floor_s=0.5)
    for peer in ["b", "c", "d"]:
        feed_ttft(detector, peer, 0.01, 5)
    assert feed_ttft(detector, "a", 0.4, 10) == [None] * 10  # 40x slower, but under the floor
    assert detector.slow_threshold(exclude="a") == 0.5


def test_uniformly_slow_cluster_ejects_nobody() -> None:
    detector, _ = make(slow_factor=3.0, slow_floor_s=0.1)
    for member in MEMBERS:
        assert feed_ttft(detector, member, 2.0, 5) == [None] * 5
    assert detector.ejected_members() == set()


def test_no_verdict_without_peer_samples() -> None:
    detector, _ = make(slow_floor_s=0.3, ttft_min_samples=2)
    assert feed_ttft(detector, "a", 5.0, 5) == [None] * 5
    assert detector.slow_threshold(exclude="a") == float("inf")
    feed_ttft(detector, "b", 0.01, 2)
    assert detector.slow_threshold(exclude="a") == 0.3  # 3 x 0.01 is under the floor
    ejection = detector.record_ttft("a", 5.0)
    assert ejection is not None and ejection.reason == REASON_SLOW_TTFT


def test_windowed_median_ignores_a_single_spike() -> None:
    detector, _ = make(slow_factor=3.0, slow_floor_s=0.1, ttft_window=5)
    for peer in ["b", "c", "d"]:
        feed_ttft(detector, peer, 0.05, 5)
    feed_ttft(detector, "a", 0.05, 4)
    assert detector.record_ttft("a", 5.0) is None
    assert not detector.is_ejected("a")


def test_ewma_tracks_recent_ttft() -> None:
    detector, _ = make(ttft_ewma_alpha=0.5, slow_floor_s=10.0)
    detector.record_ttft("a", 1.0)
    detector.record_ttft("a", 3.0)
    assert detector.snapshot()["a"]["ttft_ewma"] == pytest.approx(2.0)


def test_returning_member_starts_with_fresh_ttft_samples() -> None:
    detector, clock = make(slow_floor_s=0.1, ttft_min_samples=3, base_ejection_s=1.0)
    for peer in ["b", "c", "d"]:
        feed_ttft(detector, peer, 0.05, 5)
    feed_ttft(detector, "a", 1.0, 3)
    assert detector.is_ejected("a")
    clock.advance(1.0)
    detector.record_health("a", ok=True, latency_s=0.001)
    assert not detector.is_ejected("a")
    assert detector.record_ttft("a", 1.0) is None, "stale slow samples re-ejected it at once"


def test_failing_health_checks_eject() -> None:
    detector, _ = make(consecutive_failures=3)
    assert detector.record_health("a", ok=False, latency_s=0.5) is None
    assert not detector.is_healthy("a"), "a failed health check makes it unhealthy at once"
    assert not detector.is_ejected("a")
    detector.record_health("a", ok=False, latency_s=0.5)
    ejection = detector.record_health("a", ok=False, latency_s=0.5)
    assert ejection is not None and ejection.reason == REASON_HEALTH


def test_health_failures_and_request_failures_are_separate_runs() -> None:
    detector, _ = make(consecutive_failures=3)
    detector.record_failure("a")
    detector.record_failure("a")
    detector.record_health("a", ok=True, latency_s=0.001)  # health passing hides nothing
    assert detector.record_failure("a") is not None


def test_slow_health_checks_eject_as_slow() -> None:
    detector, _ = make(health_slow_s=0.2, slow_health_strikes=2)
    assert detector.record_health("a", ok=True, latency_s=0.3) is None
    assert detector.record_health("a", ok=True, latency_s=0.01) is None  # strike run broken
    assert detector.record_health("a", ok=True, latency_s=0.3) is None
    ejection = detector.record_health("a", ok=True, latency_s=0.3)
    assert ejection is not None and ejection.reason == REASON_SLOW_HEALTH


def test_slow_health_check_does_not_bring_a_member_back() -> None:
    detector, clock = make(consecutive_failures=1, base_ejection_s=1.0, health_slow_s=0.2)
    detector.record_failure("a")
    clock.advance(2.0)
    detector.record_health("a", ok=True, latency_s=0.3)
    assert detector.is_ejected("a")


def test_snapshot_and_membership_changes() -> None:
    detector, clock = make(consecutive_failures=1, base_ejection_s=2.0)
    detector.record_failure("a")
    snap = detector.snapshot()
    assert snap["a"]["ejected"] is True and snap["a"]["reason"] == REASON_FAILURES
    assert snap["a"]["ejected_for_s"] == pytest.approx(2.0)
    assert snap["b"]["ejected"] is False and snap["b"]["reason"] is None
    detector.set_members(["a", "b", "e"])
    assert detector.members == ["a", "b", "e"]
    assert detector.is_ejected("a"), "a surviving member lost its state"
    assert detector.record_failure("d") is None  # unknown members are ignored
    assert not detector.is_ejected("e")


def test_invalid_config_is_rejected() -> None:
    with pytest.raises(ValueError):
        OutlierConfig(ttft_min_samples=20, ttft_window=10)
    with pytest.raises(ValueError):
        OutlierConfig(max_ejection_percent=150)
    with pytest.raises(ValueError):
        OutlierConfig(consecutive_failures=0)
