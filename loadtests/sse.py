"""A streaming chat-completions client that times every SSE chunk as it arrives.

Locust's own `stream=True` timing stops at the response headers and FastHttpUser's
`iter_content(n)` waits for n bytes, so neither can measure time to first token or
inter-token latency. This client reads the body with httpx `iter_lines()`, which yields each
line as soon as the socket read that carried it returns, and stamps it then.

It never raises for a failed request: connection errors, timeouts, HTTP errors and streams cut
before `[DONE]` all become a `LoadRecord` with `ok=False`, an error string and the status.
It does not import Locust and works both in plain Python and under gevent (httpx's sync client
uses the standard socket module, which gevent monkey-patches).
"""

from __future__ import annotations

import functools
import json
import random
import ssl
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import httpx

from loadtests.records import LoadRecord

DEFAULT_MODEL = "deepseek-sim"
CHAT_PATH = "/v1/chat/completions"

# Varied lengths so prefill time varies as it does with real traffic.
PROMPTS: tuple[str, ...] = (
    "Say hello.",
    "What is the capital of France?",
    "Explain what a GPU does in one sentence.",
    "Write a haiku about network partitions.",
    "List three causes of tail latency in distributed systems and one fix for each.",
    "Summarize the Raft consensus algorithm for an engineer who knows Paxos, focusing on "
    "leader election, log replication and what happens when a leader fails mid-write.",
    "Translate to German: The cluster recovered within one second after the node failed.",
    "You are a site reliability engineer. A model server's time to first token doubled after "
    "a deploy while its GPU utilisation fell. Walk through how you would find the cause, "
    "which metrics you would look at first, and what you would roll back.",
    "Give a Python function that returns the n-th Fibonacci number iteratively.",
    "Why does continuous batching improve throughput for LLM inference?",
    "Compare consistent hashing with bounded loads to plain consistent hashing. When does "
    "the bound matter, and what does it cost in cache affinity? Answer in two paragraphs.",
    "Count from one to ten.",
)


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    """One TLS context for every user: building one loads the CA bundle (tens of ms),
    which under gevent would stall every stream in the process once per user."""
    return httpx.create_ssl_context()


def chat_endpoint(base_url: str) -> str:
    """The chat-completions URL for a base URL given with or without a trailing `/v1`."""
    base = base_url.rstrip("/")
    if base.endswith(CHAT_PATH):
        return base
    if base.endswith("/v1"):
        return base + "/chat/completions"
    return base + CHAT_PATH


class SessionPicker:
    """Picks session keys with a Zipf-like skew, so a few sessions are hot as in production.

    `skew` is the Zipf exponent: 0 gives a uniform choice among the sessions.
    """

    def __init__(self, sessions: int = 200, skew: float = 1.0, rng: random.Random | None = None):
        if sessions < 1:
            raise ValueError("sessions must be at least 1")
        self.keys = [f"session-{i:05d}" for i in range(sessions)]
        weights = [1.0 / (rank**skew) for rank in range(1, sessions + 1)]
        self._cum_weights = list(_accumulate(weights))
        self._rng = rng or random.Random()

    def pick(self) -> str:
        return self._rng.choices(self.keys, cum_weights=self._cum_weights, k=1)[0]


def _accumulate(values: Iterable[float]) -> Iterator[float]:
    total = 0.0
    for value in values:
        total += value
        yield total


def chat_body(prompt: str, *, model: str, max_tokens: int, session: str) -> dict[str, Any]:
    """An OpenAI streaming request body that asks for `usage` in the last chunk."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": session,
    }


class _RequestClock:
    """Unix time at the send, plus a monotonic offset after it.

    `sent_at` is comparable with fault timestamps from other processes (same wall clock),
    while the gaps inside one request cannot be bent by a wall-clock step.
    """

    __slots__ = ("sent_at", "_perf0")

    def __init__(self) -> None:
        self._perf0 = time.perf_counter()
        self.sent_at = time.time()

    def now(self) -> float:
        return self.sent_at + (time.perf_counter() - self._perf0)


def _sse_data(lines: Iterable[str]) -> Iterator[str]:
    """The `data` payloads of an SSE stream, one per event, yielded as soon as complete."""
    buffer: list[str] = []
    for line in lines:
        if not line:
            if buffer:
                yield "\n".join(buffer)
                buffer.clear()
            continue
        if line.startswith(":"):
            continue  # comment / keep-alive
        name, _, value = line.partition(":")
        if name == "data":
            buffer.append(value[1:] if value.startswith(" ") else value)
    if buffer:
        yield "\n".join(buffer)


def _delta_text(chunk: dict[str, Any]) -> tuple[str, str]:
    """(reasoning, content) text carried by a chunk's first choice."""
    choices = chunk.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return "", ""
    delta = choices[0].get("delta") or {}
    reasoning = delta.get("reasoning_content") or delta.get("reasoning") or ""
    content = delta.get("content") or ""
    return str(reasoning), str(content)


def _drain(events: Iterator[str]) -> None:
    """Read the body to its end so the keep-alive connection can be reused."""
    try:
        for _ in events:
            pass
    except Exception:  # noqa: BLE001 - the request is complete; a late error changes nothing
        pass


