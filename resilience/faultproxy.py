"""The fault proxy: every inter-process link of the embedded cluster passes through it.

This kernel has no netem, so network faults are made here, on real bytes: each link is a TCP
listener forwarding to one upstream, and each direction of each connection is a `Pipe` that
holds chunks until the active faults of that direction let them go (see
`resilience.linkfaults` for the models). Run it as::

    python -m resilience.faultproxy --host 127.0.0.1 --control-port P --links FILE

Links come from the file at start and from ``PUT /links/{name}`` / ``DELETE /links/{name}`` at
run time (a node added to or removed from the cluster).

What each fault does to the bytes (faults change live, open connections included):

- delay/jitter: each chunk is held until now + sampled delay, never overtaking the previous
  chunk of its pipe (netem keeps order the same way when its rate/jitter reorder is off);
- loss: a chunk that loses a segment arrives one retransmission timeout late (doubling when
  lost again), never missing, because TCP retransmits; TCP giving up means a reset;
- rate: a token bucket shared by every connection of the flow, like a qdisc on an interface;
- blackhole: nothing is delivered, the connection stays open and the proxy stops reading once
  a window is held, so senders stall as behind a real partition. New connections are accepted
  (the kernel completes the client's handshake) but the target sees none until the blackhole
  goes. When it goes, held bytes are delivered in order, as TCP retransmission would, rather
  than discarded: dropping bytes out of a stream would corrupt it, which no network can do;
- reset: open connections of the link are aborted with RST on both sides and new ones are
  reset at once, whatever the direction (a TCP connection does not survive RSTs one way).

Not modelled: the handshake's own round trip under delay (the client's connect completes at
once), and TCP's backoff after a blackhole lifts (held bytes flow immediately).

The per-chunk path is built on asyncio protocols (no stream tasks, no per-chunk coroutines):
with no fault on a flow a chunk is written straight to the other socket; with faults, one
timer per pipe waits for the head of its queue. Flow control is end to end: when the far
socket's buffer or a pipe's queue is full, the proxy stops reading, so the sender's own TCP
stalls as it would behind a slow or partitioned link.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import enum
import json
import logging
import random
import signal
import socket
import struct
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from resilience.linkfaults import DEFAULT_RTO_S, FLOWS, Flow, LinkFault, LinkPolicy, combine

LOG = logging.getLogger("resilience.faultproxy")

# Bytes a pipe may hold (delayed, rate-limited or blackholed) before it stops reading. It acts
# as the path's window: at 1 MiB a 200 ms delay still carries 5 MB/s.
QUEUE_WINDOW_BYTES = 1 << 20
# Linux gives up a connect after 6 SYN retransmissions (127 s); a connection accepted during a
# blackhole waits for the handshake at most that long, then is reset.
SYN_GIVE_UP_S = 127.0
# Timers fire up to this early (the loop's clock resolution); a chunk this close is due.
_DUE_SLACK_S = 0.0005


class _Marker(enum.Enum):
    """Queue entries that are not bytes."""

    EOF = "forward the half-close"
    ABORT = "TCP gave up (retransmissions exhausted): reset the connection"


_READ_PAUSED_DST_FULL = 1
_READ_PAUSED_WINDOW_FULL = 2


@dataclass(frozen=True)
class LinkSpec:
    """One line of the links file (docs/internals.md, "Fault proxy")."""

    name: str
    source: str
    target: str
    listen_port: int
    upstream_host: str
    upstream_port: int

    @classmethod
    def from_json(cls, data: Any, *, name: str | None = None) -> LinkSpec:
        """Validate one entry; `name` (from the URL of ``PUT /links``) may stand in for its own.

        Raises ValueError with a one-line message naming the offending field.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a link must be a JSON object, got {type(data).__name__}")
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(f"unknown link field(s) {unknown}; allowed: {fields}")
        values = dict(data)
        if name is not None:
            body_name = values.setdefault("name", name)
            if body_name != name:
                raise ValueError(f"name in body {body_name!r} differs from name in path {name!r}")
        for key in fields:
            value = values.get(key)
            if key.endswith("_port"):
                if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
                    raise ValueError(f"{key!r} must be a port number (1-65535), got {value!r}")
            elif not isinstance(value, str) or not value:
                raise ValueError(f"{key!r} must be a non-empty string, got {value!r}")
        return cls(**values)


