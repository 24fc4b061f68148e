"""Windows and the client-record SLO probes, over synthetic records written to tmp files."""

from __future__ import annotations

import json
import random
import sys
import types
from pathlib import Path

import pytest
from chaoslib.exceptions import ActivityFailed

from probes import slo, stats
from probes.windows import PHASES, experiment_windows, in_window, window_of

T0 = 1_700_000_000.0
RATE = 100  # requests per second in the synthetic load


def record(i: int, sent_at: float, ok: bool = True, ttft: float = 0.1, tokens: int = 5) -> dict:
    """One request as loadtests writes it: tokens every 10 ms after the first."""
    first = sent_at + ttft
    chunks = [first + 0.01 * k for k in range(tokens)] if ok else []
    return {
        "id": f"r{i}",
        "sent_at": sent_at,
        "first_chunk_at": first if ok else None,
        "first_token_at": first if ok else None,
        "first_visible_token_at": first if ok else None,
        "chunk_times": chunks,
        "done_at": (chunks[-1] if ok else sent_at + 0.05),
        "output_tokens": tokens if ok else 0,
        "prompt_tokens": 12,
        "status": 200 if ok else 503,
        "ok": ok,
        "error": None if ok else "HTTP 503",
        "served_by": "worker-n0-g0",
    }


def write_jsonl(path: Path, records: list[dict], tail: str = "") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


@pytest.fixture
def run_files(tmp_path):
    """60 s of load at 100 req/s; a fault from t=20 to t=30 fails 50 requests and slows TTFT.

    before [0, 20): 2000 ok; during [20, 30): 1000 with 50 errors, TTFT 0.5 s;
    recovery [30, 40): 1000 ok; after [40, 60): 2000 ok.
    """
    records = []
    failed = set(range(2000, 3000, 20))  # 50 evenly spread failures during the fault
    for i in range(60 * RATE):
        sent_at = T0 + i / RATE
        during = 2000 <= i < 3000
        records.append(record(i, sent_at, ok=i not in failed, ttft=0.5 if during else 0.1))
    faults = [{"id": "f1", "kind": "process-kill", "injected_at": T0 + 20, "removed_at": T0 + 30}]
    records_path = write_jsonl(tmp_path / "records.jsonl", records)
    faults_path = tmp_path / "faults.json"
    faults_path.write_text(json.dumps(faults))
    return str(records_path), str(faults_path)


@pytest.fixture(autouse=True)
def no_current_run(monkeypatch):
    """Isolate from whatever run context the process might hold."""
    fake = types.ModuleType("experiments.context")
    fake.current_run = lambda: None
    monkeypatch.setitem(sys.modules, "experiments.context", fake)
    return fake


def strict_json(value) -> str:
    return json.dumps(value, allow_nan=False)


# --- windows --------------------------------------------------------------------------


def test_windows_split_the_load_around_the_fault():
    faults = [{"injected_at": 10.0, "removed_at": 20.0}]
    w = experiment_windows(faults, load_start=0.0, load_end=40.0, recovery_seconds=10)
    assert (w["before"].start, w["before"].end) == (0.0, 10.0)
    assert (w["during"].start, w["during"].end) == (10.0, 20.0)
    assert (w["recovery"].start, w["recovery"].end) == (20.0, 30.0)
    assert w["after"].start == 30.0 and w["after"].end > 40.0
    assert w["all"].start == 0.0 and w["all"].end == w["after"].end
    assert [window_of(t, w) for t in (0.0, 9.999, 10.0, 19.99, 20.0, 30.0, 40.0)] == [
        "before",
        "before",
        "during",
        "during",
        "recovery",
        "after",
        "after",
    ]
    assert window_of(40.1, w) is None