def _error_text(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, httpx.ConnectTimeout):
        return "connect timeout"
    if isinstance(exc, httpx.ConnectError):
        return f"connect error: {exc}"
    if isinstance(exc, httpx.ReadTimeout):
        return f"read timeout: no data for {timeout:g}s"
    if isinstance(exc, httpx.TimeoutException):
        return f"timeout: {type(exc).__name__}"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"stream cut: {exc}"
    if isinstance(exc, httpx.ReadError):
        return f"read error: {exc}"
    return f"{type(exc).__name__}: {exc}"


def stream_chat_completion(
    client: httpx.Client,
    endpoint: str,
    body: dict[str, Any],
    *,
    total_timeout: float = 120.0,
    read_timeout: float = 30.0,
    record_id: str | None = None,
) -> LoadRecord:
    """Send one streaming request and return its record; never raises for a failed request.

    `read_timeout` is only used to word the error; the client's own timeout enforces it.
    `total_timeout` bounds the whole stream, so a server trickling bytes cannot hold a user.
    """
    record, _ = _stream(client, endpoint, body, total_timeout, read_timeout, record_id)
    return record


def _stream(
    client: httpx.Client,
    endpoint: str,
    body: dict[str, Any],
    total_timeout: float,
    read_timeout: float,
    record_id: str | None,
) -> tuple[LoadRecord, int]:
    """The request itself; also returns the bytes received, for Locust's size column."""
    received = 0
    clock = _RequestClock()
    record = LoadRecord(id=record_id or uuid.uuid4().hex, sent_at=clock.sent_at)
    token_chunks = 0
    done = False
    try:
        with client.stream("POST", endpoint, json=body) as response:
            record.status = response.status_code
            record.served_by = response.headers.get("x-served-by")
            if response.status_code != 200:
                reply = response.read()
                received = len(reply)
                detail = reply[:200].decode("utf-8", "replace").strip()
                record.error = f"HTTP {response.status_code}" + (f": {detail}" if detail else "")
                return record, received
            events = _sse_data(response.iter_lines())
            for data in events:
                now = clock.now()
                if record.first_chunk_at is None:
                    record.first_chunk_at = now
                if data.strip() == "[DONE]":
                    done = True
                    record.done_at = now
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    record.error = f"bad chunk: {data[:80]!r}"
                    break
                if not isinstance(chunk, dict):
                    record.error = f"bad chunk: {data[:80]!r}"
                    break
                if chunk.get("error"):
                    error = chunk["error"]
                    message = error.get("message") if isinstance(error, dict) else error
                    record.error = f"server error in stream: {message}"
                    break
                usage = chunk.get("usage")
                if isinstance(usage, dict):
                    record.output_tokens = int(usage.get("completion_tokens") or 0)
                    if usage.get("prompt_tokens") is not None:
                        record.prompt_tokens = int(usage["prompt_tokens"])
                reasoning, content = _delta_text(chunk)
                if reasoning or content:
                    token_chunks += 1
                    record.chunk_times.append(now)
                    if record.first_token_at is None:
                        record.first_token_at = now
                    if content and record.first_visible_token_at is None:
                        record.first_visible_token_at = now
                if now - clock.sent_at > total_timeout:
                    record.error = f"timeout: stream longer than {total_timeout:g}s"
                    break
            if done:
                _drain(events)
            elif record.error is None:
                record.error = "stream cut before [DONE]"
            received = response.num_bytes_downloaded
    except Exception as exc:  # noqa: BLE001 - every failure is data, never an exception
        record.error = _error_text(exc, read_timeout)
    finally:
        if record.done_at is None:
            record.done_at = clock.now()
        if record.output_tokens == 0:
            record.output_tokens = token_chunks
        record.ok = done and record.error is None and record.status == 200
    return record, received


class ChatStreamer:
    """Sends streaming chat requests to one OpenAI-compatible endpoint and records each.

    One instance per simulated user: it keeps one keep-alive connection, like a real client.
    """

    def __init__(
        self,
        base_url: str,
        *,
        model: str = DEFAULT_MODEL,
        max_tokens: int = 32,
        sessions: int = 200,
        session_skew: float = 1.0,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        total_timeout: float = 120.0,
        prompts: Sequence[str] = PROMPTS,
        client: httpx.Client | None = None,
        rng: random.Random | None = None,
    ):
        self.endpoint = chat_endpoint(base_url)
        self.model = model
        self.max_tokens = max_tokens
        self.timeout = timeout
        self.total_timeout = total_timeout
        self.prompts = tuple(prompts)
        self._rng = rng or random.Random()
        self.sessions = SessionPicker(sessions, session_skew, self._rng)
        self.last_response_bytes = 0
        self._own_client = client is None
        # trust_env=False: a proxy set in the environment must never carry loopback test traffic.
        self.client = client or httpx.Client(
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            verify=shared_ssl_context(),
            trust_env=False,
        )

    def next_body(self) -> dict[str, Any]:
        return chat_body(
            self._rng.choice(self.prompts),
            model=self.model,
            max_tokens=self.max_tokens,
            session=self.sessions.pick(),
        )

    def send(self, body: dict[str, Any] | None = None) -> LoadRecord:
        """One request; `last_response_bytes` then holds the size of its reply body."""
        record, self.last_response_bytes = _stream(
            self.client,
            self.endpoint,
            body or self.next_body(),
            self.total_timeout,
            self.timeout,
            None,
        )
        return record

    def close(self) -> None:
        if self._own_client:
            self.client.close()

    def __enter__(self) -> ChatStreamer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
