"""Two ways to talk to a Raft store from outside: our store's client API and etcd's v3 gateway.

The probes judge any Raft store by the same few verbs (Jepsen's client: a handful of calls, each
ending in one of three outcomes), so the observer and the history recorder never know which store
they face:

- the call returns: it took effect (status `ok`);
- `OperationFailed`: it certainly did not take effect (refused connection before anything was
  sent, a 4xx, "no leader" from a replica that proposed nothing): status `fail`;
- `OutcomeUnknown`: it may or may not have taken effect (timeout, connection lost after the
  request went out, 5xx): status `unknown`.

Every call has its own total deadline (`asyncio.timeout`, redirects included), so a paused
(SIGSTOP) replica costs one timeout and never a hang. Sessions are created lazily in the event
loop that first uses them: one client instance belongs to one loop.
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp
import yarl

__all__ = [
    "Ack",
    "EtcdClient",
    "NodeStatus",
    "NotARaftStore",
    "OperationFailed",
    "OutcomeUnknown",
    "RaftStoreClient",
    "StatusUnavailable",
    "StoreClient",
    "make_client",
]

DEFAULT_TIMEOUT_S = 1.0
MAX_REDIRECTS = 3
_BODY_LIMIT = 200


class NotARaftStore(ValueError):
    """The endpoint answered, but not as the Raft store it was said to be."""


class StatusUnavailable(Exception):
    """The endpoint did not answer its status in time (down, paused, cut off, overloaded)."""


class OperationFailed(Exception):
    """The operation certainly did not take effect."""


class OutcomeUnknown(Exception):
    """The operation may or may not have taken effect (timed out, cut off after sending, 5xx)."""


@dataclass(frozen=True)
class NodeStatus:
    """One replica's own view: who it is, whom it follows, in which term."""

    endpoint: str
    id: str
    leader: str | None
    term: int
    role: str | None = None

    @property
    def claims_leadership(self) -> bool:
        return self.role == "leader" or (self.leader is not None and self.leader == self.id)


@dataclass(frozen=True)
class Ack:
    """An acknowledged write: the term it was acknowledged in (when the store says) and by whom."""

    endpoint: str
    term: int | None = None


class StoreClient(Protocol):
    """What the observer and the recorder need from a store. Timeouts are totals, in seconds."""

    endpoints: list[str]
    #: True when the reported term is the term of the last *applied* entry (etcd), which lags
    #: the Raft term for a moment after an election; the judgement allows for that.
    applied_term: bool

    async def status(self, endpoint: str, timeout_s: float | None = None) -> NodeStatus: ...

    async def get(self, key: str, timeout_s: float | None = None) -> str | None: ...

    async def put(self, key: str, value: str, timeout_s: float | None = None) -> Ack: ...

    async def cas(
        self, key: str, expect: str | None, value: str, timeout_s: float | None = None
    ) -> bool: ...

    async def delete(self, key: str, timeout_s: float | None = None) -> bool: ...

    def hint_leader(self, endpoint: str) -> None:
        """Someone saw `endpoint` claim leadership: send the next calls there."""
        ...

    async def aclose(self) -> None: ...


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _BODY_LIMIT else text[:_BODY_LIMIT] + "..."


class _Response:
    """Status and decoded JSON (or None) of one answer, read fully before the deadline ends."""

    def __init__(self, url: str, status: int, text: str, headers: dict[str, str]) -> None:
        self.url, self.status, self.text, self.headers = url, status, text, headers
        try:
            self.json: Any = json.loads(text) if text else None
        except ValueError:
            self.json = None

    def error_text(self) -> str:
        if isinstance(self.json, dict):
            message = self.json.get("error") or self.json.get("message")
            if message:
                return f"HTTP {self.status} from {self.url}: {message}"
        return f"HTTP {self.status} from {self.url}: {_short(self.text)}"