def test_phase_windows_partition_the_load():
    faults = [{"injected_at": 12.3, "removed_at": 17.0}, {"injected_at": 15.0, "removed_at": 25.5}]
    w = experiment_windows(faults, 0.0, 60.0, recovery_seconds=7)
    assert (w["during"].start, w["during"].end) == (12.3, 25.5)  # first injection, last removal
    assert w["recovery"].end == pytest.approx(32.5)
    rng = random.Random(7)
    for t in [rng.uniform(0, 60) for _ in range(2000)] + [0.0, 60.0, 12.3, 25.5, 32.5]:
        assert sum(w[name].contains(t) for name in PHASES) == 1
        assert w["all"].contains(t)


def test_fault_still_active_makes_during_last_to_the_end():
    w = experiment_windows([{"injected_at": 5.0, "removed_at": None}], 0.0, 30.0)
    assert w["during"].start == 5.0 and w["during"].contains(30.0)
    assert w["recovery"].duration == 0 and w["after"].duration == 0


def test_without_injected_faults_everything_is_before():
    never_injected = [{"injected_at": None, "removed_at": None}]
    for faults in ([], never_injected):
        w = experiment_windows(faults, 0.0, 30.0)
        assert w["before"].contains(0.0) and w["before"].contains(30.0)
        assert all(w[name].duration == 0 for name in ("during", "recovery", "after"))


def test_fault_before_the_load_leaves_before_empty():
    w = experiment_windows([{"injected_at": -5.0, "removed_at": 2.0}], 0.0, 30.0, 10)
    assert w["before"].duration == 0
    assert (w["during"].start, w["during"].end) == (0.0, 2.0)
    assert (w["recovery"].start, w["recovery"].end) == (2.0, 12.0)


def test_in_window_selects_by_sent_at():
    records = [{"sent_at": t} for t in (1.0, 10.0, 10.5, 21.0)]
    w = experiment_windows([{"injected_at": 10.0, "removed_at": 11.0}], 1.0, 21.0)
    assert [r["sent_at"] for r in in_window(records, w["during"])] == [10.0, 10.5]


# --- availability ---------------------------------------------------------------------


def test_availability_per_window(run_files):
    records_path, faults_path = run_files
    config = {"faults_path": faults_path}

    during = slo.availability(records_path, window="during", configuration=config)
    assert (during["good"], during["total"], during["errors"]) == (950, 1000, 50)
    assert during["verdict"] == "fail" and during["ok"] is False
    assert during["sli"] == pytest.approx(0.95)
    assert during["burn_rate"] == pytest.approx(50.0)
    assert during["window_start"] == T0 + 20 and during["window_end"] == T0 + 30
    assert during["interval"][0] < 0.95 < during["interval"][1] < 0.999

    before = slo.availability(records_path, window="before", configuration=config)
    assert (before["good"], before["total"]) == (2000, 2000)
    assert before["verdict"] == "inconclusive" and before["ok"] is True  # 2000 < 2995
    assert before["requests_needed"] == 2995
    assert before["burn_rate"] == 0.0

    after = slo.availability(records_path, window="after", target=0.99, configuration=config)
    assert after["verdict"] == "pass" and after["total"] == 2000
    assert after["interval"][0] == pytest.approx(0.05 ** (1 / 2000))

    everything = slo.availability(records_path, configuration=config)
    assert (everything["good"], everything["total"]) == (5950, 6000)
    assert everything["window"] == "all" and everything["source"] == "client"
    strict_json(everything)


def test_availability_keys_are_the_contract(run_files):
    records_path, _ = run_files
    result = slo.availability(records_path)
    expected = {
        "ok",
        "verdict",
        "sli",
        "good",
        "total",
        "errors",
        "target",
        "interval",
        "burn_rate",
        "window",
        "window_start",
        "window_end",
        "source",
        "requests_needed",
    }
    assert expected <= set(result)
    assert isinstance(result["interval"], list) and len(result["interval"]) == 2


