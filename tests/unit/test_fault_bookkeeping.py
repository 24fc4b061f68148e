"""Fault actions against a recording backend: selection, ledger, recovery, errors."""

import json

import pytest
from chaoslib.exceptions import ActivityFailed

from experiments import context, faults
from experiments.ledger import FaultRecord, Ledger
from experiments.selectors import Candidate


class RecordingBackend:
    name = "recording"

    def __init__(self, fail_inject=False, fail_recover=False):
        self.injected: list[FaultRecord] = []
        self.recovered: list[str] = []
        self.fail_inject = fail_inject
        self.fail_recover = fail_recover

    def candidates(self):
        return [Candidate(f"worker-{i}", {"role": "worker"}) for i in range(3)]

    def supports(self, kind):
        return kind != "gpu-melt"

    def inject(self, record):
        if self.fail_inject:
            raise RuntimeError("boom")
        self.injected.append(record)
        return {"ok": True}

    def recover(self, record):
        if self.fail_recover:
            raise RuntimeError("stuck")
        self.recovered.append(record.id)

    def describe(self, record):
        return {}


@pytest.fixture
def backend(monkeypatch, tmp_path):
    monkeypatch.setenv("INFERENCE_CHAOS_HOME", str(tmp_path / "home"))
    b = RecordingBackend()
    monkeypatch.setattr(faults, "backend_for", lambda configuration: b)
    context.start_run("unit", tmp_path / "runs")
    yield b
    context.end_run()


def test_injection_is_recorded_with_times_and_victims(backend):
    out = faults.network_delay(
        selector={"labelSelectors": {"role": "worker"}},
        mode="one",
        latency="500ms",
        jitter="100ms",
        correlation=100,
    )
    assert out["kind"] == "network-delay" and len(out["victims"]) == 1
    assert out["params"] == {
        "delay_ms": 500.0,
        "jitter_ms": 100.0,
        "correlation": 100.0,
        "direction": "to",
    }
    assert out["injected_at"] and out["removed_at"] is None
    assert len(context.current_run().ledger.active()) == 1


def test_duration_holds_then_removes(backend):
    out = faults.pod_pause(selector={}, mode="all", duration="50ms")
    assert out["removed_at"] - out["injected_at"] >= 0.05
    assert backend.recovered == [out["id"]]
    assert context.current_run().ledger.active() == []


def test_recover_all_removes_every_active_fault_once(backend):
    a = faults.pod_kill(selector={}, mode="one", restart_after=None)
    b = faults.network_loss(selector={}, mode="all", loss=20)
    result = faults.recover_all()
    assert sorted(result["removed"]) == sorted([a["id"], b["id"]])
    assert faults.recover_all()["removed"] == []
    assert sorted(backend.recovered) == sorted([a["id"], b["id"]])


def test_ledger_is_mirrored_to_a_file_for_crash_cleanup(backend, tmp_path):
    out = faults.pod_pause(selector={}, mode="one")
    run = context.current_run()
    mirrored = json.loads(run.ledger.path.read_text())
    assert mirrored[0]["id"] == out["id"] and mirrored[0]["removed_at"] is None
    assert Ledger.load(run.ledger.path).active()[0].id == out["id"]


def test_failed_injection_is_undone_and_reported(backend):
    backend.fail_inject = True
    with pytest.raises(ActivityFailed, match="failed: boom"):
        faults.pod_pause(selector={}, mode="one")
    assert context.current_run().ledger.active() == []


def test_failed_recovery_is_recorded_and_raised_by_recover_all(backend):
    faults.pod_pause(selector={}, mode="one")
    backend.fail_recover = True
    with pytest.raises(ActivityFailed, match="stuck"):
        faults.recover_all()
    assert context.current_run().ledger.records()[0].error


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: faults.network_delay(selector={"labelSelectors": {"role": "x"}}),
            "matches nothing",
        ),
        (lambda: faults.network_delay(selector={}, latency="fast"), "cannot read 'fast'"),
        (lambda: faults.network_delay(selector={}, direction="up"), "direction"),
        (lambda: faults.network_loss(selector={}, loss=120), "0-100"),
        (lambda: faults.network_bandwidth(selector={}, rate="lots"), "rate"),
        (lambda: faults.network_partition(selector={}, action="drop"), "blackhole"),
    ],
)
def test_bad_arguments_inject_nothing(backend, call, message):
    with pytest.raises(ActivityFailed, match=message):
        call()
    assert backend.injected == []
    assert context.current_run().ledger.records() == []


def test_preflight_resolves_without_injecting(backend):
    out = faults.preflight("pod_kill", {"selector": {}, "mode": "all"}, {})
    assert len(out["victims"]) == 3 and backend.injected == []
    with pytest.raises(ActivityFailed, match="unknown fault action"):
        faults.preflight("pod_explode", {}, {})
    with pytest.raises(ActivityFailed, match="unexpected keyword"):
        faults.preflight("pod_kill", {"victim": "x"}, {})


def test_interrupted_run_refuses_new_faults(backend):
    context.current_run().interrupted.set()
    with pytest.raises(ActivityFailed, match="interrupted"):
        faults.pod_pause(selector={}, mode="one")


@pytest.mark.parametrize(
    ("text", "seconds"), [("500ms", 0.5), ("2s", 2.0), ("1.5m", 90.0), (3, 3.0), ("250us", 0.00025)]
)
def test_durations(text, seconds):
    assert faults.parse_seconds(text, "x") == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "bps"), [("1mbps", 1e6), ("8mbit", 1e6), ("100kbps", 1e5), ("800bit", 100)]
)
def test_tc_rates_are_bytes_per_second(text, bps):
    assert faults.parse_rate(text) == pytest.approx(bps)
