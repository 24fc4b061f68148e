"""The gateway as a real process in front of three stub upstreams on 127.0.0.1.

Each test gets a fresh gateway and fresh stubs (their ejection state must not leak between
tests); every process is stopped by its PID.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from resilience.gateway import GatewayConfig, classify_events
from resilience.hashring import BoundedLoadRing

REPO = Path(__file__).resolve().parents[2]
STUB = Path(__file__).with_name("stub_upstream.py")
NAMES = ["s0", "s1", "s2"]
# Ejections last the whole test, health checks are quick, slowness is judged on few samples.
TEST_CONFIG = {
    "health_interval_s": 0.2,
    "base_ejection_s": 30.0,
    "slow_floor_s": 0.2,
    "ttft_min_samples": 3,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(
    argv: list[str], log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a process from the repo root with its output in a log file (the child keeps the fd)."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop one process by its PID: SIGTERM, then SIGKILL if it lingers."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class StreamResult:
    status: int
    served_by: str | None
    tokens: list[str] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False
    body: Any = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.done and not self.errors


@dataclass
class Cluster:
    gateway_url: str
    stub_urls: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]]
    upstreams_file: Path
    client: httpx.Client

    def stream(
        self, user: str | None, max_tokens: int = 5, headers: dict | None = None
    ) -> StreamResult:
        body: dict[str, Any] = {
            "model": "stub",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": max_tokens,
            "stream": True,
        }
        if user is not None:
            body["user"] = user
        url = self.gateway_url + "/v1/chat/completions"
        with self.client.stream("POST", url, json=body, headers=headers or {}) as r:
            result = StreamResult(r.status_code, r.headers.get("x-served-by"))
            if r.status_code != 200:
                r.read()
                result.body = r.json()
                return result
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: ") :]
                if data == "[DONE]":
                    result.done = True
                    continue
                obj = json.loads(data)
                if "error" in obj:
                    result.errors.append(obj["error"])
                for choice in obj.get("choices", []):
                    if choice["delta"].get("content"):
                        result.tokens.append(choice["delta"]["content"])
        return result

    def control(self, name: str, **changes: Any) -> None:
        self.client.post(self.stub_urls[name] + "/control", json=changes).raise_for_status()

    def completions_seen(self, name: str) -> int:
        return self.client.get(self.stub_urls[name] + "/stats").json()["completions"]

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)

    def upstreams(self) -> dict[str, dict[str, Any]]:
        return self.client.get(self.gateway_url + "/upstreams").json()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples called `name` whose labels include `labels` (0 when absent)."""
        text = self.client.get(self.gateway_url + "/metrics").text
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    total += sample.value
        return total


def owned_by(member: str, prefix: str = "user") -> str:
    """A session key that the gateway's ring (default vnodes) places on `member` when idle."""
    ring = BoundedLoadRing(NAMES, vnodes=GatewayConfig().vnodes)
    return next(f"{prefix}-{i}" for i in range(10_000) if ring.owner(f"{prefix}-{i}") == member)


@pytest.fixture
def start_cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    procs: list[subprocess.Popen[bytes]] = []
    clients: list[httpx.Client] = []

    def start(**config: Any) -> Cluster:
        ports = {name: free_port() for name in NAMES}
        stub_procs = {}
        for name in NAMES:
            proc = spawn(
                [sys.executable, str(STUB), "--port", str(ports[name]), "--name", name],
                tmp_path / f"{name}.log",
            )
            procs.append(proc)
            stub_procs[name] = proc
        stub_urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        upstreams_file = tmp_path / "upstreams.json"
        upstreams_file.write_text(
            json.dumps(
                [{"name": n, "url": u, "labels": {"role": "worker"}} for n, u in stub_urls.items()]
            )
        )
        client = httpx.Client(timeout=15)
        clients.append(client)
        for url in stub_urls.values():
            wait_until(lambda u=url: client.get(u + "/health").status_code == 200, 15, url)
        gw_port = free_port()
        gateway = spawn(
            [
                sys.executable,
                "-m",
                "resilience.gateway",
                "--host",
                "127.0.0.1",
                "--port",
                str(gw_port),
                "--upstreams",
                str(upstreams_file),
                "--config",
                json.dumps({**TEST_CONFIG, **config}),
            ],
            tmp_path / "gateway.log",
            env={**os.environ, "GATEWAY_LOG_LEVEL": "INFO"},
        )
        procs.append(gateway)
        gateway_url = f"http://127.0.0.1:{gw_port}"
        wait_until(lambda: client.get(gateway_url + "/health").status_code == 200, 15, "gateway")
        return Cluster(
            gateway_url, stub_urls, {**stub_procs, "gateway": gateway}, upstreams_file, client
        )

    yield start
    for client in clients:
        client.close()
    for proc in procs:
        stop(proc)


# -- pure pieces (no process) ----------------------------------------------------------------


