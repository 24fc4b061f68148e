"""The controller's failure detector: every rule, and each transition reported exactly once."""

from __future__ import annotations

import pytest

from resilience.detector import (
    APP_XIDS,
    FATAL_XIDS,
    Detection,
    Detector,
    DetectorConfig,
    Probe,
)

W = "worker-n1-g0"


def feed(detector: Detector, *probes: tuple[float, str, int]) -> list[Detection]:
    """Observe (at, outcome, xid) probes of W in order; the transitions they caused."""
    out = []
    for at, outcome, xid in probes:
        detection = detector.observe(Probe(W, at, outcome, xid))  # type: ignore[arg-type]
        if detection is not None:
            out.append(detection)
    return out


def ok_rounds(start: float, count: int, xid: int = 0, step: float = 0.2) -> list:
    return [(start + i * step, "ok", xid) for i in range(count)]


def test_healthy_worker_is_healthy_and_unseen_is_unknown() -> None:
    detector = Detector()
    assert detector.state(W) == "unknown"
    assert feed(detector, *ok_rounds(0.0, 10)) == []
    assert detector.state(W) == "healthy"
    assert detector.failed() == set()
    assert detector.tick(2.0) == []


def test_xid_sets_match_the_contract() -> None:
    assert FATAL_XIDS == {48, 79, 95}
    assert APP_XIDS == {13, 31, 43, 94}


@pytest.mark.parametrize("xid", sorted(FATAL_XIDS))
@pytest.mark.parametrize("outcome", ["ok", "unhealthy"])
def test_fatal_xid_fails_the_gpu_once(xid: int, outcome: str) -> None:
    detector = Detector()
    feed(detector, (0.0, "ok", 0))
    detections = feed(detector, (0.2, outcome, xid), (0.4, outcome, xid), (0.6, "unhealthy", xid))
    assert detections == [Detection(W, 0.2, "failed", f"xid {xid}", xid)]
    assert detector.state(W) == "failed"
    assert detector.failed() == {W}


@pytest.mark.parametrize("xid", sorted(APP_XIDS))
def test_application_xid_is_an_app_fault_even_with_a_503(xid: int) -> None:
    detector = Detector()
    feed(detector, (0.0, "ok", 0))
    # 13 and 31 make the worker answer 503; 43 and 94 leave /health at 200.
    detections = feed(detector, (0.2, "unhealthy", xid), (0.4, "unhealthy", xid), (0.6, "ok", xid))
    assert detections == [Detection(W, 0.2, "app_fault", f"xid {xid} (application)", xid)]
    assert detector.state(W) == "app_fault"
    assert detector.failed() == set()  # the task stays: restart, not migrate


def test_health_503_without_xid_fails() -> None:
    detector = Detector()
    detections = feed(detector, (0.0, "ok", 0), (0.2, "unhealthy", 0), (0.4, "unhealthy", 0))
    assert detections == [Detection(W, 0.2, "failed", "health 503", None)]


def test_health_503_keeps_an_unclassified_xid_for_the_record() -> None:
    detector = Detector()
    assert feed(detector, (0.0, "unhealthy", 62)) == [Detection(W, 0.0, "failed", "health 503", 62)]


def test_unknown_xid_on_a_healthy_gpu_is_not_a_failure() -> None:
    detector = Detector()
    assert feed(detector, *ok_rounds(0.0, 5, xid=62)) == []
    assert detector.state(W) == "healthy"


def test_one_refusal_is_tolerated_two_in_a_row_fail() -> None:
    detector = Detector()
    assert feed(detector, (0.0, "ok", 0), (0.2, "refused", 0), (0.4, "ok", 0)) == []
    assert feed(detector, (0.6, "refused", 0)) == []
    detections = feed(detector, (0.8, "refused", 0), (1.0, "refused", 0))
    assert detections == [Detection(W, 0.8, "failed", "connection refused", None)]


def test_refused_threshold_is_configurable() -> None:
    detector = Detector(DetectorConfig(refused_threshold=3))
    assert feed(detector, (0.0, "ok", 0), (0.1, "refused", 0), (0.2, "refused", 0)) == []
    assert [d.reason for d in feed(detector, (0.3, "refused", 0))] == ["connection refused"]


def test_heartbeat_timeout_by_tick_catches_a_paused_worker_once() -> None:
    detector = Detector()
    feed(detector, (0.0, "ok", 0), (0.25, "ok", 0))
    assert detector.tick(0.75) == []  # 0.5 s of silence: not yet
    assert detector.tick(1.0) == []  # exactly 0.75 s (exact in binary): "older than" is strict
    assert detector.tick(1.01) == [Detection(W, 1.01, "failed", "heartbeat timeout", None)]
    assert detector.tick(1.5) == []
    assert detector.state(W) == "failed"


def test_heartbeat_timeout_from_timed_out_probes() -> None:
    detector = Detector()
    feed(detector, (0.0, "ok", 0))
    assert feed(detector, (0.2, "timeout", 0), (0.5, "timeout", 0), (0.7, "timeout", 0)) == []
    assert feed(detector, (0.8, "timeout", 0), (1.0, "timeout", 0)) == [
        Detection(W, 0.8, "failed", "heartbeat timeout", None)
    ]


def test_a_503_answer_keeps_the_heartbeat_alive() -> None:
    # An answer, even an unhealthy one, proves the process runs: the reason stays "health 503".
    detector = Detector()
    feed(detector, (0.0, "unhealthy", 0))
    feed(detector, (0.5, "unhealthy", 0))
    assert detector.tick(1.0) == []