def load_links(path: Path) -> list[LinkSpec]:
    """Read and check the links file: names and listen ports must be unique."""
    raw = json.loads(Path(path).read_text())
    if not isinstance(raw, list):
        raise ValueError(f"{path}: the links file must hold a JSON list")
    specs = [LinkSpec.from_json(item) for item in raw]
    for attr in ("name", "listen_port"):
        values = [getattr(s, attr) for s in specs]
        if len(values) != len(set(values)):
            raise ValueError(f"{path}: duplicate link {attr} in {values}")
    return specs


def _set_nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _abort_with_rst(transport: asyncio.BaseTransport | None) -> None:
    """Close so the peer sees a connection reset: SO_LINGER 0 makes close() send RST."""
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass  # already closed underneath us
    transport.abort()  # type: ignore[attr-defined]


class LinkConflict(Exception):
    """A link cannot be added: its name or listen port is taken, or the port cannot be bound."""


class Link:
    """Runtime state of one link: listener, open connections, counters, current policies."""

    def __init__(self, spec: LinkSpec) -> None:
        self.spec = spec
        self.connections: set[Connection] = set()
        self.connections_total = 0
        self.bytes: dict[str, int] = {flow: 0 for flow in FLOWS}
        self.policies: dict[str, LinkPolicy | None] = {flow: None for flow in FLOWS}
        self.fault_ids: tuple[str, ...] = ()
        self.server: asyncio.Server | None = None
        # Set while no blackhole is active: a handshake cannot cross a blackholed link, so new
        # connections reach the target only once it is lifted (the target sees no SYN before).
        self.handshake_open = asyncio.Event()
        self.handshake_open.set()

    def policies_changed(self) -> None:
        blackholed = any(
            p is not None and p.partition == "blackhole" for p in self.policies.values()
        )
        if blackholed:
            self.handshake_open.clear()
        else:
            self.handshake_open.set()

    @property
    def resetting(self) -> bool:
        """A reset partition kills whole connections: TCP cannot survive RSTs one way only."""
        return any(p is not None and p.partition == "reset" for p in self.policies.values())

    def describe(self) -> dict[str, Any]:
        queued = {flow: 0 for flow in FLOWS}
        for conn in self.connections:
            for pipe in (conn.up, conn.down):
                queued[pipe.flow] += pipe.queued_bytes
        return {
            **asdict(self.spec),
            "faults": list(self.fault_ids),
            "open_connections": len(self.connections),
            "connections_total": self.connections_total,
            "bytes": dict(self.bytes),
            "queued_bytes": queued,
        }