def test_availability_pass_with_enough_clean_requests(tmp_path):
    records = [record(i, T0 + i / RATE) for i in range(3000)]
    path = write_jsonl(tmp_path / "r.jsonl", records)
    result = slo.availability(str(path))
    assert result["verdict"] == "pass" and result["ok"] is True
    assert result["interval"][0] >= 0.999


def test_truncated_last_line_is_skipped(tmp_path):
    records = [record(i, T0 + i) for i in range(10)]
    partial = json.dumps(record(10, T0 + 10))[:40]
    path = write_jsonl(tmp_path / "r.jsonl", records, tail=partial)
    result = slo.availability(str(path))
    assert result["total"] == 10 and result["skipped_lines"] == 1


def test_corrupt_line_in_the_middle_fails(tmp_path):
    path = tmp_path / "r.jsonl"
    lines = [json.dumps(record(0, T0)), '{"id": "r1", "sent_at":', json.dumps(record(2, T0 + 2))]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ActivityFailed, match=r"corrupt load record at .*r\.jsonl:2"):
        slo.availability(str(path))


def test_corrupt_terminated_last_line_fails(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [record(0, T0)], tail='{"oops"\n')
    with pytest.raises(ActivityFailed, match="corrupt load record"):
        slo.availability(str(path))


def test_missing_records_file_fails(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(ActivityFailed, match=f"no load records at {missing}"):
        slo.availability(str(missing))


def test_empty_records_file_fails(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(ActivityFailed, match="no load records at"):
        slo.availability(str(path))


def test_empty_window_fails_the_probe(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [record(i, T0 + i) for i in range(5)])
    with pytest.raises(ActivityFailed, match="no load records at .* in window 'during'"):
        slo.availability(str(path), window="during")


def test_unknown_window_fails(run_files):
    with pytest.raises(ActivityFailed, match="unknown window 'sometime'"):
        slo.availability(run_files[0], window="sometime")


def test_no_records_path_anywhere_fails():
    with pytest.raises(ActivityFailed, match="no load records"):
        slo.availability(configuration={})


def test_missing_faults_file_fails(run_files):
    with pytest.raises(ActivityFailed, match="no fault records at"):
        slo.availability(run_files[0], configuration={"faults_path": "/nonexistent/f.json"})


def test_reading_honours_the_deadline(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [record(i, T0 + i) for i in range(5000)])
    with pytest.raises(ActivityFailed, match="deadline"):
        slo.availability(str(path), timeout_s=0.0)


def test_inputs_come_from_the_configuration(run_files):
    records_path, faults_path = run_files
    config = {"records_path": records_path, "faults_path": faults_path}
    result = slo.availability(window="during", configuration=config)
    assert result["total"] == 1000


def test_run_context_wins_over_the_configuration(run_files, no_current_run, tmp_path):
    records_path, faults_path = run_files

    class Run:
        def __init__(self):
            self.records_path = Path(records_path)
            self.started_at = T0

        def faults(self):
            return json.loads(Path(faults_path).read_text())

    no_current_run.current_run = Run
    decoy = {"records_path": str(tmp_path / "missing.jsonl")}
    result = slo.availability(window="during", configuration=decoy)
    assert (result["good"], result["total"]) == (950, 1000)


# --- latency --------------------------------------------------------------------------


def test_latency_ttft_per_window(run_files):
    records_path, faults_path = run_files
    config = {"faults_path": faults_path, "records_path": records_path}
    before = slo.latency("ttft", 0.95, bound_s=0.2, window="before", configuration=config)
    assert before["value"] == pytest.approx(0.1) and before["ok"] is True
    assert before["count"] == 2000
    during = slo.latency("ttft", 0.95, bound_s=0.2, window="during", configuration=config)
    assert during["value"] == pytest.approx(0.5) and during["ok"] is False
    assert during["count"] == 950  # failed requests carry no latency
    assert {"p50", "p95", "p99", "quantile", "bound_s", "window"} <= set(during)
    strict_json(during)


def test_latency_definitions(tmp_path):
    r = record(0, T0, tokens=1)
    r.update(first_token_at=T0 + 0.2, done_at=T0 + 1.1, output_tokens=10)
    r["chunk_times"] = [T0 + 0.2, T0 + 0.3, T0 + 0.6, T0 + 1.1]
    path = str(write_jsonl(tmp_path / "r.jsonl", [r]))
    values = {
        m: slo.latency(m, 0.5, bound_s=10, records_path=path)["value"] for m in slo.LATENCY_METRICS
    }
    assert values["ttft"] == pytest.approx(0.2)
    assert values["e2e"] == pytest.approx(1.1)
    assert values["tpot"] == pytest.approx(0.9 / 9)
    assert values["itl"] == pytest.approx(0.3)  # median of gaps 0.1, 0.3, 0.5


def test_latency_percentiles_match_stats(tmp_path):
    rng = random.Random(3)
    ttfts = [rng.uniform(0.05, 2.0) for _ in range(500)]
    path = write_jsonl(
        tmp_path / "r.jsonl", [record(i, T0 + i, ttft=t) for i, t in enumerate(ttfts)]
    )
    result = slo.latency("ttft", 0.99, bound_s=1.0, records_path=str(path))
    assert result["value"] == pytest.approx(stats.quantile(ttfts, 0.99), abs=1e-6)
    assert result["p50"] == pytest.approx(stats.quantile(ttfts, 0.5), abs=1e-6)
    assert result["ok"] is (result["value"] <= 1.0)


def test_latency_needs_a_bound_and_a_known_metric(run_files):
    with pytest.raises(ActivityFailed, match="needs bound_s"):
        slo.latency("ttft", records_path=run_files[0])
    with pytest.raises(ActivityFailed, match="unknown latency metric 'ttlb'"):
        slo.latency("ttlb", bound_s=1, records_path=run_files[0])


def test_latency_without_successes_fails(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [record(i, T0 + i, ok=False) for i in range(3)])
    with pytest.raises(ActivityFailed, match="no ttft samples"):
        slo.latency("ttft", bound_s=1, records_path=str(path))


# --- windows report -------------------------------------------------------------------


def test_windows_report(run_files):
    records_path, faults_path = run_files
    report = slo.windows_report(
        records_path, latency_bounds={"ttft": 0.3}, configuration={"faults_path": faults_path}
    )
    strict_json(report)
    windows = report["windows"]
    assert list(windows) == ["before", "during", "recovery", "after", "all"]
    totals = {name: w["availability"]["total"] for name, w in windows.items()}
    assert totals == {"before": 2000, "during": 1000, "recovery": 1000, "after": 2000, "all": 6000}
    assert windows["during"]["availability"]["verdict"] == "fail"
    assert windows["during"]["latency"]["ttft"]["ok"] is False
    assert windows["before"]["latency"]["ttft"]["ok"] is True
    assert windows["recovery"]["latency"]["e2e"]["count"] == 1000
    assert report["ok"] is False and report["faults"] == 1


def test_windows_report_lists_empty_windows(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [record(i, T0 + i / RATE) for i in range(3000)])
    report = slo.windows_report(str(path))
    strict_json(report)
    during = report["windows"]["during"]
    assert during["availability"]["total"] == 0
    assert during["availability"]["verdict"] == "inconclusive"
    assert during["availability"]["sli"] is None
    assert during["latency"]["ttft"] == {"count": 0, "p50": None, "p95": None, "p99": None}
    assert report["windows"]["before"]["availability"]["verdict"] == "pass"
    assert report["ok"] is True


def test_malformed_fault_times_fail_cleanly(run_files, tmp_path):
    faults = tmp_path / "bad-faults.json"
    faults.write_text(json.dumps({"faults": [{"injected_at": "soon", "removed_at": None}]}))
    with pytest.raises(ActivityFailed, match="cannot place the run's faults"):
        slo.availability(run_files[0], configuration={"faults_path": str(faults)})
