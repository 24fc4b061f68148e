"""The load generator end to end: Locust subprocess, records, metrics, stop, CLI errors.

A stub OpenAI streaming server (loadtests.stubserver) with known delays runs as a subprocess
on 127.0.0.1; every process started here is stopped by PID.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from loadtests import actions
from loadtests.cli import add_arguments, main
from loadtests.records import percentile, read_records
from loadtests.runner import LoadRun, free_port
from loadtests.settings import LoadSettings
from loadtests.stubserver import StubConfig, StubServer

pytestmark = pytest.mark.integration

FIRST_TOKEN = 0.040
ITL = 0.008
MAX_TOKENS = 6


@pytest.fixture(scope="module")
def stub():
    with StubServer(StubConfig(first_token_ms=FIRST_TOKEN * 1e3, itl_ms=ITL * 1e3)) as server:
        yield server
    assert server.process.poll() is not None


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def server_requests(stub: StubServer) -> int:
    return httpx.get(stub.url + "/stats", timeout=5).json()["requests"]


def ok_count(metrics: str) -> float:
    for line in metrics.splitlines():
        if line.startswith('loadgen_requests_total{outcome="ok"}'):
            return float(line.split()[-1])
    return 0.0


def wait_for_ok_count(url: str, within: float) -> str:
    """The client metrics page once it counts a successful request."""
    metrics = ""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        time.sleep(0.3)
        try:
            metrics = httpx.get(url, timeout=2).text
        except httpx.HTTPError:
            continue
        if ok_count(metrics) > 0:
            return metrics
    pytest.fail(f"client metrics never counted a request: {metrics[-300:]}")


def cli_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_records_every_request_with_consistent_timing(stub, tmp_path, monkeypatch, capsys):
    runs: list[LoadRun] = []
    original_start = LoadRun.start

    def spy_start(self: LoadRun) -> LoadRun:
        runs.append(self)
        return original_start(self)

    monkeypatch.setattr(LoadRun, "start", spy_start)
    out = tmp_path / "records.jsonl"
    args = cli_args(
        "--url", stub.url, "--users", "3", "--duration", "5", "--out", str(out),
        "--max-tokens", str(MAX_TOKENS),
    )  # fmt: skip
    started = time.time()
    assert main(args) == 0
    elapsed = time.time() - started

    pid = runs[0].pid
    assert pid is not None and gone(pid), "Locust must be stopped and reaped"
    assert elapsed < 20

    records = read_records(out)
    # 3 users back to back, each request ~40 + 5 * 8 = 80 ms: well over a hundred in 5 s.
    assert len(records) > 60
    assert all(r.ok for r in records), {r.error for r in records}
    for r in records:
        assert len(r.chunk_times) == MAX_TOKENS == r.output_tokens
        assert r.first_token_at == r.chunk_times[0]
        assert r.sent_at < r.first_chunk_at <= r.first_token_at <= r.done_at
        assert r.chunk_times == sorted(r.chunk_times)
        assert r.ttft >= FIRST_TOKEN  # the server never sends the first token earlier
        assert r.served_by == "stub-0"
    assert percentile([r.ttft for r in records], 50) < FIRST_TOKEN + 0.015
    itls = [gap for r in records for gap in r.itls]
    assert abs(percentile(itls, 50) - ITL) < 0.003
    # The sends span the requested duration: the shape, not a request count, ended the run.
    span = max(r.sent_at for r in records) - min(r.sent_at for r in records)
    assert 4.0 < span < 6.5

    printed = capsys.readouterr().out
    assert f"{len(records)} requests to {stub.url}" in printed
    assert "100.00% ok" in printed and "TTFT" in printed and "tokens/s" in printed


def test_cli_reports_a_refused_url_in_one_line(tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}"
    assert main(cli_args("--url", url, "--duration", "3", "--out", str(tmp_path / "r"))) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "cannot connect" in err and url in err
    assert "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_stop_ends_a_long_run_and_removes_its_prometheus_target(stub, tmp_path):
    targets = tmp_path / "targets"
    settings = LoadSettings(users=4, duration=60, shape="ramp", ramp=2, max_tokens=MAX_TOKENS)
    run = LoadRun(stub.url, tmp_path / "out", settings, prometheus_targets_dir=targets)
    seen_before = server_requests(stub)
    run.start()
    try:
        target = json.loads((targets / "loadgen.json").read_text())
        assert target == [
            {"targets": [f"127.0.0.1:{run.metrics_port}"], "labels": {"job": "loadgen"}}
        ]
        metrics = wait_for_ok_count(run.metrics_url, within=10)
        assert "loadgen_time_to_first_token_seconds_bucket" in metrics
        assert run.is_running
    finally:
        stopped_at = time.monotonic()
        exit_code = run.stop()
    assert time.monotonic() - stopped_at < 15
    assert not run.is_running and gone(run.pid)
    assert run.was_stopped
    assert not (targets / "loadgen.json").exists()
    # Graceful: Locust exited by itself after SIGTERM, and every request the server saw
    # finished and was recorded (none cut mid-stream, none lost).
    assert exit_code == 0
    records = run.records()
    assert records and all(r.ok for r in records)
    assert len(records) == server_requests(stub) - seen_before


def test_ramp_shape_grows_from_one_user_then_holds_and_ends(tmp_path):
    # Shapes import Locust, which monkey-patches the process: tick them in a subprocess.
    script = """
