"""A replica's two HTTP faces: the client KV API and the peer RPC endpoint, plus its runtime.

Only the leader serves clients: reads go through ReadIndex, writes through the log. Any other
replica answers 307 to the leader's client URL (or 503 "no leader" after waiting briefly for
one to emerge), so a client is never answered silently from a follower's possibly stale store.
The leader also runs the lease clock and proposes the revocation of expired leases.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from resilience.raft.config import RaftConfig
from resilience.raft.leases import LeaseTimer
from resilience.raft.messages import decode_request, encode
from resilience.raft.metrics import raft_registry
from resilience.raft.node import (
    NotLeader,
    ProposalDropped,
    ProposalTimeout,
    RaftNode,
    ReadTimeout,
)
from resilience.raft.statemachine import (
    KVStateMachine,
    cas_command,
    delete_command,
    lease_grant_command,
    lease_revoke_command,
    put_command,
)
from resilience.raft.transport import PEER_PATH, HttpTransport
from resilience.raft.unsafe import local_read  # UNSAFE mode, tests only

__all__ = ["BadRequest", "ReplicaServer", "serve"]

log = logging.getLogger("resilience.raft.server")

Handler = Callable[[], Awaitable[web.Response]]


class BadRequest(Exception):
    """The client sent something the API does not accept (400)."""


def _json(status: int, body: Mapping[str, Any], **headers: str) -> web.Response:
    return web.json_response(dict(body), status=status, headers=headers or None)


class ReplicaServer:
    """Binds a node and its store to aiohttp applications."""

    def __init__(self, node: RaftNode, store: KVStateMachine, config: RaftConfig) -> None:
        self.node = node
        self.store = store
        self.config = config
        self.leases = LeaseTimer()
        self._lease_term: int | None = None
        self._registry = raft_registry(node)
        self._tasks: set[asyncio.Task[Any]] = set()

    # Applications ---------------------------------------------------------------------------

    def client_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/status", self.status)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/leases", self.lease_grant)
        app.router.add_post("/leases/{id}/keepalive", self.lease_keepalive)
        app.router.add_delete("/leases/{id}", self.lease_revoke)
        app.router.add_post("/kv/{key:.+}/cas", self.kv_cas)
        app.router.add_get("/kv/{key:.+}", self.kv_get)
        app.router.add_put("/kv/{key:.+}", self.kv_put)
        app.router.add_delete("/kv/{key:.+}", self.kv_delete)
        return app

    def peer_app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024 * 1024)  # snapshots come whole
        app.router.add_post(PEER_PATH, self.peer_rpc)
        return app

    # Peer API -------------------------------------------------------------------------------

    async def peer_rpc(self, request: web.Request) -> web.Response:
        try:
            message = decode_request(json.loads(await request.read()))
        except (ValueError, KeyError, TypeError) as exc:
            return _json(400, {"error": f"bad raft message: {exc}"})
        response = await self.node.handle(message)
        return web.Response(
            body=json.dumps(encode(response), separators=(",", ":")),
            content_type="application/json",
        )

    # Client API -----------------------------------------------------------------------------

    async def status(self, request: web.Request) -> web.Response:
        return _json(200, self.node.status())

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self._registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def kv_get(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        if self.config.unsafe_local_reads:  # UNSAFE, tests only: see resilience/raft/unsafe.py
            return local_read(self.store, key)

        async def read() -> web.Response:
            await self.node.read_index()
            kv = self.store.get(key)
            if kv is None:
                return _json(404, {"error": "not found"})
            body = {"key": key, "value": kv.value, "mod_revision": kv.mod_revision}
            return _json(200, {**body, "lease": kv.lease})

        return await self._on_leader(request, read)

    async def kv_put(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]

        async def write() -> web.Response:
            body = await _body(request)
            command = put_command(key, _str(body, "value"), _lease_id(body))
            return self._result(await self._propose(command))

        return await self._on_leader(request, write)

    async def kv_delete(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]

        async def write() -> web.Response:
            return self._result(await self._propose(delete_command(key)))

        return await self._on_leader(request, write)

    async def kv_cas(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]

        async def write() -> web.Response:
            body = await _body(request)
            if "expect" not in body:
                raise BadRequest('"expect" is required (null: the key must be absent)')
            expect = body["expect"]
            if expect is not None and not isinstance(expect, str):
                raise BadRequest('"expect" must be a string or null')
            command = cas_command(key, expect, _str(body, "value"), _lease_id(body))
            return self._result(await self._propose(command))

        return await self._on_leader(request, write)

    async def lease_grant(self, request: web.Request) -> web.Response:
        async def write() -> web.Response:
            body = await _body(request)
            ttl = body.get("ttl")
            if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not ttl > 0:
                raise BadRequest('"ttl" must be a positive number of seconds')
            result = await self.node.propose(lease_grant_command(float(ttl)))
            self._sync_lease_clock()
            if self.node.is_leader:
                self.leases.keepalive(result["id"], result["ttl"], self.node.clock())
            return _json(200, result)

        return await self._on_leader(request, write)

    async def lease_keepalive(self, request: web.Request) -> web.Response:
        async def renew() -> web.Response:
            lease_id = _path_lease_id(request)
            await self.node.read_index()  # a deposed leader must not pretend to renew
            ttl = self.store.lease_ttls().get(lease_id)
            if ttl is None:
                return _json(404, {"error": "lease not found"})
            self._sync_lease_clock()
            self.leases.keepalive(lease_id, ttl, self.node.clock())
            return _json(200, {"id": lease_id, "ttl": ttl})

        return await self._on_leader(request, renew)

    async def lease_revoke(self, request: web.Request) -> web.Response:
        async def write() -> web.Response:
            lease_id = _path_lease_id(request)
            result = await self.node.propose(lease_revoke_command(lease_id))
            if not result["revoked"]:
                return _json(404, {"error": "lease not found"})
            return _json(200, {"revoked": True, "revision": result["revision"]})

        return await self._on_leader(request, write)

    # Plumbing -------------------------------------------------------------------------------

    async def _on_leader(self, request: web.Request, action: Handler) -> web.Response:
        """Run `action` as leader, or send the client to the leader; map failures to statuses."""
        waited = False
        while True:
            try:
                return await action()
            except NotLeader as exc:
                if exc.leader_url:
                    location = exc.leader_url.rstrip("/") + request.path_qs
                    body = {"error": "not leader", "leader": exc.leader_id}
                    return _json(307, {**body, "leader_url": exc.leader_url}, Location=location)
                if waited or not await self.node.wait_for_leader(self.config.leader_wait_s):
                    return _json(503, {"error": "no leader"})
                waited = True  # a leader emerged meanwhile: this replica or another; try again
            except BadRequest as exc:
                return _json(400, {"error": str(exc)})
            except ProposalTimeout:
                return _json(503, {"error": "timeout", "outcome": "unknown"})
            except ProposalDropped:
                return _json(503, {"error": "not committed", "outcome": "failed"})
            except ReadTimeout:
                return _json(503, {"error": "timeout"})

    async def _propose(self, command: dict[str, Any]) -> dict[str, Any]:
        """Propose and add the entry's term (the term is fixed when the entry is appended)."""
        term = self.node.term
        result = await self.node.propose(command)
        return result if "error" in result else {**result, "term": term}

    @staticmethod
    def _result(result: Mapping[str, Any]) -> web.Response:
        if "error" in result:
            return _json(400, result)
        return _json(200, result)

    def _sync_lease_clock(self) -> None:
        """A new leadership starts every lease afresh; a lost one forgets the deadlines."""
        term = self.node.term if self.node.is_leader else None
        if term != self._lease_term:
            self.leases.reset()
            self._lease_term = term

    async def keep_leases(self) -> None:
        """On the leader: propose the revocation of every lease whose TTL ran out."""
        while True:
            await asyncio.sleep(self.config.lease_check_interval_s)
            self._sync_lease_clock()
            if not self.node.leader_ready:
                continue
            expired = self.leases.expired(
                self.store.lease_ttls(), self.node.clock(), retry_after=self.config.write_deadline_s
            )
            for lease_id in expired:
                task = asyncio.create_task(self._expire(lease_id))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _expire(self, lease_id: int) -> None:
        try:
            await self.node.propose(lease_revoke_command(lease_id, reason="expired"))
            log.info("lease %d expired and revoked", lease_id)
        except (NotLeader, ProposalTimeout, ProposalDropped) as exc:
            log.info("lease %d: revocation not committed (%r); will retry", lease_id, exc)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.read() or b"{}")
    except ValueError as exc:
        raise BadRequest(f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


def _str(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise BadRequest(f'"{name}" must be a string')
    return value


def _lease_id(body: Mapping[str, Any]) -> int | None:
    lease = body.get("lease")
    if lease is not None and (isinstance(lease, bool) or not isinstance(lease, int)):
        raise BadRequest('"lease" must be a lease id (integer) or null')
    return lease


def _path_lease_id(request: web.Request) -> int:
    try:
        return int(request.match_info["id"])
    except ValueError:
        raise BadRequest("lease id must be an integer") from None


def _lock_data_dir(data_dir: Path) -> int:
    """Refuse to run two replicas on one data directory: they would corrupt each other."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SystemExit(f"{data_dir} is in use by another replica") from None
    return fd


async def serve(
    node_id: int,
    host: str,
    client_port: int,
    peer_port: int,
    peers: Mapping[int, str],
    data_dir: Path,
    config: RaftConfig,
) -> None:
    """Run one replica until SIGTERM or SIGINT. Ready once the client port answers."""
    lock_fd = _lock_data_dir(data_dir)
    transport = HttpTransport(peers, config)
    store = KVStateMachine()
    node = RaftNode(
        node_id,
        peers.keys(),
        data_dir,
        store,
        transport,
        config,
        client_url=f"http://{host}:{client_port}",
    )
    server = ReplicaServer(node, store, config)
    peer_runner = web.AppRunner(server.peer_app(), access_log=None)
    client_runner = web.AppRunner(server.client_app(), access_log=None)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    lease_task: asyncio.Task[None] | None = None
    try:
        await peer_runner.setup()
        await web.TCPSite(peer_runner, host, peer_port).start()
        node.start()
        lease_task = asyncio.create_task(server.keep_leases())
        await client_runner.setup()
        await web.TCPSite(client_runner, host, client_port).start()
        log.info("replica %d serving clients on %d, peers on %d", node_id, client_port, peer_port)
        await stopping.wait()
    finally:
        if lease_task is not None:
            lease_task.cancel()
        await client_runner.cleanup()
        await node.stop()
        await peer_runner.cleanup()
        await transport.close()
        os.close(lock_fd)
