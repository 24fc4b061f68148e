"""The worker's task API as a real subprocess on loopback: states, load timing, refusals, metric."""

import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

DEFAULT_LOAD_S = 0.3  # the worker's model_load_s in these tests
CONFIG = {"decode_step_base_s": 0.005, "model_load_s": DEFAULT_LOAD_S, "jitter_fraction": 0.0}
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _worker(port: int | None = None) -> Iterator[tuple[httpx.Client, subprocess.Popen[bytes]]]:
    """A worker subprocess on a loopback port, stopped by its PID whatever happens."""
    port = port or _free_port()
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "resilience.worker", "--host", "127.0.0.1",
            "--port", str(port), "--name", "w-task", "--node", "node-1", "--gpu", "0",
            "--config", json.dumps(CONFIG),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, "the worker exited during start-up"
            try:
                if client.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the worker did not become healthy"
            time.sleep(0.05)
        yield client, proc
    finally:
        client.close()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


@pytest.fixture(scope="module")
def worker() -> Iterator[httpx.Client]:
    with _worker() as (client, _):
        yield client


@pytest.fixture(autouse=True)
def _idle_and_healthy(worker: httpx.Client) -> Iterator[None]:
    yield
    worker.delete("/fault")
    worker.delete("/task")


def _task_series(client: httpx.Client) -> dict[str, float]:
    text = client.get("/metrics").text
    return {
        sample.labels["task"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "worker_task_serving"
        for sample in family.samples
    }


def _wait_serving(client: httpx.Client, task_id: str, timeout: float = 3.0) -> float:
    """Poll GET /task like the controller does; answers when it first said `serving`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get("/task").json()
        if status["state"] == "serving":
            assert status["id"] == task_id
            return time.monotonic()
        assert status == {**status, "id": task_id, "state": "loading"}
        time.sleep(0.01)
    raise AssertionError(f"{task_id} never served")


def test_an_idle_worker_serves_chat_with_an_empty_task_header(worker: httpx.Client) -> None:
    before = time.time()
    status = worker.get("/task").json()
    assert status["id"] is None and status["state"] == "idle" and status["since"] <= before
    reply = worker.post("/v1/chat/completions", json=CHAT)
    assert reply.status_code == 200
    assert reply.headers["x-task"] == ""
    assert reply.headers["x-served-by"] == "w-task"
    assert _task_series(worker) == {}


def test_a_task_loads_for_load_s_refusing_chat_then_serves(worker: httpx.Client) -> None:
    put_at = time.monotonic()
    reply = worker.put("/task", json={"id": "task-3", "load_s": 0.5})
    assert reply.status_code == 202
    assert reply.json()["id"] == "task-3" and reply.json()["state"] == "loading"

    refused = worker.post("/v1/chat/completions", json=CHAT)
    assert refused.status_code == 503
    assert refused.json() == {"error": "model loading"}
    assert refused.headers["x-task"] == "task-3"
    streaming = worker.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert streaming.status_code == 503  # streams are refused before any SSE byte
    assert _task_series(worker) == {"task-3": 0.0}

    serving_at = _wait_serving(worker, "task-3")
    assert 0.45 <= serving_at - put_at < 1.0

    served = worker.post("/v1/chat/completions", json=CHAT)
    assert served.status_code == 200
    assert served.headers["x-task"] == "task-3"
    assert served.json()["usage"]["completion_tokens"] == 4
    assert _task_series(worker) == {"task-3": 1.0}


def test_without_load_s_the_config_default_applies(worker: httpx.Client) -> None:
    put_at = time.monotonic()
    assert worker.put("/task", json={"id": "task-0"}).status_code == 202
    elapsed = _wait_serving(worker, "task-0") - put_at
    assert DEFAULT_LOAD_S - 0.05 <= elapsed < DEFAULT_LOAD_S + 0.5


def test_a_second_put_replaces_the_task_and_reloads(worker: httpx.Client) -> None:
    assert worker.put("/task", json={"id": "task-1", "load_s": 0}).status_code == 202
    _wait_serving(worker, "task-1")
    assert _task_series(worker) == {"task-1": 1.0}

    assert worker.put("/task", json={"id": "task-2", "load_s": 0.2}).status_code == 202
    assert worker.post("/v1/chat/completions", json=CHAT).status_code == 503
    assert _task_series(worker) == {"task-2": 0.0}  # task-1's series is gone, not left at 1
    _wait_serving(worker, "task-2")

    assert worker.put("/task", json={"id": "task-2", "load_s": 0.2}).status_code == 202
    assert worker.get("/task").json()["state"] == "loading"  # the same id loads again too
    _wait_serving(worker, "task-2")
    assert worker.post("/v1/chat/completions", json=CHAT).headers["x-task"] == "task-2"


def test_delete_unloads_to_idle(worker: httpx.Client) -> None:
    worker.put("/task", json={"id": "task-5", "load_s": 0})
    _wait_serving(worker, "task-5")
    reply = worker.delete("/task")
    assert reply.status_code == 200
    assert reply.json()["id"] is None and reply.json()["state"] == "idle"
    assert worker.get("/task").json()["state"] == "idle"
    assert _task_series(worker) == {}
    chat = worker.post("/v1/chat/completions", json=CHAT)
    assert chat.status_code == 200 and chat.headers["x-task"] == ""


def test_deleting_a_task_mid_load_cancels_the_load(worker: httpx.Client) -> None:
    worker.put("/task", json={"id": "task-6", "load_s": 0.2})
    assert worker.delete("/task").json()["state"] == "idle"
    time.sleep(0.3)
    assert worker.get("/task").json()["state"] == "idle"


def test_an_unhealthy_gpu_refuses_a_task(worker: httpx.Client) -> None:
    assert worker.put("/fault", json={"healthy": False, "xid": 79}).status_code == 200
    reply = worker.put("/task", json={"id": "task-7", "load_s": 0})
    assert reply.status_code == 503
    assert reply.json()["error"] == "GPU unavailable" and reply.json()["xid"] == 79
    assert worker.get("/task").json()["state"] == "idle"

    assert worker.delete("/fault").status_code == 200
    assert worker.put("/task", json={"id": "task-7", "load_s": 0}).status_code == 202
    _wait_serving(worker, "task-7")


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[]", b'{"load_s": 1}', b'{"id": "t", "load_s": -1}', b'{"id": "t", "x": 1}'],
)
def test_bad_task_bodies_are_400_and_change_nothing(worker: httpx.Client, body: bytes) -> None:
    worker.put("/task", json={"id": "kept", "load_s": 0})
    _wait_serving(worker, "kept")
    reply = worker.put("/task", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 400
    assert reply.json()["error"]
    assert worker.get("/task").json()["id"] == "kept"
    assert worker.get("/task").json()["state"] == "serving"


def test_a_stream_in_flight_survives_a_task_change(worker: httpx.Client) -> None:
    body = {**CHAT, "max_tokens": 40, "stream": True}
    with worker.stream("POST", "/v1/chat/completions", json=body) as stream:
        assert stream.status_code == 200
        lines = stream.iter_lines()
        assert next(lines).startswith("data: ")
        assert worker.put("/task", json={"id": "task-8", "load_s": 0.1}).status_code == 202
        rest = [line for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]"


def test_a_restarted_worker_starts_idle() -> None:
    port = _free_port()
    with _worker(port) as (client, _):
        client.put("/task", json={"id": "task-9", "load_s": 0})
        _wait_serving(client, "task-9")
    with _worker(port) as (client, _):
        assert client.get("/task").json()["state"] == "idle"
        assert _task_series(client) == {}
