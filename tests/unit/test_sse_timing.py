"""The SSE client: chunk parsing, per-chunk timing, and every failure turned into a record.

Unit tests drive the client through httpx.MockTransport with a scripted body whose pieces are
released after known sleeps, so no server or port is involved. One integration test checks the
same timing over a real loopback socket.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from loadtests.sse import (
    ChatStreamer,
    SessionPicker,
    chat_body,
    chat_endpoint,
    stream_chat_completion,
)

ENDPOINT = "http://stub.test/v1/chat/completions"
# Sleeps guarantee the lower bound; the upper bound leaves room for a busy CI machine.
SLACK = 0.04


def chunk(delta: dict | None = None, usage: dict | None = None) -> bytes:
    payload: dict = {"object": "chat.completion.chunk", "choices": []}
    if delta is not None:
        payload["choices"] = [{"index": 0, "delta": delta, "finish_reason": None}]
    if usage is not None:
        payload["usage"] = usage
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


class Scripted(httpx.SyncByteStream):
    """A body released piece by piece: (seconds to sleep first, bytes) per step."""

    def __init__(self, steps: list[tuple[float, bytes]], fail: Exception | None = None):
        self.steps = steps
        self.fail = fail

    def __iter__(self) -> Iterator[bytes]:
        for delay, data in self.steps:
            if delay:
                time.sleep(delay)
            yield data
        if self.fail is not None:
            raise self.fail


def client_for(steps, status=200, fail=None, seen: list | None = None) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(json.loads(request.content))
        return httpx.Response(
            status,
            headers={"content-type": "text/event-stream", "x-served-by": "worker-7"},
            stream=Scripted(steps, fail),
        )

    return httpx.Client(transport=httpx.MockTransport(handler))


def send(client: httpx.Client) -> object:
    body = chat_body("hi", model="m", max_tokens=4, session="s1")
    return stream_chat_completion(client, ENDPOINT, body)


def test_each_chunk_is_stamped_when_it_arrives():
    usage = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    steps = [
        (0.0, chunk({"role": "assistant"})),
        (0.05, chunk({"content": "a"})),
        (0.02, chunk({"content": "b"})),
        (0.03, chunk({"content": "c"})),
        (0.02, chunk({"content": "d"})),
        (0.0, chunk(usage=usage)),
        (0.0, DONE),
    ]
    record = send(client_for(steps))
    assert record.ok, record.error
    assert record.status == 200 and record.served_by == "worker-7"
    assert record.first_chunk_at - record.sent_at < SLACK  # the role chunk, not a token
    assert 0.05 <= record.ttft < 0.05 + SLACK
    assert record.ttfvt == record.ttft
    assert len(record.chunk_times) == 4
    for measured, truth in zip(record.itls, (0.02, 0.03, 0.02), strict=True):
        assert truth - 0.002 <= measured < truth + SLACK
    assert record.output_tokens == 4 and record.prompt_tokens == 3
    assert record.e2e >= 0.12
    assert record.done_at >= record.chunk_times[-1]


def test_reasoning_counts_for_ttft_and_content_for_first_visible_token():
    steps = [
        (0.0, chunk({"role": "assistant"})),
        (0.03, chunk({"reasoning_content": "think"})),
        (0.04, chunk({"reasoning_content": "more"})),
        (0.03, chunk({"content": "answer"})),
        (0.0, DONE),
    ]
    record = send(client_for(steps))
    assert record.ok
    assert 0.03 <= record.ttft < 0.03 + SLACK
    assert 0.10 <= record.ttfvt < 0.10 + SLACK
    assert len(record.chunk_times) == 3
    assert record.output_tokens == 3  # no usage chunk: counted


def test_a_line_split_across_reads_is_stamped_when_complete():
    whole = chunk({"content": "a"})
    steps = [(0.0, whole[:9]), (0.05, whole[9:]), (0.0, DONE)]
    record = send(client_for(steps))
    assert record.ok
    assert 0.05 <= record.ttft < 0.05 + SLACK


def test_chunks_in_one_read_share_an_arrival_time():
    steps = [(0.02, chunk({"content": "a"}) + chunk({"content": "b"})), (0.0, DONE)]
    record = send(client_for(steps))
    assert record.ok
    assert record.itls[0] < 0.005


def test_http_error_is_a_failed_record():
    record = send(client_for([(0.0, b'{"error": "no healthy worker"}')], status=503))
    assert not record.ok
    assert record.status == 503
    assert record.error.startswith("HTTP 503")
    assert "no healthy worker" in record.error
    assert record.ttft is None and record.e2e is not None


def test_connection_refused_is_a_failed_record():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    record = send(httpx.Client(transport=httpx.MockTransport(refuse)))
    assert not record.ok
    assert record.status is None
    assert record.error.startswith("connect error")


def test_stream_cut_before_done_is_a_failed_record_that_keeps_its_tokens():
    steps = [(0.0, chunk({"content": "a"})), (0.01, chunk({"content": "b"}))]
    record = send(client_for(steps))
    assert not record.ok
    assert record.error == "stream cut before [DONE]"
    assert record.status == 200
    assert len(record.chunk_times) == 2 and record.output_tokens == 2


def test_peer_closing_mid_stream_is_a_failed_record():
    steps = [(0.0, chunk({"content": "a"}))]
    cut = httpx.RemoteProtocolError("peer closed connection without sending complete message")
    record = send(client_for(steps, fail=cut))
    assert not record.ok
    assert record.error.startswith("stream cut")
    assert record.ttft is not None


def test_read_timeout_is_a_failed_record():
    steps = [(0.0, chunk({"content": "a"}))]
    record = send(client_for(steps, fail=httpx.ReadTimeout("timed out")))
    assert not record.ok
    assert record.error.startswith("read timeout")


def test_error_object_in_the_stream_is_a_failed_record():
    steps = [(0.0, chunk({"content": "a"})), (0.0, b'data: {"error": {"message": "oom"}}\n\n')]
    record = send(client_for(steps))
    assert not record.ok
    assert record.error == "server error in stream: oom"


def test_garbage_chunk_is_a_failed_record():
    record = send(client_for([(0.0, b"data: {half\n\n"), (0.0, DONE)]))
    assert not record.ok
    assert record.error.startswith("bad chunk")


def test_streamer_sends_a_streaming_body_with_usage_and_a_session():
    seen: list[dict] = []
    steps = [(0.0, chunk({"content": "a"})), (0.0, DONE)]
    client = client_for(steps, seen=seen)
    streamer = ChatStreamer("http://stub.test", max_tokens=5, sessions=3, model="m1", client=client)
    record = streamer.send()
    assert record.ok
    assert streamer.last_response_bytes > 0
    body = seen[0]
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 5 and body["model"] == "m1"
    assert body["user"] in {"session-00000", "session-00001", "session-00002"}
    assert body["messages"][0]["role"] == "user" and body["messages"][0]["content"]


def test_sessions_are_skewed_towards_the_first_keys():
    picker = SessionPicker(50, skew=1.0, rng=random.Random(7))
    picks = [picker.pick() for _ in range(5000)]
    hottest = picks.count("session-00000")
    coldest = picks.count("session-00049")
    assert hottest > 10 * max(coldest, 1)
    uniform = SessionPicker(50, skew=0.0, rng=random.Random(7))
    counts = [0] * 50
    for _ in range(5000):
        counts[int(uniform.pick().split("-")[1])] += 1
    assert max(counts) < 3 * min(counts)


@pytest.mark.parametrize(
    "base",
    [
        "http://h:1",
        "http://h:1/",
        "http://h:1/v1",
        "http://h:1/v1/chat/completions",
    ],
)
def test_chat_endpoint_accepts_base_urls_in_any_common_form(base):
    assert chat_endpoint(base) == "http://h:1/v1/chat/completions"


class _SlowSSE(BaseHTTPRequestHandler):
    """Writes a chunk, sleeps, writes the next: a real socket with known gaps."""

    protocol_version = "HTTP/1.1"
    gaps = (0.06, 0.03, 0.03)

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        self.rfile.read(int(self.headers["content-length"]))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        self.end_headers()
        for index, gap in enumerate(self.gaps):
            time.sleep(gap)
            self.wfile.write(chunk({"content": f"t{index}"}))
            self.wfile.flush()
        self.wfile.write(DONE)
        self.wfile.flush()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.integration
def test_timing_over_a_real_socket_does_not_wait_for_the_body():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowSSE)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with ChatStreamer(url, max_tokens=3) as streamer:
            record = streamer.send()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert record.ok, record.error
    assert 0.06 <= record.ttft < 0.06 + SLACK
    for measured in record.itls:
        assert 0.028 <= measured < 0.03 + SLACK
