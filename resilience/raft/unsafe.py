"""UNSAFE, for tests only: a replica that answers reads from its own state machine.

With `unsafe_local_reads: true` in the replica's config, `GET /kv/{key}` skips ReadIndex and
never redirects: whichever replica the client reached answers from what it has applied so far.
A deposed leader that has not yet heard of its successor, or a lagging follower, then serves
stale values. That is exactly the bug a linearizability checker exists to catch, so this mode
gives the checker a store known to be wrong (tests/integration/test_wrong_store.py). Nothing
else may switch it on; the default is off and every other path of the store is unchanged.
"""

from __future__ import annotations

import logging

from aiohttp import web

from resilience.raft.statemachine import KVStateMachine

__all__ = ["local_read"]

log = logging.getLogger("resilience.raft.unsafe")
_warned = False


def local_read(store: KVStateMachine, key: str) -> web.Response:
    """The answer of `GET /kv/{key}` from this replica's own store, stale or not."""
    global _warned
    if not _warned:
        log.warning("unsafe_local_reads is on: reads may be stale (tests only)")
        _warned = True
    kv = store.get(key)
    if kv is None:
        return web.json_response({"error": "not found"}, status=404)
    body = {"key": key, "value": kv.value, "mod_revision": kv.mod_revision, "lease": kv.lease}
    return web.json_response(body, status=200)
