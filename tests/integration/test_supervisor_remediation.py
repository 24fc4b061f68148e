"""SupervisorRemediation makes the supervisor calls the controller always made (docs/internals.md
"Supervisor additions"): same methods, paths and bodies, against a recording server on loopback."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from aiohttp import web

from resilience.remediation import Outcome, SupervisorRemediation

pytestmark = pytest.mark.integration


async def with_supervisor(calls: Any) -> tuple[list[tuple[str, str, Any]], Any]:
    """Serve a fake supervisor on 127.0.0.1, run `calls(remediation)`, stop it."""
    seen: list[tuple[str, str, Any]] = []

    async def record(request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else None
        seen.append((request.method, request.path, body))
        if request.path == "/processes/worker-n0-1/restart":
            return web.json_response({"name": "worker-n0-1", "pid": 4242})
        if request.path == "/processes/worker-gone/restart":
            return web.json_response({"error": "no process worker-gone"}, status=404)
        if request.method == "POST" and request.path == "/nodes":
            return web.json_response({"node": "node-4", "workers": []})
        if request.path == "/nodes/node-0":
            return web.json_response({"error": "node-0 is an initial node"}, status=409)
        return web.json_response({"node": "node-4"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    remediation = SupervisorRemediation(f"http://127.0.0.1:{port}/")
    try:
        result = await calls(remediation)
    finally:
        await remediation.close()
        await runner.cleanup()
    return seen, result


def test_the_wire_calls_are_the_supervisors_api() -> None:
    async def calls(r: SupervisorRemediation) -> list[Outcome]:
        return [
            await r.restart_worker("worker-n0-1"),
            await r.restart_worker("worker-gone"),
            await r.add_node(2),
            await r.remove_node("node-4"),
            await r.remove_node("node-0"),
        ]

    seen, outcomes = asyncio.run(with_supervisor(calls))
    assert seen == [
        ("POST", "/processes/worker-n0-1/restart", {}),
        ("POST", "/processes/worker-gone/restart", {}),
        ("POST", "/nodes", {"gpus": 2}),
        ("DELETE", "/nodes/node-4", None),
        ("DELETE", "/nodes/node-0", None),
    ]
    restarted, missing, added, removed, refused = outcomes
    assert restarted == Outcome(True)
    assert missing == Outcome(False, {"error": "no process worker-gone"})
    assert added == Outcome(True, node="node-4")
    assert removed == Outcome(True, node="node-4")
    assert not refused.ok and refused.available  # a refusal, not a platform without nodes


def test_a_supervisor_that_does_not_answer_is_a_failed_restart() -> None:
    async def go() -> Outcome:
        with socket.socket() as s:  # a port nothing listens on once this closes
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        remediation = SupervisorRemediation(f"http://127.0.0.1:{port}")
        try:
            return await remediation.restart_worker("worker-n0-0")
        finally:
            await remediation.close()

    outcome = asyncio.run(go())
    assert not outcome.ok and outcome.available and outcome.detail