def test_config_rejects_unknown_keys_and_wrong_types() -> None:
    assert GatewayConfig.from_json('{"attempts": 2}').attempts == 2
    assert GatewayConfig.from_json({"first_token_timeout_s": 1}).first_token_timeout_s == 1
    with pytest.raises(ValueError, match="unknown"):
        GatewayConfig.from_json('{"atempts": 2}')
    with pytest.raises(ValueError, match="must be"):
        GatewayConfig.from_json('{"attempts": "2"}')
    with pytest.raises(ValueError):
        GatewayConfig.from_json('{"attempts": 0}')
    assert GatewayConfig(slow_factor=4.0).outlier_config().slow_factor == 4.0


def test_first_token_detection() -> None:
    role = b'data: {"choices": [{"delta": {"role": "assistant", "content": ""}}]}\n\n'
    token = b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\n'
    reasoning = b'data: {"choices": [{"delta": {"reasoning_content": "hmm"}}]}\n\n'
    assert classify_events(role) is None
    assert classify_events(role + token) == "token"
    assert classify_events(reasoning) == "token"
    assert classify_events(b'data: {"error": {"message": "x"}}\n\n') == "error"
    assert classify_events(role + b"data: [DONE]\n\n") == "done"


# -- the gateway as a process ----------------------------------------------------------------


@pytest.mark.integration
def test_streams_stick_to_one_worker_and_metrics_count_them(start_cluster) -> None:
    cluster = start_cluster()
    alice = [cluster.stream("alice") for _ in range(5)]
    assert all(r.ok and len(r.tokens) == 5 for r in alice)
    assert len({r.served_by for r in alice}) == 1 and alice[0].served_by in NAMES
    # The session header is the key when the body has no `user`.
    by_header = [cluster.stream(None, headers={"x-session-id": "bob"}) for _ in range(3)]
    assert len({r.served_by for r in by_header}) == 1
    spread = {cluster.stream(f"user-{i}").served_by for i in range(30)}
    assert len(spread) >= 2
    reply = cluster.client.post(
        cluster.gateway_url + "/v1/chat/completions",
        json={"model": "stub", "messages": [], "max_tokens": 3, "user": "alice"},
    )
    assert reply.status_code == 200 and reply.headers["x-served-by"] == alice[0].served_by
    assert reply.json()["choices"][0]["message"]["content"] == "tok0 tok1 tok2"

    assert cluster.metric("gateway_requests_total", status="200") == 39
    assert cluster.metric("gateway_time_to_first_token_seconds_count") == 38
    assert cluster.metric("gateway_request_duration_seconds_count") == 39
    assert cluster.metric("gateway_retries_total") == 0
    assert all(cluster.metric("gateway_upstream_healthy", worker=n) == 1 for n in NAMES)
    state = cluster.upstreams()
    assert set(state) == set(NAMES)
    assert all(s["healthy"] and not s["ejected"] and s["inflight"] == 0 for s in state.values())
    assert state[alice[0].served_by]["ttft_ewma"] is not None


@pytest.mark.integration
def test_stopped_upstream_costs_no_request_and_is_ejected(start_cluster) -> None:
    cluster = start_cluster()
    cluster.kill("s1")
    first = cluster.stream(owned_by("s1"))  # its usual worker is dead: retried before any token
    assert first.ok and first.served_by != "s1"
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(cluster.stream, [f"load-{i}" for i in range(90)]))
    assert [r.status for r in results if not r.ok] == []  # 100% success
    assert "s1" not in {r.served_by for r in results}
    assert cluster.metric("gateway_retries_total", reason="connect_error") >= 1
    wait_until(lambda: cluster.upstreams()["s1"]["ejected"], 5, "s1 ejected")
    state = cluster.upstreams()["s1"]
    assert state["reason"] in ("consecutive_failures", "health_check_failed")
    assert state["ejected_until"] > time.time()
    assert cluster.metric("gateway_ejections_total", worker="s1") == 1
    assert cluster.metric("gateway_upstream_healthy", worker="s1") == 0
    assert cluster.metric("gateway_requests_total", status="200") == 91


@pytest.mark.integration
def test_http_errors_are_retried_and_eject_on_request_failures(start_cluster) -> None:
    cluster = start_cluster()
    cluster.control("s2", fail_status=500)  # health checks still pass: only requests fail
    key = owned_by("s2")
    results = [cluster.stream(key) for _ in range(3)]
    assert all(r.ok and r.served_by != "s2" for r in results)
    assert cluster.metric("gateway_retries_total", reason="http_5xx") == 3
    state = cluster.upstreams()["s2"]
    assert state["ejected"] and state["reason"] == "consecutive_failures"
    assert cluster.completions_seen("s2") == 3
    assert cluster.stream(key).ok
    assert cluster.completions_seen("s2") == 3, "an ejected worker still received traffic"


@pytest.mark.integration
def test_slow_upstream_is_ejected_and_traffic_moves_away(start_cluster) -> None:
    cluster = start_cluster()
    cluster.control("s0", ttft_delay_s=0.5)
    for i in range(60):
        assert cluster.stream(f"warm-{i}").ok
        if cluster.upstreams()["s0"]["ejected"]:
            break
    state = cluster.upstreams()["s0"]
    assert state["ejected"] and state["reason"] == "slow_ttft"
    assert cluster.metric("gateway_ejections_total", worker="s0", reason="slow_ttft") == 1
    seen_before = cluster.completions_seen("s0")
    started = time.monotonic()
    after = [cluster.stream(f"after-{i}") for i in range(20)]
    assert all(r.ok and r.served_by != "s0" for r in after)
    assert cluster.completions_seen("s0") == seen_before
    assert (time.monotonic() - started) / len(after) < 0.25  # nobody waits for the slow one


