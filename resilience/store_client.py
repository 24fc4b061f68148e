"""A small client of our metadata store for the parts of the cluster that keep state there.

The controllers, the gateway and the experiment actions keep JSON documents under single keys
(docs/internals.md "Keys in the store"). Both flavours follow the 307 a follower answers to the
leader and try the next replica when one refuses the connection, so a store that just lost its
leader costs a retry, not an error. The harness's own history recorder has its own client on
purpose: it must record every outcome, where these callers only want the value.
"""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp
import httpx

ABSENT = None  # `expect` for a CAS that only succeeds when the key does not exist


class StoreUnavailable(RuntimeError):
    """No replica answered the call (no leader, every replica down, or a timeout)."""


def _decode(value: str | None) -> Any:
    return None if value is None else json.loads(value)


def _encode(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class Store:
    """Blocking client (probes and experiment actions run in Chaos Toolkit's threads)."""

    def __init__(self, endpoints: list[str], timeout_s: float = 2.0) -> None:
        if not endpoints:
            raise ValueError("the store has no endpoints")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.timeout_s = timeout_s

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        deadline = time.monotonic() + self.timeout_s
        last = "no replica tried"
        with httpx.Client(timeout=1.0, trust_env=False, follow_redirects=True) as client:
            while True:
                for endpoint in self.endpoints:
                    try:
                        r = client.request(method, endpoint + path, json=body)
                    except httpx.HTTPError as exc:
                        last = f"{endpoint}: {exc}"
                        continue
                    if r.status_code < 500:
                        return r
                    last = f"{endpoint}: {r.status_code} {r.text[:120]}"
                if time.monotonic() > deadline:
                    raise StoreUnavailable(f"the metadata store did not answer {path}: {last}")
                time.sleep(0.05)

    def get_raw(self, key: str) -> str | None:
        r = self._call("GET", f"/kv/{key}")
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return str(r.json()["value"])

    def get(self, key: str) -> Any:
        """The JSON document under `key`, or None when it is absent."""
        return _decode(self.get_raw(key))

    def put(self, key: str, value: Any) -> None:
        self._call("PUT", f"/kv/{key}", {"value": _encode(value)}).raise_for_status()

    def delete(self, key: str) -> None:
        self._call("DELETE", f"/kv/{key}").raise_for_status()

    def update(self, key: str, change: Any, attempts: int = 20) -> Any:
        """Read-modify-write by CAS: `change(old) -> new`; retried when someone else wrote."""
        for _ in range(attempts):
            raw = self.get_raw(key)
            new = change(_decode(raw))
            r = self._call("POST", f"/kv/{key}/cas", {"expect": raw, "value": _encode(new)})
            r.raise_for_status()
            if r.json().get("succeeded"):
                return new
        raise StoreUnavailable(f"{key}: gave up after {attempts} conflicting writes")


class AsyncStore:
    """The same calls for asyncio code (the controllers), on one shared aiohttp session."""

    def __init__(
        self, session: aiohttp.ClientSession, endpoints: list[str], timeout_s: float = 1.0
    ) -> None:
        if not endpoints:
            raise ValueError("the store has no endpoints")
        self.session = session
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.timeout_s = timeout_s
        self._preferred = 0

    async def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, Any]:
        """(status, JSON body) from the first replica that answers below 500."""
        last = "no replica tried"
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        n = len(self.endpoints)
        for i in range(n):
            endpoint = self.endpoints[(self._preferred + i) % n]
            try:
                async with self.session.request(
                    method, endpoint + path, json=body, timeout=timeout
                ) as r:
                    payload = await r.json(content_type=None)
                    if r.status < 500:
                        self._preferred = (self._preferred + i) % n
                        return r.status, payload
                    last = f"{endpoint}: {r.status} {payload}"
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                last = f"{endpoint}: {exc!r}"
        raise StoreUnavailable(f"the metadata store did not answer {path}: {last}")

    async def get_raw(self, key: str) -> str | None:
        status, body = await self._call("GET", f"/kv/{key}")
        if status == 404:
            return None
        if status != 200:
            raise StoreUnavailable(f"GET {key}: {status} {body}")
        return str(body["value"])

    async def get(self, key: str) -> Any:
        return _decode(await self.get_raw(key))

    async def put(self, key: str, value: Any, lease: int | None = None) -> None:
        body: dict[str, Any] = {"value": _encode(value)}
        if lease is not None:
            body["lease"] = lease
        status, answer = await self._call("PUT", f"/kv/{key}", body)
        if status != 200:
            raise StoreUnavailable(f"PUT {key}: {status} {answer}")

    async def cas(
        self, key: str, expect_raw: str | None, value: Any, lease: int | None = None
    ) -> tuple[bool, str | None]:
        """Write `value` only if the key still holds `expect_raw` (None: absent).
        Returns (succeeded, the raw value the key holds now)."""
        body: dict[str, Any] = {"expect": expect_raw, "value": _encode(value)}
        if lease is not None:
            body["lease"] = lease
        status, answer = await self._call("POST", f"/kv/{key}/cas", body)
        if status != 200:
            raise StoreUnavailable(f"CAS {key}: {status} {answer}")
        if answer.get("succeeded"):
            return True, body["value"]
        return False, answer.get("value")

    async def grant_lease(self, ttl_s: float) -> int:
        status, body = await self._call("POST", "/leases", {"ttl": ttl_s})
        if status != 200:
            raise StoreUnavailable(f"lease grant: {status} {body}")
        return int(body["id"])

    async def keepalive(self, lease: int) -> bool:
        """False when the lease is gone (expired or revoked): leadership is lost."""
        status, _ = await self._call("POST", f"/leases/{lease}/keepalive")
        return status == 200

    async def revoke(self, lease: int) -> None:
        await self._call("DELETE", f"/leases/{lease}")


def encode(value: Any) -> str:
    """The canonical JSON a key holds (sorted keys, no spaces), for CAS comparisons."""
    return _encode(value)