import json
from loadtests.settings import LoadSettings
from loadtests.shapes import shape_class_for
shape = shape_class_for(LoadSettings(users=9, duration=20, shape="ramp", ramp=8))()
ticks = {}
for t in (0, 2, 4, 7.9, 8, 15, 20):
    shape.get_run_time = lambda t=t: t
    ticks[str(t)] = shape.tick()
print(json.dumps(ticks))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    ticks = json.loads(done.stdout.strip().splitlines()[-1])
    users = {t: (tick[0] if tick else None) for t, tick in ticks.items()}
    assert users == {"0": 1, "2": 3, "4": 5, "7.9": 8, "8": 9, "15": 9, "20": None}


def test_spike_shape_floods_then_falls_back():
    script = """
import json
from loadtests.settings import LoadSettings
from loadtests.shapes import shape_class_for
settings = LoadSettings(
    users=4, duration=30, shape="spike", spike_users=20, spike_at=10, spike_duration=8
)
shape = shape_class_for(settings)()
ticks = {}
for t in (0, 9.9, 10, 17.9, 18, 29, 30):
    shape.get_run_time = lambda t=t: t
    ticks[str(t)] = shape.tick()
print(json.dumps(ticks))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    ticks = json.loads(done.stdout.strip().splitlines()[-1])
    users = {t: (tick[0] if tick else None) for t, tick in ticks.items()}
    assert users == {"0": 4, "9.9": 4, "10": 20, "17.9": 20, "18": 4, "29": 4, "30": None}
    assert ticks["10"][1] == 20.0  # the flood arrives within a second
    with pytest.raises(ValueError, match="spike_users > users"):
        LoadSettings(users=4, shape="spike", spike_users=4, spike_duration=5)


def test_actions_start_wait_and_stop_with_configuration_fallbacks(stub, tmp_path, monkeypatch):
    monkeypatch.setattr(actions, "_current", None)
    with pytest.raises(actions.ActivityFailed):
        actions.wait_for_load()
    assert actions.stop_load()["stopped"] is False

    configuration = {"gateway_url": stub.url, "out_dir": str(tmp_path / "load")}
    info = actions.start_load(users=2, duration=3, max_tokens=4, configuration=configuration)
    json.dumps(info)
    assert info["records_path"] == str(tmp_path / "load" / "records.jsonl")
    assert info["pid"] and info["started_at"] <= time.time()

    result = actions.wait_for_load(timeout=20)
    json.dumps(result)
    assert result["finished_on_time"] is True
    assert result["exit_code"] == 0
    assert result["requests"] > 10 and result["success_share"] == 1.0
    assert gone(info["pid"])
    assert actions.stop_load()["stopped"] is False  # idempotent in rollbacks


def test_locust_exits_by_itself_at_its_deadline(stub, tmp_path):
    class ShortLeash(LoadRun):
        """A run whose hard deadline comes one second after the start."""

        @property
        def hard_deadline(self) -> float | None:
            return None if self.started_at is None else self.started_at + 1.0

    settings = LoadSettings(users=2, duration=60, max_tokens=MAX_TOKENS)
    run = ShortLeash(stub.url, tmp_path, settings, stop_timeout=1.0)
    run.start()
    try:
        # Deadline = hard deadline + stop timeout = 2 s after the start; Locust needs ~1 s to boot.
        exit_code = run.wait(timeout=15)
    finally:
        run.stop()
    assert exit_code == 3, run.stderr_tail()
    assert not run.was_stopped
    assert "deadline reached" in run.stderr_tail()
    assert run.records(), "requests before the deadline are kept"