def test_heartbeat_clock_starts_at_the_first_probe() -> None:
    detector = Detector()
    assert detector.tick(100.0) == []  # nothing seen: nothing to time out
    feed(detector, (100.0, "timeout", 0))
    assert detector.tick(100.7) == []
    assert [d.reason for d in detector.tick(100.8)] == ["heartbeat timeout"]


def test_failed_worker_recovers_after_consecutive_clean_probes() -> None:
    detector = Detector()
    feed(detector, (0.0, "ok", 0), (0.2, "unhealthy", 79))
    # Two clean, one with an Xid, a 503, then three clean: only the last run counts.
    assert feed(detector, (0.4, "ok", 0), (0.6, "ok", 0), (0.8, "ok", 62)) == []
    assert feed(detector, (1.0, "ok", 0), (1.2, "unhealthy", 0), (1.4, "ok", 0)) == []
    assert feed(detector, (1.6, "ok", 0)) == []
    assert detector.state(W) == "failed"
    assert feed(detector, (1.8, "ok", 0), (2.0, "ok", 0)) == [
        Detection(W, 1.8, "recovered", "recovered", None)
    ]
    assert detector.state(W) == "healthy"
    assert detector.failed() == set()


def test_recovery_probes_is_configurable() -> None:
    detector = Detector(DetectorConfig(recovery_probes=1))
    feed(detector, (0.0, "refused", 0), (0.2, "refused", 0))
    assert [d.state for d in feed(detector, (0.4, "ok", 0))] == ["recovered"]


def test_a_failed_gpu_still_showing_its_fatal_xid_does_not_recover() -> None:
    detector = Detector()
    feed(detector, (0.0, "unhealthy", 48))
    assert feed(detector, *ok_rounds(0.2, 10, xid=48)) == []
    assert detector.state(W) == "failed"


def test_failure_is_reported_once_whatever_the_later_reasons() -> None:
    detector = Detector()
    detections = feed(
        detector,
        (0.0, "ok", 0),
        (0.2, "unhealthy", 0),
        (0.4, "refused", 0),
        (0.6, "refused", 0),
        (0.8, "unhealthy", 79),
        (1.0, "unhealthy", 13),
    )
    assert [d.reason for d in detections] == ["health 503"]
    assert detector.tick(5.0) == []


def test_app_fault_becomes_failed_on_a_fatal_xid_or_silence() -> None:
    detector = Detector()
    feed(detector, (0.0, "ok", 43))
    assert detector.state(W) == "app_fault"
    assert [d.reason for d in feed(detector, (0.2, "unhealthy", 79))] == ["xid 79"]

    other = Detector()
    feed(other, (0.0, "ok", 94))
    assert [d.reason for d in other.tick(1.0)] == ["heartbeat timeout"]


def test_app_fault_clears_once_the_restarted_worker_answers_clean() -> None:
    detector = Detector()
    feed(detector, (0.0, "ok", 0), (0.2, "unhealthy", 13))
    detector.remediating(W, until=5.0)
    # The kill and restart: refusals, timeouts and a 503 while loading are not failures.
    quiet = feed(
        detector,
        (0.4, "refused", 0),
        (0.6, "refused", 0),
        (0.8, "refused", 0),
        (1.0, "timeout", 0),
        (1.2, "unhealthy", 0),
    )
    assert quiet == []
    assert detector.tick(3.0) == []  # silent for 1.8 s, but being restarted
    assert detector.state(W) == "app_fault"
    assert feed(detector, (3.2, "ok", 0)) == [Detection(W, 3.2, "recovered", "recovered", None)]
    assert detector.state(W) == "healthy"
    # Remediation ended with that answer: two refusals now are a failure again.
    assert [d.reason for d in feed(detector, (3.4, "refused", 0), (3.6, "refused", 0))] == [
        "connection refused"
    ]


def test_remediation_does_not_hide_a_fatal_xid() -> None:
    detector = Detector()
    feed(detector, (0.0, "ok", 31))
    detector.remediating(W, until=5.0)
    assert [d.reason for d in feed(detector, (0.2, "unhealthy", 95))] == ["xid 95"]


def test_a_restart_that_never_comes_back_fails_after_the_deadline() -> None:
    detector = Detector()
    feed(detector, (0.0, "ok", 13))
    detector.remediating(W, until=2.0)
    assert detector.tick(1.9) == []
    assert detector.tick(2.7) == []  # the heartbeat counts from the deadline
    assert [d.reason for d in detector.tick(2.8)] == ["heartbeat timeout"]


def test_app_fault_without_remediation_clears_only_like_a_failure() -> None:
    detector = Detector()
    feed(detector, (0.0, "ok", 94))
    assert feed(detector, (0.2, "ok", 0), (0.4, "ok", 0)) == []
    assert detector.state(W) == "app_fault"
    assert [d.state for d in feed(detector, (0.6, "ok", 0))] == ["recovered"]


def test_workers_are_independent_and_forget_starts_afresh() -> None:
    detector = Detector()
    other = "worker-n2-g1"
    detector.observe(Probe(W, 0.0, "ok"))
    detector.observe(Probe(other, 0.0, "ok"))
    detector.observe(Probe(other, 0.5, "ok"))
    assert detector.observe(Probe(W, 0.6, "unhealthy")) is not None
    assert detector.failed() == {W}
    assert detector.tick(1.0) == []  # other answered at 0.5; W is already failed
    detector.forget(W)
    assert detector.state(W) == "unknown"
    assert detector.failed() == set()
    assert detector.observe(Probe(W, 2.0, "ok")) is None
    assert detector.state(W) == "healthy"


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        DetectorConfig(heartbeat_timeout_s=0)
    with pytest.raises(ValueError):
        DetectorConfig(refused_threshold=0)
    with pytest.raises(ValueError):
        DetectorConfig(recovery_probes=0)