@pytest.mark.integration
def test_first_token_timeout_retries_on_another_worker(start_cluster) -> None:
    cluster = start_cluster(first_token_timeout_s=0.5)
    cluster.control("s0", ttft_delay_s=3.0)
    started = time.monotonic()
    result = cluster.stream(owned_by("s0"))
    elapsed = time.monotonic() - started
    assert result.ok and result.served_by != "s0"
    assert 0.5 <= elapsed < 2.0
    assert cluster.metric("gateway_retries_total", reason="first_token_timeout") == 1


@pytest.mark.integration
def test_stream_broken_after_tokens_is_not_replayed(start_cluster) -> None:
    cluster = start_cluster()
    for name in NAMES:
        cluster.control(name, die_after_tokens=3)
    result = cluster.stream("carol", max_tokens=8)
    assert result.status == 200
    assert result.tokens == ["tok0 ", "tok1 ", "tok2 "]
    assert len(result.errors) == 1 and result.errors[0]["code"] == "upstream_disconnected"
    assert not result.done
    assert sum(cluster.completions_seen(n) for n in NAMES) == 1  # no second worker asked
    assert cluster.metric("gateway_retries_total") == 0
    assert cluster.metric("gateway_stream_errors_total", worker=result.served_by) == 1
    assert cluster.metric("gateway_requests_total", status="stream_error") == 1


@pytest.mark.integration
def test_all_upstreams_down_gives_503(start_cluster) -> None:
    cluster = start_cluster()
    for name in NAMES:
        cluster.kill(name)
    result = cluster.stream("dave")
    assert result.status == 503
    assert result.body["error"]["code"] == "no_upstream_available"
    non_stream = cluster.client.post(
        cluster.gateway_url + "/v1/chat/completions", json={"messages": [], "user": "erin"}
    )
    assert non_stream.status_code == 503 and "error" in non_stream.json()
    wait_until(
        lambda: cluster.client.get(cluster.gateway_url + "/health").status_code == 503,
        5,
        "gateway /health to report no healthy upstream",
    )
    assert cluster.metric("gateway_requests_total", status="503") == 2

    # max_ejection_percent (50%) keeps two of three in the ring even though all are down.
    def ejected() -> int:
        return sum(s["ejected"] for s in cluster.upstreams().values())

    wait_until(lambda: ejected() == 1, 5, "one ejection")
    time.sleep(1.0)  # five more failed health rounds
    assert ejected() == 1


@pytest.mark.integration
def test_slow_health_checks_eject_an_idle_worker(start_cluster) -> None:
    cluster = start_cluster(health_slow_s=0.1, slow_health_strikes=2)
    cluster.control("s1", health_delay_s=0.2)
    wait_until(lambda: cluster.upstreams()["s1"]["ejected"], 5, "s1 ejected as slow")
    assert cluster.upstreams()["s1"]["reason"] == "slow_health"
    cluster.control("s1", health_delay_s=0.0)
    assert cluster.upstreams()["s1"]["ejected_until"] > time.time() + 20  # base_ejection_s=30


@pytest.mark.integration
def test_sighup_rereads_the_upstreams_file(start_cluster) -> None:
    cluster = start_cluster()
    entries = json.loads(cluster.upstreams_file.read_text())
    cluster.upstreams_file.write_text(json.dumps([e for e in entries if e["name"] != "s2"]))
    os.kill(cluster.procs["gateway"].pid, signal.SIGHUP)
    wait_until(lambda: set(cluster.upstreams()) == {"s0", "s1"}, 5, "reload")
    results = [cluster.stream(f"user-{i}") for i in range(15)]
    assert all(r.ok and r.served_by in ("s0", "s1") for r in results)


@pytest.mark.integration
def test_client_hanging_up_mid_stream_frees_the_worker(start_cluster) -> None:
    cluster = start_cluster()
    cluster.control("s0", chunk_delay_s=0.02)
    body = {"messages": [], "max_tokens": 200, "stream": True, "user": owned_by("s0")}
    with cluster.client.stream(
        "POST", cluster.gateway_url + "/v1/chat/completions", json=body
    ) as r:
        lines = r.iter_lines()
        assert any(line.startswith("data: ") and "tok0" in line for line in lines)
    wait_until(lambda: cluster.upstreams()["s0"]["inflight"] == 0, 5, "in-flight back to 0")
    wait_until(
        lambda: cluster.metric("gateway_requests_total", status="client_closed") == 1,
        5,
        "the hang-up counted",
    )
    state = cluster.upstreams()["s0"]
    assert not state["ejected"] and state["consecutive_failures"] == 0  # not the worker's fault
    assert cluster.metric("gateway_stream_errors_total") == 0
