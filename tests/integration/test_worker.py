"""The simulated worker as a real subprocess on loopback: API, streaming, metrics, faults."""

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.integration

# Small and fast: four 100-token requests fill the 512-token cache, the rest must queue.
WORKER_CONFIG = {
    "decode_step_base_s": 0.01,
    "decode_step_per_seq_s": 0.0005,
    "kv_cache_tokens": 512,
    "max_model_len": 512,
    "jitter_fraction": 0.02,
}
MESSAGES = [{"role": "user", "content": "hi"}]  # 5 prompt tokens by the worker's count


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _running_worker(name: str = "w-test") -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A worker subprocess on a free loopback port, stopped by its PID whatever happens."""
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "resilience.worker", "--host", "127.0.0.1",
            "--port", str(port), "--name", name, "--node", "node-7", "--gpu", "3",
            "--model", "sim-model", "--config", json.dumps(WORKER_CONFIG),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                if httpx.get(f"{url}/health", timeout=0.5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "worker did not become healthy"
            time.sleep(0.05)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if proc.stderr:
            proc.stderr.close()


@pytest.fixture(scope="module")
def worker() -> Iterator[str]:
    with _running_worker() as (url, _):
        yield url


@dataclass
class StreamResult:
    status: int
    served_by: str | None
    sent_at: float
    events: list[tuple[float, object]] = field(default_factory=list)  # (arrival, json or DONE)

    def token_times(self) -> list[float]:
        return [t for t, e in self.events if isinstance(e, dict) and _token_text(e) is not None]

    def ttft(self) -> float:
        return self.token_times()[0] - self.sent_at


def _token_text(chunk: dict) -> str | None:
    choices = chunk.get("choices") or []
    if not choices:
        return None
    delta = choices[0]["delta"]
    text = delta.get("content") or delta.get("reasoning_content")
    return text or None


def _parse_sse_line(line: str) -> object | None:
    if not line.startswith("data: "):
        return None
    payload = line[len("data: ") :]
    return "DONE" if payload == "[DONE]" else json.loads(payload)


def _stream(url: str, max_tokens: int, **extra: object) -> StreamResult:
    body = {"model": "sim-model", "messages": MESSAGES, "max_tokens": max_tokens, "stream": True}
    body.update(extra)
    sent_at = time.monotonic()
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=20) as resp:
        result = StreamResult(resp.status_code, resp.headers.get("x-served-by"), sent_at)
        for line in resp.iter_lines():
            event = _parse_sse_line(line)
            if event is not None:
                result.events.append((time.monotonic(), event))
    return result


async def _stream_async(client: httpx.AsyncClient, url: str, max_tokens: int) -> StreamResult:
    body = {"messages": MESSAGES, "max_tokens": max_tokens, "stream": True}
    sent_at = time.monotonic()
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as resp:
        result = StreamResult(resp.status_code, resp.headers.get("x-served-by"), sent_at)
        async for line in resp.aiter_lines():
            event = _parse_sse_line(line)
            if event is not None:
                result.events.append((time.monotonic(), event))
    return result


def _metrics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _value(samples: dict, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    matches = [
        v for (n, lbl), v in samples.items() if n == name and set(labels.items()) <= set(lbl)
    ]
    assert matches, f"no sample {name} {labels}"
    return sum(matches)


def test_streaming_reply_is_sse_like_vllm(worker: str) -> None:
    result = _stream(worker, 20, stream_options={"include_usage": True})
    assert result.status == 200
    assert result.served_by == "w-test"
    events = [e for _, e in result.events]
    first, *middle, usage_chunk, done = events
    assert first["choices"][0]["delta"]["role"] == "assistant"
    assert done == "DONE"
    tokens = [c for c in middle if _token_text(c) is not None]
    assert len(tokens) == 20
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "sim-model" for c in middle)
    assert len({c["id"] for c in events[:-1]}) == 1
    assert tokens[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in tokens[:-1])
    assert usage_chunk["choices"] == []
    usage = usage_chunk["usage"]
    assert usage["completion_tokens"] == 20
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + 20


def test_tokens_arrive_spread_over_time_not_in_one_burst(worker: str) -> None:
    result = _stream(worker, 30)
    times = result.token_times()
    assert len(times) == 30
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    step = WORKER_CONFIG["decode_step_base_s"]
    assert times[-1] - times[0] >= 29 * step * 0.8
    assert sorted(gaps)[len(gaps) // 2] >= step * 0.5  # median gap is about one decode step
    assert result.ttft() < 1.0


def test_stream_without_usage_option_has_no_usage_chunk(worker: str) -> None:
    result = _stream(worker, 3)
    events = [e for _, e in result.events]
    assert events[-1] == "DONE"
    assert all("usage" not in e for e in events[:-1])
    assert len(result.token_times()) == 3


def test_non_streaming_completion(worker: str) -> None:
    resp = httpx.post(
        f"{worker}/v1/chat/completions",
        json={"model": "sim-model", "messages": MESSAGES, "max_tokens": 7},
        timeout=10,
    )
    assert resp.status_code == 200
    assert resp.headers["x-served-by"] == "w-test"
    body = resp.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert len(body["choices"][0]["message"]["content"].split()) == 7
    assert body["usage"]["completion_tokens"] == 7


def test_models_endpoint(worker: str) -> None:
    body = httpx.get(f"{worker}/v1/models", timeout=5).json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["sim-model"]


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        (b"{not json", None),
        (json.dumps({"model": "sim-model"}).encode(), "messages"),
        (json.dumps({"messages": []}).encode(), "messages"),
        (json.dumps({"messages": MESSAGES, "max_tokens": 0}).encode(), "max_tokens"),
        (json.dumps({"messages": MESSAGES, "max_tokens": 10_000}).encode(), "max_tokens"),
        (json.dumps({"messages": MESSAGES, "stream": "yes"}).encode(), "stream"),
    ],
)
def test_bad_requests_get_openai_style_400(worker: str, payload: bytes, param: str | None) -> None:
    resp = httpx.post(
        f"{worker}/v1/chat/completions",
        content=payload,
        headers={"content-type": "application/json"},
        timeout=5,
    )
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    assert error["param"] == param


def test_metrics_carry_vllm_and_dcgm_names_and_move(worker: str) -> None:
    before = _metrics(worker)
    _stream(worker, 10)
    after = _metrics(worker)
    model = {"model_name": "sim-model"}

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert delta("vllm:request_success_total", finished_reason="length", **model) == 1
    assert delta("vllm:generation_tokens_total", **model) == 10
    assert delta("vllm:prompt_tokens_total", **model) > 0
    assert delta("vllm:time_to_first_token_seconds_count", **model) == 1
    assert delta("vllm:inter_token_latency_seconds_count", **model) == 9
    assert delta("vllm:e2e_request_latency_seconds_count", **model) == 1
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
        assert _value(after, name, **model) == 0
    assert _value(after, "vllm:kv_cache_usage_perc", **model) == 0
    dcgm = {"gpu": "3", "Hostname": "node-7"}
    for name in (
        "DCGM_FI_DEV_GPU_UTIL",
        "DCGM_FI_DEV_FB_USED",
        "DCGM_FI_DEV_FB_FREE",
        "DCGM_FI_DEV_GPU_TEMP",
        "DCGM_FI_DEV_SM_CLOCK",
        "DCGM_FI_DEV_XID_ERRORS",
        "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
        "DCGM_FI_DEV_POWER_USAGE",
    ):
        _value(after, name, **dcgm)
    labels = next(lbl for (n, lbl) in after if n == "DCGM_FI_DEV_GPU_UTIL")
    assert dict(labels)["UUID"].startswith("GPU-")
    assert dict(labels)["modelName"]


def test_concurrency_beyond_kv_capacity_queues(worker: str) -> None:
    """Six 105-token reservations against a 512-token cache: four run, two wait."""

    async def scenario() -> tuple[list[StreamResult], float, float]:
        async with httpx.AsyncClient(timeout=20) as client:
            tasks = [asyncio.create_task(_stream_async(client, worker, 100)) for _ in range(6)]
            max_waiting = max_util = 0.0
            while not all(t.done() for t in tasks):
                samples = await asyncio.to_thread(_metrics, worker)
                max_waiting = max(max_waiting, _value(samples, "vllm:num_requests_waiting"))
                max_util = max(max_util, _value(samples, "DCGM_FI_DEV_GPU_UTIL"))
                await asyncio.sleep(0.3)
            return [t.result() for t in tasks], max_waiting, max_util

    results, max_waiting, max_util = asyncio.run(scenario())
    assert all(len(r.token_times()) == 100 for r in results)
    assert max_waiting >= 1
    assert max_util > 50  # the engine was busy while the queue drained
    ttfts = sorted(r.ttft() for r in results)
    # The queued two start only after a running one finishes (~100 decode steps later).
    assert ttfts[4] > ttfts[3] + 50 * WORKER_CONFIG["decode_step_base_s"]


def test_client_disconnect_frees_its_kv_slot(worker: str) -> None:
    before = _metrics(worker)
    body = {"messages": MESSAGES, "max_tokens": 400, "stream": True}
    with httpx.stream("POST", f"{worker}/v1/chat/completions", json=body, timeout=10) as resp:
        lines = resp.iter_lines()
        seen = 0
        while seen < 3:
            if next(lines).startswith("data: "):
                seen += 1
        running = _value(_metrics(worker), "vllm:num_requests_running")
        assert running == 1
    # 400 tokens would take > 4 s; the slot must come back long before that.
    deadline = time.monotonic() + 1.5
    while True:
        samples = _metrics(worker)
        if _value(samples, "vllm:num_requests_running") == 0:
            break
        assert time.monotonic() < deadline, "disconnected stream still holds its KV slot"
        time.sleep(0.05)
    assert _value(samples, "vllm:kv_cache_usage_perc") == 0
    aborted = _value(samples, "vllm:request_success_total", finished_reason="abort")
    assert aborted == _value(before, "vllm:request_success_total", finished_reason="abort") + 1


def test_unhealthy_gpu_fails_health_requests_and_in_flight_streams(worker: str) -> None:
    try:
        with httpx.stream(
            "POST",
            f"{worker}/v1/chat/completions",
            json={"messages": MESSAGES, "max_tokens": 300, "stream": True},
            timeout=10,
        ) as resp:
            lines = resp.iter_lines()
            while not next(lines).startswith("data: "):
                pass
            put = httpx.put(f"{worker}/fault", json={"healthy": False, "xid": 79}, timeout=5)
            assert put.status_code == 200 and put.json()["xid"] == 79
            rest = [_parse_sse_line(line) for line in lines]
        events = [e for e in rest if e is not None]
        assert "DONE" not in events
        assert events[-1]["error"]["code"] == 503

        health = httpx.get(f"{worker}/health", timeout=5)
        assert health.status_code == 503
        assert health.json()["status"] == "unhealthy"
        refused = httpx.post(
            f"{worker}/v1/chat/completions", json={"messages": MESSAGES}, timeout=5
        )
        assert refused.status_code == 503
        assert _value(_metrics(worker), "DCGM_FI_DEV_XID_ERRORS") == 79
    finally:
        assert httpx.delete(f"{worker}/fault", timeout=5).status_code == 200
    assert httpx.get(f"{worker}/health", timeout=5).status_code == 200
    assert httpx.get(f"{worker}/fault", timeout=5).json()["healthy"] is True


def test_hang_stalls_tokens_until_cleared(worker: str) -> None:
    try:
        assert httpx.put(f"{worker}/fault", json={"hang": True}, timeout=5).status_code == 200
        started = time.monotonic()

        async def clear_later() -> None:
            await asyncio.sleep(0.6)
            async with httpx.AsyncClient() as client:
                await client.delete(f"{worker}/fault", timeout=5)

        async def scenario() -> StreamResult:
            async with httpx.AsyncClient(timeout=10) as client:
                stream = asyncio.create_task(_stream_async(client, worker, 5))
                await clear_later()
                return await stream

        result = asyncio.run(scenario())
        assert result.token_times()[0] - started >= 0.6
        assert len(result.token_times()) == 5
        assert httpx.get(f"{worker}/health", timeout=5).status_code == 200
    finally:
        httpx.delete(f"{worker}/fault", timeout=5)


def test_slowdown_stretches_decode_steps(worker: str) -> None:
    baseline = _stream(worker, 20).token_times()
    try:
        httpx.put(f"{worker}/fault", json={"slowdown": 3}, timeout=5).raise_for_status()
        slowed = _stream(worker, 20).token_times()
    finally:
        httpx.delete(f"{worker}/fault", timeout=5)
    assert (slowed[-1] - slowed[0]) > 2 * (baseline[-1] - baseline[0])


@pytest.mark.parametrize(
    "update",
    [{"healthy": "no"}, {"temperature": 90}, {"kv_capacity_factor": 2}, {"slowdown": 0}, [1]],
)
def test_bad_fault_updates_are_refused_and_change_nothing(worker: str, update: object) -> None:
    before = httpx.get(f"{worker}/fault", timeout=5).json()
    resp = httpx.put(f"{worker}/fault", json=update, timeout=5)
    assert resp.status_code == 400
    assert "error" in resp.json()
    assert httpx.get(f"{worker}/fault", timeout=5).json() == before


def test_sigterm_ends_in_flight_streams_and_exits_promptly() -> None:
    with _running_worker("w-term") as (url, proc):
        body = {"messages": MESSAGES, "max_tokens": 400, "stream": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=10) as resp:
            lines = resp.iter_lines()
            while not next(lines).startswith("data: "):
                pass
            stopped_at = time.monotonic()
            proc.terminate()
            events = [e for e in map(_parse_sse_line, lines) if e is not None]
        assert proc.wait(timeout=5) == 0
        assert time.monotonic() - stopped_at < 1.0
        assert "DONE" not in events
        assert events[-1]["error"]["message"] == "worker shutting down"
