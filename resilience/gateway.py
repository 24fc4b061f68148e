"""The inference gateway: one OpenAI-compatible entry point in front of many workers.

Requests are routed by session key through a bounded-load hash ring (KV-cache affinity without
hot spots). An attempt that fails before the first token reached the client is invisible to
the client, so it is retried on another worker; once a token byte went out, replaying would
duplicate output, so a broken stream ends with an SSE error event instead. Failing and slow
workers are ejected by `resilience.outliers`, fed by request outcomes and active health checks.

Run: python -m resilience.gateway --host 127.0.0.1 --port P --upstreams FILE [--config JSON]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import math
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_none

from resilience import routing_table
from resilience.hashring import BoundedLoadRing
from resilience.jsonconfig import dataclass_from_json
from resilience.outliers import Ejection, OutlierConfig, OutlierDetector

log = logging.getLogger("resilience.gateway")

_OUTLIER_FIELDS = {f.name for f in dataclasses.fields(OutlierConfig)}
_D = OutlierConfig()  # outlier defaults, repeated below so GatewayConfig is one flat object

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
FORWARDED_HEADERS = ("Authorization", "X-Session-Id", "X-Request-Id", "Accept")


@dataclass(frozen=True)
class GatewayConfig:
    """Every knob of the gateway; times in seconds. `--config` JSON overrides any of them."""

    load_factor: float = 1.25
    # 0: the ring bounds requests in flight. > 0: it bounds in-flight plus the requests each
    # worker started, decayed exponentially with this time constant, which evens out what each
    # worker serves over time (DESIGN's < 5% on Zipf sessions with load_factor 1.02) at the price
    # of stickiness. A decay rather than a sliding window: a window releases a burst all at
    # once W seconds later and the shares oscillate (13-43% over 4 s buckets, measured).
    balance_window_s: float = 0.0
    vnodes: int = 100
    attempts: int = 3
    connect_timeout_s: float = 1.0
    first_token_timeout_s: float = 5.0
    chunk_timeout_s: float = 30.0  # longest silence allowed mid-stream
    request_timeout_s: float = 120.0  # whole reply of a non-streaming request
    pool_size: int = 1000
    health_interval_s: float = 0.5
    health_timeout_s: float = 0.5
    health_path: str = "/health"
    routing_interval_s: float = 0.25  # how often the routing table is read from the store
    consecutive_failures: int = _D.consecutive_failures
    base_ejection_s: float = _D.base_ejection_s
    max_ejection_s: float = _D.max_ejection_s
    ejection_decay_s: float = _D.ejection_decay_s
    max_ejection_percent: float = _D.max_ejection_percent
    slow_factor: float = _D.slow_factor
    slow_floor_s: float = _D.slow_floor_s
    ttft_window: int = _D.ttft_window
    ttft_min_samples: int = _D.ttft_min_samples
    ttft_ewma_alpha: float = _D.ttft_ewma_alpha
    health_slow_s: float = _D.health_slow_s
    slow_health_strikes: int = _D.slow_health_strikes

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.health_interval_s <= 0 or self.health_timeout_s <= 0:
            raise ValueError("health interval and timeout must be positive")
        self.outlier_config()  # validates the outlier thresholds early

    @classmethod
    def from_json(cls, data: str | Mapping[str, Any]) -> GatewayConfig:
        """Build from a JSON object (text or parsed); unknown keys and wrong types are errors."""
        obj = json.loads(data) if isinstance(data, str) else data
        return dataclass_from_json(cls, obj, "gateway config")

    def outlier_config(self) -> OutlierConfig:
        return OutlierConfig(
            **{name: getattr(self, name) for name in _OUTLIER_FIELDS if hasattr(self, name)}
        )


@dataclass(frozen=True)
class Upstream:
    name: str
    url: str
    labels: dict[str, str] = field(default_factory=dict)


def parse_upstreams(raw: Any, where: str) -> list[Upstream]:
    """Upstreams from a JSON list of {"name", "url", "labels"} (a file or the store's table)."""
    if not isinstance(raw, list):
        raise ValueError(f"{where}: expected a JSON list of upstreams")
    upstreams = [
        Upstream(name=item["name"], url=item["url"].rstrip("/"), labels=item.get("labels", {}))
        for item in raw
    ]
    names = [u.name for u in upstreams]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: duplicate upstream names")
    return upstreams


def load_upstreams(path: str | Path) -> list[Upstream]:
    """Read the upstreams file."""
    return parse_upstreams(json.loads(Path(path).read_text()), str(path))


class GatewayMetrics:
    """The gateway's Prometheus series, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "gateway_requests_total",
            "Requests by outcome: HTTP status, stream_error or client_closed.",
            ["status", "worker"],
            registry=r,
        )
        self.duration = Histogram(
            "gateway_request_duration_seconds",
            "Arrival to last byte, as the gateway sees it.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120),
            registry=r,
        )
        self.ttft = Histogram(
            "gateway_time_to_first_token_seconds",
            "Arrival to first token forwarded, retries included, by the worker that served it.",
            ["worker"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10),
            registry=r,
        )
        self.retries = Counter(
            "gateway_retries_total",
            "Attempts retried on another worker, by why the previous attempt failed.",
            ["reason"],
            registry=r,
        )
        self.ejections = Counter(
            "gateway_ejections_total", "Outlier ejections.", ["worker", "reason"], registry=r
        )
        self.stream_errors = Counter(
            "gateway_stream_errors_total",
            "Streams cut after tokens were sent (never replayed).",
            ["worker"],
            registry=r,
        )
        self.healthy = Gauge(
            "gateway_upstream_healthy",
            "1 when routable and passing health checks.",
            ["worker"],
            registry=r,
        )
        self.inflight = Gauge(
            "gateway_upstream_inflight", "Attempts in flight per worker.", ["worker"], registry=r
        )


class UpstreamAttemptError(Exception):
    """An attempt failed before any token reached the client: safe to retry elsewhere."""

    def __init__(self, worker: str, reason: str, detail: str = "") -> None:
        super().__init__(f"{worker}: {reason} {detail}".strip())
        self.worker = worker
        self.reason = reason


class NoUpstreamAvailable(Exception):
    """Every member is ejected or was already tried."""


@dataclass
class _Call:
    """One client request on its way through attempts."""

    request: web.Request
    body: bytes
    stream: bool
    key: str
    headers: dict[str, str]
    arrived: float
    tried: list[str] = field(default_factory=list)
    outcome: str = "503"
    served_by: str = "none"


def _error_body(message: str, kind: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def classify_events(events: bytes) -> str | None:
    """'token', 'error' or 'done' for the first decisive SSE event in `events`, else None.

    Only used until the first token: after that, chunks are forwarded without parsing.
    """
    for line in events.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            return "done"
        try:
            obj = json.loads(payload)
        except ValueError:
            continue
        if not isinstance(obj, dict):
            continue
        if obj.get("error"):
            return "error"
        for choice in obj.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls"):
                return "token"
    return None


class Gateway:
    """Routing, retries, ejection and health checking; `build_app` gives the aiohttp app."""

    def __init__(
        self,
        config: GatewayConfig,
        upstreams: list[Upstream],
        upstreams_path: str | Path | None = None,
        store_endpoints: list[str] | None = None,
    ) -> None:
        self.config = config
        self.upstreams_path = upstreams_path
        self.store_endpoints = store_endpoints or []
        self._routing_task: asyncio.Task[None] | None = None
        self.metrics = GatewayMetrics()
        self.ring = BoundedLoadRing(vnodes=config.vnodes, load_factor=config.load_factor)
        self.detector = OutlierDetector(config.outlier_config())
        self.inflight: dict[str, int] = {}
        self._recent: dict[str, tuple[float, float]] = {}  # worker -> (decayed count, when)
        self.upstreams: dict[str, Upstream] = {}
        self._session: aiohttp.ClientSession | None = None
        self._health_session: aiohttp.ClientSession | None = None
        self._health_task: asyncio.Task[None] | None = None
        self.set_upstreams(upstreams)

    # -- membership ---------------------------------------------------------------------------

    def set_upstreams(self, upstreams: list[Upstream]) -> None:
        for gone in set(self.upstreams) - {u.name for u in upstreams}:
            self.metrics.healthy.remove(gone)
            self.metrics.inflight.remove(gone)
        self.upstreams = {u.name: u for u in upstreams}
        self.ring.set_members(self.upstreams)
        self.detector.set_members(self.upstreams)
        for name in self.upstreams:
            self.inflight.setdefault(name, 0)
        self._refresh_health_gauges()

    def reload_upstreams(self) -> None:
        """SIGHUP: re-read the upstreams file; a bad file leaves the current set in place."""
        if self.upstreams_path is None:
            return
        try:
            self.set_upstreams(load_upstreams(self.upstreams_path))
            log.info("reloaded upstreams: %s", ", ".join(self.upstreams))
        except (OSError, ValueError, KeyError) as exc:
            log.error("keeping the current upstreams, cannot reload: %s", exc)

    def _refresh_health_gauges(self) -> None:
        for name in self.upstreams:
            self.metrics.healthy.labels(name).set(1 if self.detector.is_healthy(name) else 0)

    def _note_ejection(self, ejection: Ejection | None) -> None:
        if ejection is None:
            return
        self.metrics.ejections.labels(ejection.member, ejection.reason).inc()
        log.warning(
            "ejected %s for %.1fs: %s", ejection.member, ejection.duration_s, ejection.reason
        )
        self._refresh_health_gauges()

    def pick(self, key: str, tried: list[str]) -> str | None:
        exclude = self.detector.ejected_members().union(tried)
        return self.ring.choose(key, self._loads(), exclude)

    def note_started(self, worker: str) -> None:
        """Count an attempt for the recent-load balance (no-op when it is off)."""
        if self.config.balance_window_s > 0:
            now = time.monotonic()
            self._recent[worker] = (self._decayed(worker, now) + 1.0, now)

    def _decayed(self, worker: str, now: float) -> float:
        count, when = self._recent.get(worker, (0.0, now))
        return count * math.exp(-(now - when) / self.config.balance_window_s)

    def _loads(self) -> Mapping[str, float]:
        """What the ring balances: requests in flight, plus the recent ones when asked."""
        if self.config.balance_window_s <= 0:
            return self.inflight
        now = time.monotonic()
        return {
            name: self.inflight.get(name, 0) + self._decayed(name, now) for name in self.upstreams
        }

    # -- app ----------------------------------------------------------------------------------

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_post("/v1/chat/completions", self.handle_chat)
        app.router.add_get("/health", self.handle_health)
        app.router.add_get("/upstreams", self.handle_upstreams)
        app.router.add_get("/metrics", self.handle_metrics)
        app.cleanup_ctx.append(self._lifecycle)
        return app

    async def _lifecycle(self, app: web.Application) -> Any:
        # aiohttp sets TCP_NODELAY on every client and server connection it makes.
        cfg = self.config
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=cfg.pool_size, limit_per_host=0),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=cfg.connect_timeout_s, sock_read=cfg.chunk_timeout_s
            ),
            auto_decompress=False,
        )
        # A separate small pool, so health checks never queue behind inference traffic.
        self._health_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=cfg.health_timeout_s),
        )
        await self.check_health_once()  # so /health is truthful from the first request
        self._health_task = asyncio.create_task(self._health_loop())
        if self.store_endpoints:
            self._routing_task = asyncio.create_task(self._routing_loop())
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self.reload_upstreams)
        except (NotImplementedError, RuntimeError):
            pass
        yield
        tasks = [t for t in (self._health_task, self._routing_task) if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._session.close()
        await self._health_session.close()

    # -- routing table in the metadata store ----------------------------------------------------

    async def _routing_loop(self) -> None:
        """Follow the routing table in the store; keep the last one while it is unreachable."""
        interval = self.config.routing_interval_s
        timeout = aiohttp.ClientTimeout(total=max(1.0, interval))
        current = None
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                table = await routing_table.fetch(session, self.store_endpoints)
                if table is not None and table != current:
                    try:
                        self.set_upstreams(parse_upstreams(table, "the store's routing table"))
                        current = table
                        log.info("routing table from the store: %s", ", ".join(self.upstreams))
                    except (ValueError, KeyError, TypeError) as exc:
                        log.error("ignoring a malformed routing table: %s", exc)
                await asyncio.sleep(interval)

    # -- health checks ------------------------------------------------------------------------

    async def _health_loop(self) -> None:
        interval = self.config.health_interval_s
        while True:
            started = time.monotonic()
            try:
                await self.check_health_once()
            except Exception:  # a bug here must not stop health checking for good
                log.exception("health round failed")
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    async def check_health_once(self) -> None:
        names = list(self.upstreams)
        await asyncio.gather(*(self._check_one(name) for name in names))
        self._refresh_health_gauges()

    async def _check_one(self, name: str) -> None:
        upstream = self.upstreams.get(name)
        if upstream is None or self._health_session is None:
            return
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.config.health_timeout_s):
                async with self._health_session.get(upstream.url + self.config.health_path) as r:
                    await r.read()
                    ok = r.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            ok = False
        self._note_ejection(self.detector.record_health(name, ok, time.monotonic() - started))

    # -- small handlers -----------------------------------------------------------------------

    async def handle_health(self, request: web.Request) -> web.Response:
        healthy = [n for n in self.upstreams if self.detector.is_healthy(n)]
        status = 200 if healthy else 503
        return web.json_response(
            {"status": "ok" if healthy else "unavailable", "healthy_upstreams": healthy},
            status=status,
        )

    async def handle_upstreams(self, request: web.Request) -> web.Response:
        now_wall, snap = time.time(), self.detector.snapshot()
        out = {}
        for name, upstream in self.upstreams.items():
            s = snap[name]
            left = s.pop("ejected_for_s")
            out[name] = {
                "url": upstream.url,
                "labels": upstream.labels,
                **s,
                "ejected_until": now_wall + left if isinstance(left, float) else None,
                "inflight": self.inflight.get(name, 0),
            }
        return web.json_response(out)

    async def handle_metrics(self, request: web.Request) -> web.Response:
        for name, count in self.inflight.items():
            if name in self.upstreams:
                self.metrics.inflight.labels(name).set(count)
        return web.Response(
            body=generate_latest(self.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    # -- chat completions ---------------------------------------------------------------------

    async def handle_chat(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        body = await request.read()
        try:
            payload = json.loads(body)
            if not isinstance(payload, dict):
                raise ValueError("not an object")
        except ValueError:
            return web.json_response(
                _error_body(
                    "request body must be a JSON object", "invalid_request_error", "invalid_json"
                ),
                status=400,
            )
        key = payload.get("user") or request.headers.get("x-session-id") or os.urandom(8).hex()
        headers = {"Content-Type": "application/json"}
        headers.update((h, request.headers[h]) for h in FORWARDED_HEADERS if h in request.headers)
        call = _Call(request, body, bool(payload.get("stream")), str(key), headers, arrived)
        try:
            return await self._route(call)
        finally:
            self.metrics.requests.labels(call.outcome, call.served_by).inc()
            self.metrics.duration.observe(time.monotonic() - arrived)

    async def _route(self, call: _Call) -> web.StreamResponse:
        retrying = AsyncRetrying(
            stop=lambda state: self._stop_retrying(call, state),
            retry=retry_if_exception_type(UpstreamAttemptError),
            wait=wait_none(),
            before_sleep=self._count_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    worker = self.pick(call.key, call.tried)
                    if worker is None:
                        raise NoUpstreamAvailable()
                    call.tried.append(worker)
                    return await self._attempt(call, worker)
        except UpstreamAttemptError as exc:
            call.served_by = exc.worker
            message = f"no worker could serve the request ({', '.join(call.tried)}: {exc.reason})"
        except NoUpstreamAvailable:
            message = "no healthy worker is available"
        call.outcome = "503"
        return web.json_response(
            _error_body(message, "service_unavailable", "no_upstream_available"),
            status=503,
            headers={"X-Gateway-Attempts": str(len(call.tried))},
        )

    def _stop_retrying(self, call: _Call, state: RetryCallState) -> bool:
        return (
            state.attempt_number >= self.config.attempts or self.pick(call.key, call.tried) is None
        )

    def _count_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        reason = exc.reason if isinstance(exc, UpstreamAttemptError) else "other"
        self.metrics.retries.labels(reason).inc()

    def _fail(self, worker: str, reason: str, detail: str = "") -> UpstreamAttemptError:
        """Blame the worker for a pre-token failure and build the exception that retries."""
        self._note_ejection(self.detector.record_failure(worker))
        log.info("attempt on %s failed before first token: %s %s", worker, reason, detail)
        return UpstreamAttemptError(worker, reason, detail)

    async def _attempt(self, call: _Call, worker: str) -> web.StreamResponse:
        assert self._session is not None
        upstream = self.upstreams[worker]
        url = upstream.url + "/v1/chat/completions"
        self.inflight[worker] = self.inflight.get(worker, 0) + 1
        self.note_started(worker)
        upstream_resp: aiohttp.ClientResponse | None = None
        started = time.monotonic()
        limit = self.config.first_token_timeout_s if call.stream else self.config.request_timeout_s
        try:
            try:
                async with asyncio.timeout(limit):
                    upstream_resp = await self._session.post(
                        url, data=call.body, headers=call.headers
                    )
                    status = upstream_resp.status
                    if status >= 500 or status == 429:
                        raise self._fail(
                            worker, "http_429" if status == 429 else "http_5xx", str(status)
                        )
                    is_sse = upstream_resp.content_type == "text/event-stream"
                    if not (call.stream and status == 200 and is_sse):
                        return await self._relay_whole(call, worker, upstream_resp)
                    head, rest, done = await self._read_until_first_token(worker, upstream_resp)
            except UpstreamAttemptError:
                raise
            except aiohttp.ConnectionTimeoutError as exc:
                raise self._fail(worker, "connect_timeout", repr(exc)) from exc
            except aiohttp.ClientConnectorError as exc:
                raise self._fail(worker, "connect_error", repr(exc)) from exc
            except TimeoutError as exc:
                reason = "first_token_timeout" if call.stream else "timeout"
                raise self._fail(worker, reason) from exc
            except (aiohttp.ClientError, OSError) as exc:
                raise self._fail(worker, "disconnected", repr(exc)) from exc
            if not done:
                self._note_ejection(self.detector.record_ttft(worker, time.monotonic() - started))
            return await self._forward_stream(call, worker, upstream_resp, head, rest, done)
        finally:
            self.inflight[worker] -= 1
            if upstream_resp is not None:
                # Back to the keep-alive pool when fully read; aiohttp closes it otherwise.
                upstream_resp.release()

    async def _relay_whole(
        self, call: _Call, worker: str, upstream_resp: aiohttp.ClientResponse
    ) -> web.Response:
        """Non-streaming replies and upstream 4xx: nothing reached the client before this."""
        body = await upstream_resp.read()
        if upstream_resp.status < 400:
            self.detector.record_success(worker)
        call.outcome = str(upstream_resp.status)
        call.served_by = worker
        return web.Response(
            body=body,
            status=upstream_resp.status,
            headers={
                "Content-Type": upstream_resp.headers.get("Content-Type", "application/json"),
                "X-Served-By": upstream_resp.headers.get("x-served-by", worker),
                "X-Gateway-Attempts": str(len(call.tried)),
            },
        )

    async def _read_until_first_token(
        self, worker: str, upstream_resp: aiohttp.ClientResponse
    ) -> tuple[bytes, bytes, bool]:
        """Buffer SSE events until one carries a token: (events, partial rest, ended with DONE).

        Nothing is sent to the client in this phase, so any failure here is retryable.
        """
        head = bytearray()
        pending = b""
        while True:
            data = await upstream_resp.content.readany()
            if not data:
                raise self._fail(worker, "empty_stream", "ended before the first token")
            pending += data
            cut = pending.rfind(b"\n\n")
            if cut < 0:
                continue
            events, pending = pending[: cut + 2], pending[cut + 2 :]
            head += events
            kind = classify_events(events)
            if kind == "error":
                detail = events[:200].decode(errors="replace")
                raise self._fail(worker, "upstream_error_event", detail)
            if kind is not None:
                return bytes(head), pending, kind == "done"

    async def _forward_stream(
        self,
        call: _Call,
        worker: str,
        upstream_resp: aiohttp.ClientResponse,
        head: bytes,
        pending: bytes,
        done: bool,
    ) -> web.StreamResponse:
        """Relay complete SSE events as they arrive; from here on a failure is never replayed."""
        call.served_by = worker
        response = web.StreamResponse(
            status=200,
            headers={
                **SSE_HEADERS,
                "X-Served-By": upstream_resp.headers.get("x-served-by", worker),
                "X-Gateway-Attempts": str(len(call.tried)),
            },
        )
        try:
            await response.prepare(call.request)
            await response.write(head)
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            call.outcome = "client_closed"
            return response
        self.metrics.ttft.labels(worker).observe(time.monotonic() - call.arrived)
        if done:
            self.detector.record_success(worker)
            call.outcome = "200"
            await response.write_eof()
            return response
        content = upstream_resp.content
        try:
            while True:
                try:
                    data = await content.readany()
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    return await self._break_stream(call, worker, response, repr(exc))
                if not data:
                    break
                pending += data
                cut = pending.rfind(b"\n\n")
                if cut < 0:
                    continue
                out, pending = pending[: cut + 2], pending[cut + 2 :]
                await response.write(out)
            if pending:
                await response.write(pending)
            await response.write_eof()
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            call.outcome = "client_closed"
            return response
        self.detector.record_success(worker)
        call.outcome = "200"
        return response

    async def _break_stream(
        self, call: _Call, worker: str, response: web.StreamResponse, detail: str
    ) -> web.StreamResponse:
        """The worker died after tokens went out: tell the client in-band, close, count it."""
        self._note_ejection(self.detector.record_failure(worker))
        self.metrics.stream_errors.labels(worker).inc()
        call.outcome = "stream_error"
        log.warning("stream from %s broke after the first token: %s", worker, detail)
        event = _error_body(
            f"upstream {worker} failed mid-stream; the partial reply is not retried",
            "upstream_error",
            "upstream_disconnected",
        )
        try:
            await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
            await response.write_eof()
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            pass
        return response


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m resilience.gateway", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstreams", required=True, help="JSON list of {name, url, labels}")
    parser.add_argument("--config", default="{}", help="JSON object overriding GatewayConfig")
    parser.add_argument(
        "--store", default="", help="comma-separated client URLs of the metadata store"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("GATEWAY_LOG_LEVEL", "WARNING"),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    config = GatewayConfig.from_json(args.config)
    gateway = Gateway(
        config,
        load_upstreams(args.upstreams),
        upstreams_path=args.upstreams,
        store_endpoints=[e for e in args.store.split(",") if e],
    )
    web.run_app(
        gateway.build_app(),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        shutdown_timeout=1.0,
    )


if __name__ == "__main__":
    main()