class _HttpClient:
    """A lazily created aiohttp session with no connection limit.

    No limit means no pool queue: an operation never waits behind a connection that a hung
    request still holds. aiohttp closes a connection whose request was cancelled.
    """

    def __init__(self, endpoints: list[str], timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        if not endpoints:
            raise ValueError("a Raft store client needs at least one endpoint")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            trace = aiohttp.TraceConfig()
            trace.on_request_headers_sent.append(_note_sent)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=None),
                trace_configs=[trace],
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _send(self, method: str, url: str, body: Any = None) -> _Response:
        """One HTTP exchange, no redirects followed. Raises aiohttp errors and TimeoutError.

        aiohttp quietly resends an idempotent request (PUT, DELETE) once when a kept-alive
        connection breaks after sending it; if the resend is then refused, the refusal would
        read as "never sent" although the first copy may have been applied. A refusal after
        any copy went out is therefore raised as `RequestMayHaveLanded` (outcome unknown).
        """
        sent: dict[str, bool] = {}
        try:
            async with self._http().request(
                method,
                yarl.URL(url, encoded=True),
                json=body,
                allow_redirects=False,
                trace_request_ctx=sent,
            ) as r:
                text = await r.text(errors="replace")
                return _Response(url, r.status, text, dict(r.headers))
        except aiohttp.ClientConnectorError as exc:
            if sent.get("sent"):
                raise RequestMayHaveLanded(f"{method} {url} was sent, then: {exc}") from exc
            raise


class RequestMayHaveLanded(aiohttp.ClientError):
    """A request went out before the connection failed: it may have taken effect."""


async def _note_sent(session: Any, ctx: Any, params: Any) -> None:
    if isinstance(ctx.trace_request_ctx, dict):
        ctx.trace_request_ctx["sent"] = True


def _unknown_from(exc: BaseException, url: str) -> OutcomeUnknown:
    if isinstance(exc, TimeoutError):
        return OutcomeUnknown(f"timed out waiting for {url}")
    return OutcomeUnknown(f"{type(exc).__name__} from {url}: {exc}")


