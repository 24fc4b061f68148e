"""The gateway's routing table, kept in the metadata store.

The supervisor publishes the list of upstreams under one key once the store has a leader; the
gateway reads it back periodically (a linearizable read through the leader) and applies any
change. While the store is unreachable the gateway keeps the last table it had: losing the
control plane must not stop inference.
"""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp
import httpx

ROUTING_KEY = "routing.upstreams"


def publish(
    endpoints: list[str], upstreams: list[dict[str, Any]], deadline_s: float = 10.0
) -> bool:
    """Write the table through whichever replica leads (redirects are followed)."""
    body = {"value": json.dumps(upstreams, sort_keys=True)}
    deadline = time.monotonic() + deadline_s
    with httpx.Client(timeout=1.0, trust_env=False, follow_redirects=True) as client:
        while time.monotonic() < deadline:
            for endpoint in endpoints:
                try:
                    r = client.put(f"{endpoint}/kv/{ROUTING_KEY}", json=body)
                    if r.status_code == 200:
                        return True
                except httpx.HTTPError:
                    pass
            time.sleep(0.1)
    return False


async def fetch(
    session: aiohttp.ClientSession, endpoints: list[str]
) -> list[dict[str, Any]] | None:
    """The table as the store holds it now, or None when no replica could answer."""
    for endpoint in endpoints:
        try:
            async with session.get(f"{endpoint}/kv/{ROUTING_KEY}") as r:
                if r.status == 200:
                    return json.loads((await r.json())["value"])
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError):
            continue
    return None
