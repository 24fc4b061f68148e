"""Peer RPC over HTTP: one persistent aiohttp session per peer, short timeouts, no retries.

Raft retries on its own schedule (the next heartbeat), so a failed call is simply None: a
refused connection, a reset, a timeout (a blackholed link), or a garbled answer all look the
same to the node, as a lost message should. In the embedded cluster each peer URL is a fault
proxy's port, so every fault the proxy injects lands between two replicas.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

import aiohttp

from resilience.raft.config import RaftConfig
from resilience.raft.messages import (
    Request,
    Response,
    SnapshotRequest,
    decode_response,
    encode,
)

__all__ = ["PEER_PATH", "HttpTransport"]

log = logging.getLogger("resilience.raft.transport")

PEER_PATH = "/raft"  # every RPC is a POST here; the body's "type" names it


class HttpTransport:
    """Sends Raft requests to peers by id; implements `resilience.raft.node.Transport`."""

    def __init__(self, peer_urls: Mapping[int, str], config: RaftConfig) -> None:
        self._urls = {peer: url.rstrip("/") + PEER_PATH for peer, url in peer_urls.items()}
        self._config = config
        self._sessions: dict[int, aiohttp.ClientSession] = {}

    def _session(self, peer: int) -> aiohttp.ClientSession:
        session = self._sessions.get(peer)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(limit=8, enable_cleanup_closed=True)
            session = aiohttp.ClientSession(connector=connector, raise_for_status=False)
            self._sessions[peer] = session
        return session

    async def send(self, peer: int, message: Request) -> Response | None:
        url = self._urls.get(peer)
        if url is None:
            raise KeyError(f"unknown peer {peer}")
        timeout_s = (
            self._config.snapshot_rpc_timeout_s
            if isinstance(message, SnapshotRequest)
            else self._config.rpc_timeout_s
        )
        body = json.dumps(encode(message), separators=(",", ":"))
        try:
            async with self._session(peer).post(
                url,
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as response:
                if response.status != 200:
                    log.debug("peer %d answered %d", peer, response.status)
                    return None
                return decode_response(json.loads(await response.read()))
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError, TypeError) as exc:
            log.debug("peer %d unreachable: %r", peer, exc)
            return None

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()