class RaftStoreClient(_HttpClient):
    """Our store (docs/internals.md "The metadata store (Raft)"): follows 307s to the leader.

    The leader's URL is remembered, so later calls go straight there; a replica that refuses
    the connection is skipped (nothing was sent, so trying the next one is safe).
    """

    applied_term = False

    def __init__(self, endpoints: list[str], timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__(endpoints, timeout_s)
        self._leader_url: str | None = None
        self._next = 0

    async def status(self, endpoint: str, timeout_s: float | None = None) -> NodeStatus:
        url = endpoint.rstrip("/") + "/status"
        try:
            async with asyncio.timeout(timeout_s or self.timeout_s):
                r = await self._send("GET", url)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise StatusUnavailable(str(_unknown_from(exc, url))) from exc
        if r.status >= 500:
            raise StatusUnavailable(r.error_text())
        body = r.json
        if r.status != 200 or not isinstance(body, dict):
            raise NotARaftStore(f"{url} is not our Raft store: {r.error_text()}")
        try:
            node_id, term = body["id"], int(body["term"])
        except (KeyError, TypeError, ValueError) as exc:
            raise NotARaftStore(f"{url} answered a status without id and term: {body}") from exc
        leader = body.get("leader")
        return NodeStatus(
            endpoint=endpoint.rstrip("/"),
            id=str(node_id),
            leader=None if leader is None else str(leader),
            term=term,
            role=body.get("role"),
        )

    def hint_leader(self, endpoint: str) -> None:
        endpoint = endpoint.rstrip("/")
        if endpoint in self.endpoints:
            self._leader_url = endpoint

    def _first_target(self) -> str:
        if self._leader_url:
            return self._leader_url
        target = self.endpoints[self._next % len(self.endpoints)]
        self._next += 1
        return target

    async def _call(self, method: str, path: str, body: Any, timeout_s: float | None) -> _Response:
        """Send to the leader (found by redirects) within one total deadline."""
        target = self._first_target()
        refused: set[str] = set()
        hops = 0
        try:
            async with asyncio.timeout(timeout_s or self.timeout_s):
                while True:
                    url = target + path
                    try:
                        r = await self._send(method, url, body)
                    except aiohttp.ClientConnectorError as exc:
                        # Not connected, so nothing was sent: another replica may be tried.
                        refused.add(target)
                        self._leader_url = None
                        untried = [e for e in self.endpoints if e not in refused]
                        if not untried:
                            raise OperationFailed(
                                f"no replica accepted a connection: {exc}"
                            ) from exc
                        target = untried[0]
                        continue
                    if r.status in (307, 308) and hops < MAX_REDIRECTS:
                        hops += 1
                        target = self._leader_from(r) or target
                        self._leader_url = target
                        continue
                    if 200 <= r.status < 300:
                        self._leader_url = target
                    return r
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._leader_url = None
            raise _unknown_from(exc, target + path) from exc

    @staticmethod
    def _leader_from(r: _Response) -> str | None:
        location = r.headers.get("Location")
        if location:
            parsed = yarl.URL(location)
            if parsed.is_absolute():
                return str(parsed.origin())
        if isinstance(r.json, dict) and r.json.get("leader_url"):
            return str(r.json["leader_url"]).rstrip("/")
        return None

    @staticmethod
    def _raise_for(r: _Response) -> None:
        if 200 <= r.status < 300:
            return
        detail = r.json if isinstance(r.json, dict) else {}
        if r.status < 500:  # 4xx, or still redirected after MAX_REDIRECTS: nothing proposed
            raise OperationFailed(r.error_text())
        # A replica that says what became of the request is believed; any other 5xx may
        # have been proposed, so its outcome is unknown.
        if detail.get("error") == "no leader" or detail.get("outcome") == "failed":
            raise OperationFailed(r.error_text())
        raise OutcomeUnknown(r.error_text())

    @staticmethod
    def _path(key: str) -> str:
        return "/kv/" + quote(key, safe="")

    async def get(self, key: str, timeout_s: float | None = None) -> str | None:
        r = await self._call("GET", self._path(key), None, timeout_s)
        if r.status == 404 and isinstance(r.json, dict) and r.json.get("error") == "not found":
            return None
        self._raise_for(r)
        return self._body(r).get("value")

    async def put(self, key: str, value: str, timeout_s: float | None = None) -> Ack:
        r = await self._call("PUT", self._path(key), {"value": value}, timeout_s)
        self._raise_for(r)
        term = self._body(r).get("term")
        return Ack(endpoint=r.url.split("/kv/")[0], term=None if term is None else int(term))

    async def cas(
        self, key: str, expect: str | None, value: str, timeout_s: float | None = None
    ) -> bool:
        body = {"expect": expect, "value": value}
        r = await self._call("POST", self._path(key) + "/cas", body, timeout_s)
        self._raise_for(r)
        return bool(self._body(r).get("succeeded"))

    async def delete(self, key: str, timeout_s: float | None = None) -> bool:
        r = await self._call("DELETE", self._path(key), None, timeout_s)
        self._raise_for(r)
        return bool(self._body(r).get("deleted"))

    @staticmethod
    def _body(r: _Response) -> dict[str, Any]:
        if not isinstance(r.json, dict):
            # It answered 2xx, so the operation happened, but we cannot read what it said.
            raise OutcomeUnknown(f"{r.url} answered 2xx without a JSON object")
        return r.json


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode(errors="replace")


class EtcdClient(_HttpClient):
    """etcd's v3 JSON gateway (3.4): any member accepts reads and writes.

    Calls go to one preferred member; it is rotated after a timeout or an unknown outcome (the
    member may be paused or cut off) and skipped at once when it refuses the connection.
    """

    applied_term = True  # etcd reports the term of the last applied entry

    def __init__(self, endpoints: list[str], timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__(endpoints, timeout_s)
        self._preferred = 0

    async def status(self, endpoint: str, timeout_s: float | None = None) -> NodeStatus:
        url = endpoint.rstrip("/") + "/v3/maintenance/status"
        try:
            async with asyncio.timeout(timeout_s or self.timeout_s):
                r = await self._send("POST", url, {})
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise StatusUnavailable(str(_unknown_from(exc, url))) from exc
        if r.status >= 500:
            raise StatusUnavailable(r.error_text())
        body = r.json
        if r.status != 200 or not isinstance(body, dict) or "header" not in body:
            raise NotARaftStore(f"{url} is not an etcd v3 gateway: {r.error_text()}")
        header = body["header"] or {}
        try:
            member = str(header["member_id"])
            term = int(body.get("raftTerm") or body.get("raft_term") or header["raft_term"])
        except (KeyError, TypeError, ValueError) as exc:
            raise NotARaftStore(f"{url} answered a status without member id and term") from exc
        # During an election etcd leaves `leader` out (zero values are omitted from JSON).
        leader = body.get("leader")
        leader = None if leader in (None, "", "0", 0) else str(leader)
        role = None if leader is None else ("leader" if leader == member else "follower")
        return NodeStatus(
            endpoint=endpoint.rstrip("/"), id=member, leader=leader, term=term, role=role
        )

    def hint_leader(self, endpoint: str) -> None:
        endpoint = endpoint.rstrip("/")
        if endpoint in self.endpoints:
            self._preferred = self.endpoints.index(endpoint)

    async def _call(self, path: str, body: dict[str, Any], timeout_s: float | None) -> _Response:
        start = self._preferred
        target = self.endpoints[start % len(self.endpoints)]
        last: Exception | None = None
        try:
            async with asyncio.timeout(timeout_s or self.timeout_s):
                for step in range(len(self.endpoints)):
                    target = self.endpoints[(start + step) % len(self.endpoints)]
                    try:
                        r = await self._send("POST", target + path, body)
                    except aiohttp.ClientConnectorError as exc:
                        self._preferred = start + step + 1
                        last = exc
                        continue
                    if r.status >= 500:
                        self._preferred = start + step + 1
                        raise OutcomeUnknown(r.error_text())
                    if r.status != 200:
                        raise OperationFailed(r.error_text())
                    if not isinstance(r.json, dict):
                        raise OutcomeUnknown(f"{r.url} answered 200 without a JSON object")
                    return r
                raise OperationFailed(f"no etcd member accepted a connection: {last}")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._preferred = self.endpoints.index(target) + 1
            raise _unknown_from(exc, target + path) from exc

    async def get(self, key: str, timeout_s: float | None = None) -> str | None:
        r = await self._call("/v3/kv/range", {"key": _b64(key)}, timeout_s)
        kvs = r.json.get("kvs") or []
        return _unb64(kvs[0].get("value", "")) if kvs else None

    async def put(self, key: str, value: str, timeout_s: float | None = None) -> Ack:
        r = await self._call("/v3/kv/put", {"key": _b64(key), "value": _b64(value)}, timeout_s)
        term = (r.json.get("header") or {}).get("raft_term")
        return Ack(endpoint=r.url.split("/v3/")[0], term=None if term is None else int(term))

    async def cas(
        self, key: str, expect: str | None, value: str, timeout_s: float | None = None
    ) -> bool:
        if expect is None:  # "absent" is "never created"
            compare = {
                "key": _b64(key),
                "result": "EQUAL",
                "target": "CREATE",
                "create_revision": "0",
            }
        else:
            compare = {
                "key": _b64(key),
                "result": "EQUAL",
                "target": "VALUE",
                "value": _b64(expect),
            }
        txn = {
            "compare": [compare],
            "success": [{"request_put": {"key": _b64(key), "value": _b64(value)}}],
        }
        r = await self._call("/v3/kv/txn", txn, timeout_s)
        return bool(r.json.get("succeeded", False))  # false is omitted from the JSON

    async def delete(self, key: str, timeout_s: float | None = None) -> bool:
        r = await self._call("/v3/kv/deleterange", {"key": _b64(key)}, timeout_s)
        return int(r.json.get("deleted") or 0) > 0


def make_client(
    kind: str, endpoints: list[str], timeout_s: float = DEFAULT_TIMEOUT_S
) -> StoreClient:
    """`kind` is "ours" (resilience.raft) or "etcd"."""
    if kind == "ours":
        return RaftStoreClient(endpoints, timeout_s)
    if kind == "etcd":
        return EtcdClient(endpoints, timeout_s)
    raise ValueError(f"unknown Raft store kind {kind!r}: expected 'ours' or 'etcd'")
