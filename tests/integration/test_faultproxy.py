"""The fault proxy as a real process, measured from outside with plain sockets.

Each test starts a small line server (echo, or `BLOB n` for n bytes) on 127.0.0.1, the proxy in
front of it as a subprocess, and checks that faults installed through the control API change
what a client really sees on the wire.
"""

from __future__ import annotations

import json
import socket
import socketserver
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

REPO = Path(__file__).resolve().parents[2]
LINK = "client->echo"
DEAD_LINK = "client->nobody"  # its upstream port has no listener


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _LineHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.server.accepted += 1  # type: ignore[attr-defined]
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for line in self.rfile:
            if line.startswith(b"BLOB "):
                self.wfile.write(b"x" * int(line.split()[1]))
            else:
                self.wfile.write(line)


class LineServer(socketserver.ThreadingTCPServer):
    """Echoes each line; answers `BLOB n` with n bytes. Counts accepted connections."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _LineHandler)
        self.accepted = 0
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)


@dataclass
class Proxy:
    process: subprocess.Popen[bytes]
    control: httpx.Client
    listen_port: int
    dead_listen_port: int
    upstream: LineServer

    def put_fault(self, fault_id: str, **body: object) -> httpx.Response:
        return self.control.put(f"/faults/{fault_id}", json={"links": [LINK], **body})

    def connect(self, timeout: float = 2.0, port: int | None = None) -> socket.socket:
        address = ("127.0.0.1", port or self.listen_port)
        sock = socket.create_connection(address, timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


@pytest.fixture
def proxy(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Proxy]:
    """The proxy in front of a fresh line server; indirect parameters are extra CLI flags."""
    extra_args: list[str] = list(getattr(request, "param", []))
    upstream = LineServer()
    listen_port, dead_listen_port, control_port = free_port(), free_port(), free_port()
    links = [
        {
            "name": LINK,
            "source": "client",
            "target": "echo",
            "listen_port": listen_port,
            "upstream_host": "127.0.0.1",
            "upstream_port": upstream.port,
        },
        {
            "name": DEAD_LINK,
            "source": "client",
            "target": "nobody",
            "listen_port": dead_listen_port,
            "upstream_host": "127.0.0.1",
            "upstream_port": free_port(),
        },
    ]
    links_file = tmp_path / "links.json"
    links_file.write_text(json.dumps(links))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "resilience.faultproxy",
            "--host",
            "127.0.0.1",
            "--control-port",
            str(control_port),
            "--links",
            str(links_file),
            "--seed",
            "7",
            *extra_args,
        ],
        cwd=REPO,
    )
    control = httpx.Client(base_url=f"http://127.0.0.1:{control_port}", timeout=5.0)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert process.poll() is None, "the fault proxy exited during start-up"
            try:
                if control.get("/links").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the fault proxy did not become ready"
            time.sleep(0.05)
        yield Proxy(process, control, listen_port, dead_listen_port, upstream)
    finally:
        control.close()
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        upstream.stop()


def round_trip(sock: socket.socket, payload: bytes = b"ping\n") -> float:
    """Seconds from sending a line to reading it back whole."""
    start = time.perf_counter()
    sock.sendall(payload)
    received = b""
    while len(received) < len(payload):
        chunk = sock.recv(65536)
        assert chunk, "connection closed during a round trip"
        received += chunk
    elapsed = time.perf_counter() - start
    assert received == payload
    return elapsed


def median_round_trip(sock: socket.socket, n: int = 5) -> float:
    return statistics.median(round_trip(sock) for _ in range(n))


@pytest.mark.parametrize(
    ("direction", "delay_ms"),
    [("to", 200), ("from", 200), ("both", 100)],
)
def test_delay_adds_to_the_round_trip_and_removing_it_restores_it(
    proxy: Proxy, direction: str, delay_ms: int
) -> None:
    with proxy.connect() as sock:
        round_trip(sock)  # the first trip also opens the upstream connection
        baseline = median_round_trip(sock)
        assert baseline < 0.05

        reply = proxy.put_fault("slow", direction=direction, delay_ms=delay_ms)
        assert reply.status_code == 200, reply.text
        assert reply.json()["direction"] == direction
        delayed = median_round_trip(sock)  # the open connection obeys the new fault
        assert 0.180 <= delayed < 0.600

        assert proxy.control.delete("/faults/slow").status_code == 200
        round_trip(sock)  # let anything still queued drain
        assert median_round_trip(sock) < 0.05


def test_half_close_is_forwarded_after_the_delayed_bytes(proxy: Proxy) -> None:
    assert proxy.put_fault("slow", direction="from", delay_ms=150).status_code == 200
    with proxy.connect() as sock:
        start = time.perf_counter()
        sock.sendall(b"BLOB 5\n")
        sock.shutdown(socket.SHUT_WR)  # the server answers, sees EOF and closes
        received = b""
        while chunk := sock.recv(100):
            received += chunk
        elapsed = time.perf_counter() - start
    assert received == b"xxxxx"  # the EOF did not overtake the delayed request
    assert 0.140 <= elapsed < 0.6


def test_a_refused_upstream_reaches_the_client_as_a_reset(proxy: Proxy) -> None:
    with pytest.raises((ConnectionResetError, BrokenPipeError)):
        with proxy.connect(port=proxy.dead_listen_port) as sock:
            round_trip(sock)


def test_jitter_spreads_the_round_trips(proxy: Proxy) -> None:
    reply = proxy.put_fault("jitter", direction="to", delay_ms=100, jitter_ms=80, correlation=0)
    assert reply.status_code == 200, reply.text
    with proxy.connect() as sock:
        samples = [round_trip(sock) for _ in range(30)]
    assert min(samples) >= 0.015  # 100 - 80 ms, never below
    assert max(samples) < 0.400
    assert max(samples) - min(samples) > 0.060
    assert statistics.stdev(samples) > 0.015  # without jitter it is about 1 ms


def test_rate_limit_paces_a_transfer(proxy: Proxy) -> None:
    size = 100_000

    def fetch(sock: socket.socket) -> float:
        start = time.perf_counter()
        sock.sendall(f"BLOB {size}\n".encode())
        received = 0
        while received < size:
            chunk = sock.recv(65536)
            assert chunk
            received += len(chunk)
        return time.perf_counter() - start

    with proxy.connect(timeout=10) as sock:
        assert fetch(sock) < 0.5
        reply = proxy.put_fault("narrow", direction="to", rate_bps=50_000)
        assert reply.status_code == 200, reply.text
        elapsed = fetch(sock)
    assert 1.6 <= elapsed <= 3.0  # 100 kB at 50 kB/s


@pytest.mark.parametrize("proxy", [["--rto-ms", "100"]], indirect=True)
def test_loss_costs_retransmission_timeouts(proxy: Proxy) -> None:
    reply = proxy.put_fault("lossy", direction="to", loss=30)
    assert reply.status_code == 200, reply.text
    with proxy.connect(timeout=10) as sock:
        samples = [round_trip(sock) for _ in range(40)]
    late = [s for s in samples if s >= 0.095]  # one RTO (100 ms here) or more
    on_time = [s for s in samples if s < 0.05]
    assert len(late) >= 3 and len(on_time) >= 10
    assert len(late) + len(on_time) == len(samples)  # nothing in between: whole RTOs only


def test_blackhole_stalls_traffic_and_lifting_it_lets_connections_through(proxy: Proxy) -> None:
    with proxy.connect(timeout=1.0) as before:
        round_trip(before)
        accepted = proxy.upstream.accepted
        reply = proxy.put_fault("cut", direction="both", partition="blackhole")
        assert reply.status_code == 200, reply.text

        before.sendall(b"held\n")
        with pytest.raises(TimeoutError):
            before.recv(100)

        during = proxy.connect(timeout=1.0)  # accepted, but nothing goes through
        with during:
            during.sendall(b"during\n")
            with pytest.raises(TimeoutError):
                during.recv(100)
            assert proxy.upstream.accepted == accepted  # the target never saw the handshake
            links = proxy.control.get("/links").json()
            assert links[0]["faults"] == ["cut"]
            assert links[0]["queued_bytes"]["upstream"] == len(b"held\n") + len(b"during\n")

            assert proxy.control.delete("/faults/cut").status_code == 200
            with proxy.connect() as after:
                assert round_trip(after) < 0.5
            # TCP would have retransmitted: the held bytes arrive, in order, not corrupted
            during.settimeout(2.0)
            assert during.recv(100) == b"during\n"
        before.settimeout(2.0)
        assert before.recv(100) == b"held\n"
        assert round_trip(before) < 0.5


def test_reset_aborts_open_connections_and_refuses_new_ones(proxy: Proxy) -> None:
    with proxy.connect() as before:
        round_trip(before)
        start = time.perf_counter()
        reply = proxy.put_fault("rst", direction="to", partition="reset")
        assert reply.status_code == 200, reply.text
        with pytest.raises(ConnectionResetError):
            before.recv(100)
        assert time.perf_counter() - start < 1.0

    start = time.perf_counter()
    with pytest.raises((ConnectionResetError, BrokenPipeError)):
        with proxy.connect() as during:
            time.sleep(0.05)
            round_trip(during)
    assert time.perf_counter() - start < 1.0

    assert proxy.control.delete("/faults/rst").status_code == 200
    with proxy.connect() as after:
        assert round_trip(after) < 0.5


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"links": ["nowhere"], "delay_ms": 10}, "unknown link"),
        ({"links": [LINK], "delay_ms": -5}, "must not be negative"),
        ({"links": [LINK], "direction": "up"}, "'direction' must be one of"),
        ({"links": [LINK], "latency": 5}, "unknown field"),
        ({"links": [LINK], "loss": 120}, "at most 100"),
        ({"links": [LINK], "partition": "cut"}, "'partition'"),
    ],
)
def test_bad_control_input_is_a_400(proxy: Proxy, body: dict[str, object], message: str) -> None:
    reply = proxy.control.put("/faults/bad", json=body)
    assert reply.status_code == 400
    assert message in reply.json()["error"]
    assert proxy.control.get("/faults").json() == []


def test_control_api_lists_faults_links_and_metrics(proxy: Proxy) -> None:
    not_json = proxy.control.put("/faults/x", content=b"{not json")
    assert not_json.status_code == 400
    assert proxy.control.delete("/faults/missing").status_code == 404

    stored = proxy.put_fault("a", direction="from", delay_ms=1).json()
    proxy.put_fault("b", direction="to", jitter_ms=1)
    assert stored["links"] == [LINK] and stored["delay_ms"] == 1.0
    assert [f["id"] for f in proxy.control.get("/faults").json()] == ["a", "b"]

    with proxy.connect() as sock:
        round_trip(sock, b"0123456789\n")
        links = proxy.control.get("/links").json()
        assert [entry["name"] for entry in links] == [LINK, DEAD_LINK]
        link = links[0]
        assert link["name"] == LINK and link["target"] == "echo"
        assert link["faults"] == ["a", "b"]
        assert link["open_connections"] == 1
        assert link["bytes"] == {"upstream": 11, "downstream": 11}

    deadline = time.monotonic() + 2
    while proxy.control.get("/links").json()[0]["open_connections"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proxy.control.get("/links").json()[0]["open_connections"] == 0

    metrics = proxy.control.get("/metrics").text
    assert f'faultproxy_bytes_total{{direction="upstream",link="{LINK}"}} 11.0' in metrics
    assert f'faultproxy_connections_total{{link="{LINK}"}} 1.0' in metrics
    assert f'faultproxy_active_faults{{link="{LINK}"}} 2.0' in metrics

    assert proxy.control.delete("/faults").json() == {"removed": ["a", "b"]}
    assert proxy.control.get("/faults").json() == []
    assert proxy.control.get("/links").json()[0]["faults"] == []


# ---- links added and removed at run time


def _link_body(listen_port: int, upstream_port: int, **extra: object) -> dict[str, object]:
    return {
        "source": "gateway",
        "target": "worker-n4-g0",
        "listen_port": listen_port,
        "upstream_host": "127.0.0.1",
        "upstream_port": upstream_port,
        **extra,
    }


NEW_LINK = "gateway->worker-n4-g0"  # "->" travels percent-encoded in the path


def test_a_link_added_at_run_time_carries_traffic_and_is_idempotent(proxy: Proxy) -> None:
    port = free_port()
    body = _link_body(port, proxy.upstream.port)
    reply = proxy.control.put(f"/links/{NEW_LINK}", json=body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["name"] == NEW_LINK and reply.json()["listen_port"] == port
    assert [link["name"] for link in proxy.control.get("/links").json()] == [
        LINK,
        DEAD_LINK,
        NEW_LINK,
    ]

    with proxy.connect(port=port) as sock:
        assert round_trip(sock, b"0123456789\n") < 0.5
        again = proxy.control.put(f"/links/{NEW_LINK}", json={**body, "name": NEW_LINK})
        assert again.status_code == 200  # the same entry again: nothing changes
        assert again.json()["open_connections"] == 1
        assert round_trip(sock) < 0.5  # the open connection was left alone
    link = next(x for x in proxy.control.get("/links").json() if x["name"] == NEW_LINK)
    assert link["bytes"]["upstream"] == len(b"0123456789\n") + len(b"ping\n")

    # faults reach the new link like any other
    slow = proxy.control.put("/faults/slow", json={"links": [NEW_LINK], "delay_ms": 150})
    assert slow.status_code == 200
    with proxy.connect(port=port) as sock:
        round_trip(sock)
        assert 0.14 <= median_round_trip(sock, 3) < 0.6


def test_link_conflicts_are_409(proxy: Proxy) -> None:
    port = free_port()
    body = _link_body(port, proxy.upstream.port)
    assert proxy.control.put(f"/links/{NEW_LINK}", json=body).status_code == 200

    moved = proxy.control.put(f"/links/{NEW_LINK}", json=_link_body(free_port(), 1))
    assert moved.status_code == 409
    assert "exists with listen port" in moved.json()["error"]

    taken = proxy.control.put("/links/other", json=_link_body(proxy.listen_port, 1))
    assert taken.status_code == 409
    assert f"belongs to link '{LINK}'" in taken.json()["error"]

    with socket.socket() as squatter:  # a port some other process listens on
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        busy = proxy.control.put("/links/other", json=_link_body(squatter.getsockname()[1], 1))
    assert busy.status_code == 409
    assert "cannot listen on" in busy.json()["error"]
    assert "other" not in {x["name"] for x in proxy.control.get("/links").json()}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{nope", "the body must be a JSON object"),
        (b"[]", "a link must be a JSON object"),
        (json.dumps({"name": "elsewhere"}).encode(), "differs from name in path"),
        (json.dumps({"source": "gateway"}).encode(), "'target' must be a non-empty string"),
        (json.dumps(_link_body("80", 1)).encode(), "'listen_port' must be a port number"),
        (json.dumps(_link_body(1, 1, zone="b")).encode(), "unknown link field(s) ['zone']"),
    ],
)
def test_bad_link_bodies_are_a_one_line_400(proxy: Proxy, body: bytes, message: str) -> None:
    reply = proxy.control.put(
        "/links/new", content=body, headers={"content-type": "application/json"}
    )
    assert reply.status_code == 400
    assert message in reply.json()["error"]
    assert "\n" not in reply.json()["error"]
    assert len(proxy.control.get("/links").json()) == 2


def test_deleting_a_link_closes_its_connections_frees_its_port_and_leaves_faults(
    proxy: Proxy,
) -> None:
    port = free_port()
    added = proxy.control.put(f"/links/{NEW_LINK}", json=_link_body(port, proxy.upstream.port))
    assert added.status_code == 200
    fault = {"links": [LINK, NEW_LINK], "delay_ms": 1}
    assert proxy.control.put("/faults/both", json=fault).status_code == 200
    with proxy.connect(port=port) as sock:
        round_trip(sock)
        start = time.perf_counter()
        reply = proxy.control.delete(f"/links/{NEW_LINK}")
        assert reply.status_code == 200
        assert reply.json()["closed_connections"] == 1
        with pytest.raises(ConnectionResetError):  # reset at once, not after a timeout
            sock.recv(100)
        assert time.perf_counter() - start < 1.0

    assert [x["name"] for x in proxy.control.get("/links").json()] == [LINK, DEAD_LINK]
    assert proxy.control.get("/faults").json()[0]["links"] == [LINK]
    assert proxy.control.get("/links").json()[0]["faults"] == ["both"]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    with socket.socket() as rebind:  # the port is free for anyone again
        rebind.bind(("127.0.0.1", port))
    with proxy.connect() as sock:  # the other link of the fault still works
        assert round_trip(sock) < 0.5

    assert proxy.control.delete(f"/links/{NEW_LINK}").status_code == 404
    unknown = proxy.control.put("/faults/late", json={"links": [NEW_LINK]})
    assert unknown.status_code == 400 and "unknown link" in unknown.json()["error"]
    metrics = proxy.control.get("/metrics").text
    assert NEW_LINK not in metrics and LINK in metrics

    # the same name and port can come back (a node re-added)
    back = proxy.control.put(f"/links/{NEW_LINK}", json=_link_body(port, proxy.upstream.port))
    assert back.status_code == 200 and back.json()["faults"] == []
    with proxy.connect(port=port) as sock:
        assert round_trip(sock) < 0.5


def test_putting_new_ends_under_the_same_name_and_port_redirects_new_connections(
    proxy: Proxy,
) -> None:
    port = free_port()
    nowhere = proxy.control.put(f"/links/{NEW_LINK}", json=_link_body(port, free_port()))
    assert nowhere.status_code == 200
    with pytest.raises((ConnectionResetError, BrokenPipeError)):
        with proxy.connect(port=port) as sock:
            round_trip(sock)  # nobody listens upstream: reset

    moved = proxy.control.put(f"/links/{NEW_LINK}", json=_link_body(port, proxy.upstream.port))
    assert moved.status_code == 200 and moved.json()["upstream_port"] == proxy.upstream.port
    with proxy.connect(port=port) as sock:
        assert round_trip(sock) < 0.5