class Pipe:
    """One direction of one proxied connection, obeying the faults of its flow chunk by chunk."""

    __slots__ = (
        "conn",
        "link",
        "flow",
        "src",
        "dst",
        "queued_bytes",
        "done",
        "_queue",
        "_last_due",
        "_timer",
        "_read_paused",
        "_loop",
    )

    def __init__(self, conn: Connection, flow: Flow) -> None:
        self.conn = conn
        self.link = conn.link
        self.flow = flow
        self.src: asyncio.Transport | None = None
        self.dst: asyncio.Transport | None = None
        self.queued_bytes = 0
        self.done = False  # EOF delivered, or the far side is gone
        self._queue: deque[tuple[float, bytes | _Marker]] = deque()
        self._last_due = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._read_paused = 0
        self._loop = conn.loop

    # ---- input side

    def feed(self, data: bytes) -> None:
        """Take a chunk read from `src`; the hot path when no fault is active on the flow."""
        if self.done:
            return  # the far side is gone: nothing can be delivered
        policy = self.link.policies[self.flow]
        if policy is None and not self._queue and self.dst is not None:
            self.dst.write(data)
            self.link.bytes[self.flow] += len(data)
            return
        self._feed_slow(data, policy)

    def _feed_slow(self, data: bytes, policy: LinkPolicy | None) -> None:
        if policy is not None and policy.partition == "reset":
            self.conn.reset()
            return
        now = self._loop.time()
        if policy is None or policy.partition is not None:
            self._enqueue(max(now, self._last_due), data)  # blackhole holds it in the queue
        else:
            step = policy.slice_bytes or len(data)
            for start in range(0, len(data), step):
                piece = data[start : start + step] if step < len(data) else data
                departure = policy.departure(len(piece), now)
                due = max(departure.at, self._last_due)
                if departure.gave_up:
                    self._enqueue(due, _Marker.ABORT)
                    break
                self._enqueue(due, piece)
        self._schedule()

    def feed_eof(self) -> None:
        """The source half-closed; forward that after every byte it sent before."""
        if self.done:
            return
        self._enqueue(max(self._loop.time(), self._last_due), _Marker.EOF)
        self._schedule()

    def _enqueue(self, due: float, item: bytes | _Marker) -> None:
        self._last_due = due
        self._queue.append((due, item))
        if isinstance(item, bytes):
            self.queued_bytes += len(item)
            if self.queued_bytes > QUEUE_WINDOW_BYTES:
                self._pause_reading(_READ_PAUSED_WINDOW_FULL)

    # ---- output side

    def kick(self) -> None:
        """Re-check the queue after the flow's faults changed (e.g. a blackhole was lifted)."""
        self._schedule()

    def _schedule(self) -> None:
        if self._timer is not None or not self._queue or self.dst is None or self.done:
            return
        policy = self.link.policies[self.flow]
        if policy is not None and policy.partition == "blackhole":
            return  # held until kick() after the blackhole goes
        due = self._queue[0][0]
        if due <= self._loop.time() + _DUE_SLACK_S:
            self._flush()
        else:
            self._timer = self._loop.call_at(due, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._flush()

    def _flush(self) -> None:
        policy = self.link.policies[self.flow]
        if policy is not None and policy.partition == "blackhole":
            return
        if policy is not None and policy.partition == "reset":
            self.conn.reset()
            return
        dst = self.dst
        assert dst is not None
        limit = self._loop.time() + _DUE_SLACK_S
        queue = self._queue
        while queue and queue[0][0] <= limit:
            _, item = queue.popleft()
            if item is _Marker.ABORT:
                self.conn.reset()
                return
            if item is _Marker.EOF:
                self._deliver_eof()
                return
            self.queued_bytes -= len(item)
            if not dst.is_closing():
                dst.write(item)
                self.link.bytes[self.flow] += len(item)
        if self._read_paused & _READ_PAUSED_WINDOW_FULL and self.queued_bytes <= (
            QUEUE_WINDOW_BYTES // 2
        ):
            self._resume_reading(_READ_PAUSED_WINDOW_FULL)
        self._schedule()

    def _deliver_eof(self) -> None:
        self.done = True
        self._drop_queue()
        if self.dst is not None and not self.dst.is_closing() and self.dst.can_write_eof():
            self.dst.write_eof()
        self.conn.pipe_finished()

    # ---- flow control and teardown

    def dst_buffer_full(self, full: bool) -> None:
        """The far socket's write buffer crossed its high (or back under its low) water mark."""
        if full:
            self._pause_reading(_READ_PAUSED_DST_FULL)
        else:
            self._resume_reading(_READ_PAUSED_DST_FULL)

    def attach(self, src: asyncio.Transport | None, dst: asyncio.Transport | None) -> None:
        if src is not None:
            self.src = src
            if self._read_paused:
                src.pause_reading()
        if dst is not None:
            self.dst = dst
            self._schedule()

    def _pause_reading(self, reason: int) -> None:
        if not self._read_paused and self.src is not None and not self.src.is_closing():
            self.src.pause_reading()
        self._read_paused |= reason

    def _resume_reading(self, reason: int) -> None:
        was = self._read_paused
        self._read_paused &= ~reason
        if was and not self._read_paused and self.src is not None and not self.src.is_closing():
            self.src.resume_reading()

    def _drop_queue(self) -> None:
        self._queue.clear()
        self.queued_bytes = 0

    def stop(self) -> None:
        """The far side is gone: nothing more can be delivered."""
        self.done = True
        self._drop_queue()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Connection:
    """One accepted client connection and its upstream counterpart, as two pipes."""

    def __init__(self, proxy: FaultProxy, link: Link, client: asyncio.Transport) -> None:
        self.proxy = proxy
        self.link = link
        self.loop = proxy.loop
        self.client = client
        self.upstream: asyncio.Transport | None = None
        self.closed = False
        self.up = Pipe(self, "upstream")
        self.down = Pipe(self, "downstream")
        self.up.attach(src=client, dst=None)
        self.down.attach(src=None, dst=client)
        self._connecting = self.loop.create_task(self._connect_upstream())

    async def _connect_upstream(self) -> None:
        spec = self.link.spec
        if not self.link.handshake_open.is_set():
            try:
                await asyncio.wait_for(self.link.handshake_open.wait(), SYN_GIVE_UP_S)
            except TimeoutError:
                LOG.debug("link %s: handshake never crossed the blackhole", spec.name)
                self.reset()
                return
        try:
            transport, _ = await self.loop.create_connection(
                lambda: _UpstreamSide(self), spec.upstream_host, spec.upstream_port
            )
        except OSError as exc:
            LOG.debug("link %s: upstream connect failed: %s", spec.name, exc)
            self.reset()  # the client sees the refusal as a reset
            return
        if self.closed:
            _abort_with_rst(transport)
            return
        _set_nodelay(transport)
        self.upstream = transport  # type: ignore[assignment]
        self.down.attach(src=self.upstream, dst=None)
        self.up.attach(src=None, dst=self.upstream)

    def pipe_finished(self) -> None:
        """Both halves closed cleanly: close both sockets after their buffers drain."""
        if self.up.done and self.down.done:
            self.close()

    def side_lost(self, side: str, exc: Exception | None) -> None:
        """A socket went away. An error is passed on as a reset; a clean close as EOF."""
        if self.closed:
            return
        if exc is not None:
            self.reset()
            return
        inbound, outbound = (self.up, self.down) if side == "client" else (self.down, self.up)
        outbound.stop()
        inbound.feed_eof()
        self.pipe_finished()

    def close(self) -> None:
        if self._finish():
            for transport in (self.client, self.upstream):
                if transport is not None:
                    transport.close()

    def reset(self) -> None:
        """Abort both sockets with RST, as a reset partition or an exhausted TCP would."""
        if self._finish():
            _abort_with_rst(self.client)
            _abort_with_rst(self.upstream)

    def _finish(self) -> bool:
        if self.closed:
            return False
        self.closed = True
        self.up.stop()
        self.down.stop()
        self._connecting.cancel()
        self.link.connections.discard(self)
        return True


class _ClientSide(asyncio.Protocol):
    """Accepted socket of a link; creates the `Connection` (or resets it during a partition)."""

    def __init__(self, proxy: FaultProxy, link: Link) -> None:
        self.proxy = proxy
        self.link = link
        self.conn: Connection | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.link.connections_total += 1
        if self.link.resetting:
            _abort_with_rst(transport)
            return
        _set_nodelay(transport)
        self.conn = Connection(self.proxy, self.link, transport)  # type: ignore[arg-type]
        self.link.connections.add(self.conn)

    def data_received(self, data: bytes) -> None:
        if self.conn is not None:
            self.conn.up.feed(data)

    def eof_received(self) -> bool:
        if self.conn is not None:
            self.conn.up.feed_eof()
        return True  # keep the write half open: half-close is forwarded, not assumed

    def pause_writing(self) -> None:
        if self.conn is not None:
            self.conn.down.dst_buffer_full(True)

    def resume_writing(self) -> None:
        if self.conn is not None:
            self.conn.down.dst_buffer_full(False)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.conn.side_lost("client", exc)


class _UpstreamSide(asyncio.Protocol):
    """Socket to the link's target."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def data_received(self, data: bytes) -> None:
        self.conn.down.feed(data)

    def eof_received(self) -> bool:
        self.conn.down.feed_eof()
        return True

    def pause_writing(self) -> None:
        self.conn.up.dst_buffer_full(True)

    def resume_writing(self) -> None:
        self.conn.up.dst_buffer_full(False)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn.upstream is not None:
            self.conn.side_lost("upstream", exc)


class FaultProxy:
    """Every link's listener plus the fault table; the control API calls its methods."""

    def __init__(
        self,
        specs: list[LinkSpec],
        *,
        host: str = "127.0.0.1",
        rto_s: float = DEFAULT_RTO_S,
        seed: int | None = None,
    ) -> None:
        self.host = host
        self.rto_s = rto_s
        self.rng = random.Random(seed)
        self.links: dict[str, Link] = {spec.name: Link(spec) for spec in specs}
        self.faults: dict[str, LinkFault] = {}
        self.loop = asyncio.get_running_loop()
        self._links_changing = asyncio.Lock()  # one add or remove at a time: binds are awaited

    async def start(self) -> None:
        for link in self.links.values():
            link.server = await self._listen(link)

    async def _listen(self, link: Link) -> asyncio.Server:
        return await self.loop.create_server(
            lambda: _ClientSide(self, link),
            self.host,
            link.spec.listen_port,
            reuse_address=True,
        )

    async def add_link(self, spec: LinkSpec) -> tuple[Link, bool]:
        """Start listening for a link added at run time; answers the link and whether it is new.

        The same spec again changes nothing. Another spec under the same name and listen port
        replaces the link's ends (new connections use them, open ones keep theirs); another listen
        port, or a port another link or process holds, raises `LinkConflict`.
        """
        async with self._links_changing:
            existing = self.links.get(spec.name)
            if existing is not None:
                if existing.spec.listen_port != spec.listen_port:
                    raise LinkConflict(
                        f"link {spec.name!r} exists with listen port "
                        f"{existing.spec.listen_port}, not {spec.listen_port}"
                    )
                if existing.spec != spec:
                    LOG.info("link %s now %s", spec.name, json.dumps(asdict(spec)))
                    existing.spec = spec
                return existing, False
            for other in self.links.values():
                if other.spec.listen_port == spec.listen_port:
                    raise LinkConflict(
                        f"listen port {spec.listen_port} belongs to link {other.spec.name!r}"
                    )
            link = Link(spec)
            try:
                link.server = await self._listen(link)
            except OSError as exc:
                raise LinkConflict(
                    f"cannot listen on {self.host}:{spec.listen_port}: {exc.strerror or exc}"
                ) from exc
            self.links[spec.name] = link
            LOG.info("added link %s", json.dumps(asdict(spec)))
            return link, True

    async def remove_link(self, name: str) -> tuple[Link, int]:
        """Stop a link's listener, reset its open connections and take it out of every fault.

        Raises KeyError for an unknown link. Answers the link and how many connections it cut:
        they are reset rather than closed, as the process behind the link is gone with it.
        """
        async with self._links_changing:
            link = self.links.pop(name)
            for fault_id, fault in list(self.faults.items()):
                if name in fault.links:
                    # A fault left with no link stays listed (inert) until its owner removes it.
                    remaining = tuple(n for n in fault.links if n != name)
                    self.faults[fault_id] = dataclasses.replace(fault, links=remaining)
            if link.server is not None:
                link.server.close()
            cut = list(link.connections)
            for conn in cut:
                conn.reset()
            if link.server is not None:
                await link.server.wait_closed()
            LOG.info("removed link %s (%d connections reset)", name, len(cut))
            return link, len(cut)

    async def stop(self) -> None:
        for link in self.links.values():
            if link.server is not None:
                link.server.close()
            for conn in list(link.connections):
                conn.close()
        for link in self.links.values():
            if link.server is not None:
                await link.server.wait_closed()

    def install(self, fault: LinkFault) -> LinkFault:
        """Add or replace a fault; connections already open obey it from their next chunk."""
        unknown = [name for name in fault.links if name not in self.links]
        if unknown:
            raise ValueError(f"unknown link(s) {unknown}; known: {sorted(self.links)}")
        previous = self.faults.get(fault.id)
        self.faults[fault.id] = fault
        touched = set(fault.links) | set(previous.links if previous else ())
        self._apply(touched)
        LOG.info("installed fault %s", json.dumps(fault.to_json()))
        return fault

    def remove(self, fault_id: str) -> LinkFault:
        """Remove one fault (KeyError when unknown) and release what it held."""
        fault = self.faults.pop(fault_id)
        self._apply(set(fault.links))
        LOG.info("removed fault %s", fault_id)
        return fault

    def clear(self) -> list[str]:
        removed = list(self.faults)
        touched = {name for f in self.faults.values() for name in f.links}
        self.faults.clear()
        self._apply(touched)
        LOG.info("removed all faults %s", removed)
        return removed

    def _apply(self, link_names: set[str]) -> None:
        for name in link_names:
            link = self.links[name]
            link.fault_ids = tuple(f.id for f in self.faults.values() if name in f.links)
            for flow in FLOWS:
                link.policies[flow] = combine(
                    self.faults.values(), name, flow, self.rng, rto_s=self.rto_s
                )
            link.policies_changed()
            resetting = link.resetting
            for conn in list(link.connections):
                if resetting:
                    conn.reset()
                else:
                    conn.up.kick()
                    conn.down.kick()


class _ProxyCollector(Collector):
    """Reads the proxy's plain counters at scrape time, keeping metrics off the chunk path."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy

    def collect(self) -> Iterator[Any]:
        by_bytes = CounterMetricFamily(
            "faultproxy_bytes",
            "Bytes forwarded; direction upstream = to the link's target, downstream = back.",
            labels=["link", "direction"],
        )
        conns = CounterMetricFamily(
            "faultproxy_connections", "Connections accepted on the link.", labels=["link"]
        )
        open_conns = GaugeMetricFamily(
            "faultproxy_open_connections", "Connections open on the link.", labels=["link"]
        )
        active = GaugeMetricFamily(
            "faultproxy_active_faults", "Faults installed on the link.", labels=["link"]
        )
        for name, link in self.proxy.links.items():
            for flow in FLOWS:
                by_bytes.add_metric([name, flow], link.bytes[flow])
            conns.add_metric([name], link.connections_total)
            open_conns.add_metric([name], len(link.connections))
            active.add_metric([name], len(link.fault_ids))
        yield from (by_bytes, conns, open_conns, active)


def build_app(proxy: FaultProxy) -> web.Application:
    """The control API of docs/internals.md, "Fault proxy"."""
    registry = CollectorRegistry()
    registry.register(_ProxyCollector(proxy))
    routes = web.RouteTableDef()

    @routes.get("/links")
    async def get_links(_: web.Request) -> web.Response:
        return web.json_response([link.describe() for link in proxy.links.values()])

    @routes.put("/links/{name}")
    async def put_link(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _bad_request("the body must be a JSON object")
        try:
            spec = LinkSpec.from_json(body, name=request.match_info["name"])
            link, _ = await proxy.add_link(spec)
        except ValueError as exc:
            return _bad_request(str(exc))
        except LinkConflict as exc:
            return web.json_response({"error": str(exc)}, status=409)
        return web.json_response(link.describe())

    @routes.delete("/links/{name}")
    async def delete_link(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            link, cut = await proxy.remove_link(name)
        except KeyError:
            return web.json_response({"error": f"no link {name!r}"}, status=404)
        return web.json_response({**link.describe(), "closed_connections": cut})

    @routes.get("/faults")
    async def get_faults(_: web.Request) -> web.Response:
        return web.json_response([f.to_json() for f in proxy.faults.values()])

    @routes.put("/faults/{fault_id}")
    async def put_fault(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _bad_request("the body must be a JSON object")
        try:
            fault = LinkFault.from_json(body, fault_id=request.match_info["fault_id"])
            proxy.install(fault)
        except ValueError as exc:
            return _bad_request(str(exc))
        return web.json_response(fault.to_json())

    @routes.delete("/faults/{fault_id}")
    async def delete_fault(request: web.Request) -> web.Response:
        fault_id = request.match_info["fault_id"]
        try:
            fault = proxy.remove(fault_id)
        except KeyError:
            return web.json_response({"error": f"no fault {fault_id!r}"}, status=404)
        return web.json_response(fault.to_json())

    @routes.delete("/faults")
    async def delete_faults(_: web.Request) -> web.Response:
        return web.json_response({"removed": proxy.clear()})

    @routes.get("/metrics")
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.add_routes(routes)
    return app


def _bad_request(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


async def serve(
    links_file: Path,
    *,
    host: str,
    control_port: int,
    rto_s: float = DEFAULT_RTO_S,
    seed: int | None = None,
) -> None:
    """Run until SIGTERM or SIGINT, then close every listener and connection."""
    loop = asyncio.get_running_loop()
    proxy = FaultProxy(load_links(links_file), host=host, rto_s=rto_s, seed=seed)
    await proxy.start()
    runner = web.AppRunner(build_app(proxy), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, control_port, reuse_address=True).start()
    LOG.info("fault proxy up: %d links, control on %s:%d", len(proxy.links), host, control_port)
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        await stopping.wait()
    finally:
        await runner.cleanup()
        await proxy.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--control-port", type=int, required=True)
    parser.add_argument("--links", type=Path, required=True, help="JSON list of links")
    parser.add_argument(
        "--rto-ms", type=float, default=DEFAULT_RTO_S * 1000, help="what one lost segment costs"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed the fault randomness")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    asyncio.run(
        serve(
            args.links,
            host=args.host,
            control_port=args.control_port,
            rto_s=args.rto_ms / 1000.0,
            seed=args.seed,
        )
    )


if __name__ == "__main__":
    main()
