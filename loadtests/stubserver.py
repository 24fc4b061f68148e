"""A tiny OpenAI-compatible streaming server with fixed, known delays.

It exists to test and calibrate the load generator: with the first token due exactly
`first_token_ms` after the request arrives and each later token `itl_ms` after the previous
one (on an absolute schedule, so no drift), the client's measured TTFT and ITL can be compared
with the truth. `GET /stats` reports how late the server itself was against that schedule, so
a calibration can tell client error from server error.

Run it with `python -m loadtests.stubserver --port 0`; it prints `listening on URL` once bound.
`StubServer` starts it as a subprocess for tests and benchmarks and stops it by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from loadtests.records import distribution

MAX_SAMPLES = 200_000


@dataclass(slots=True)
class StubConfig:
    """Delays and shape of every reply."""

    first_token_ms: float = 20.0
    itl_ms: float = 5.0
    reasoning_tokens: int = 0
    name: str = "stub-0"
    # Keep every request's actual arrival and token write times (wall clock) for
    # GET /timeline, and name each request in x-served-by ("stub-0/17") to match records.
    timeline: bool = False


class _Journal:
    """What the server actually did: lateness against the schedule, and the timeline."""

    def __init__(self, keep_timeline: bool) -> None:
        self.first_late: list[float] = []
        self.later_late: list[float] = []
        self.requests = 0
        self.keep_timeline = keep_timeline
        self.timeline: dict[str, dict[str, Any]] = {}

    def late(self, first: bool, seconds: float) -> None:
        samples = self.first_late if first else self.later_late
        if len(samples) < MAX_SAMPLES:
            samples.append(seconds)

    def entry(self, tag: str) -> dict[str, Any] | None:
        if not self.keep_timeline or len(self.timeline) >= MAX_SAMPLES // 10:
            return None
        self.timeline[tag] = {"arrived": time.time(), "tokens": []}
        return self.timeline[tag]


def _chunk(request_id: str, created: int, model: str, delta: dict[str, Any]) -> bytes:
    payload = {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
    }
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


async def _stream_tokens(
    response: web.StreamResponse,
    config: StubConfig,
    journal: _Journal,
    entry: dict[str, Any] | None,
    body: dict[str, Any],
    arrived: float,
    request_id: str,
    created: int,
) -> None:
    """Role chunk at once, then token i at arrival + first_token + i * itl, usage, [DONE]."""
    model = str(body.get("model") or "stub")
    max_tokens = int(body.get("max_tokens") or 64)
    await response.write(_chunk(request_id, created, model, {"role": "assistant"}))
    loop = asyncio.get_running_loop()
    for index in range(max_tokens):
        due = arrived + (config.first_token_ms + index * config.itl_ms) / 1e3
        await asyncio.sleep(max(0.0, due - loop.time()))
        journal.late(index == 0, loop.time() - due)
        key = "reasoning_content" if index < config.reasoning_tokens else "content"
        if entry is not None:
            entry["tokens"].append(time.time())
        await response.write(_chunk(request_id, created, model, {key: f"t{index} "}))
    if (body.get("stream_options") or {}).get("include_usage"):
        prompt_tokens = _prompt_tokens(body)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": max_tokens,
            "total_tokens": prompt_tokens + max_tokens,
        }
        payload = {
            "id": request_id,
            "object": "chat.completion.chunk",
            "choices": [],
            "usage": usage,
        }
        await response.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()


def _prompt_tokens(body: dict[str, Any]) -> int:
    return sum(len(str(m.get("content", "")).split()) for m in body.get("messages") or [])


def build_app(config: StubConfig) -> web.Application:
    journal = _Journal(config.timeline)

    async def chat(request: web.Request) -> web.StreamResponse:
        arrived = asyncio.get_running_loop().time()
        body = await request.json()
        journal.requests += 1
        tag = f"{config.name}/{journal.requests}" if config.timeline else config.name
        entry = journal.entry(tag)
        model = str(body.get("model") or "stub")
        max_tokens = int(body.get("max_tokens") or 64)
        prompt_tokens = _prompt_tokens(body)
        request_id = f"chatcmpl-{journal.requests}"
        created = int(time.time())
        headers = {"x-served-by": tag}
        if not body.get("stream"):
            await asyncio.sleep((config.first_token_ms + config.itl_ms * (max_tokens - 1)) / 1e3)
            return web.json_response(
                {
                    "id": request_id,
                    "object": "chat.completion",
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "tok " * max_tokens},
                            "finish_reason": "length",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": max_tokens,
                        "total_tokens": prompt_tokens + max_tokens,
                    },
                },
                headers=headers,
            )
        response = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            await _stream_tokens(
                response, config, journal, entry, body, arrived, request_id, created
            )
        except ConnectionResetError:
            pass  # the client went away mid-stream (a stopped load run): not a server error
        return response

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "name": config.name})

    async def ping(_: web.Request) -> web.Response:
        return web.Response(text="pong")

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "stub", "object": "model"}]})

    async def stats(_: web.Request) -> web.Response:
        return web.json_response(
            {
                "requests": journal.requests,
                "first_token_late": distribution(journal.first_late),
                "later_token_late": distribution(journal.later_late),
            }
        )

    async def timeline(_: web.Request) -> web.Response:
        return web.json_response(journal.timeline)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/health", health)
    app.router.add_get("/ping", ping)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/stats", stats)
    app.router.add_get("/timeline", timeline)
    return app


async def _serve(config: StubConfig, host: str, port: int) -> None:
    runner = web.AppRunner(build_app(config), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    bound = runner.addresses[0][1]
    print(f"listening on http://{host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--first-token-ms", type=float, default=StubConfig.first_token_ms)
    parser.add_argument("--itl-ms", type=float, default=StubConfig.itl_ms)
    parser.add_argument("--reasoning-tokens", type=int, default=0)
    parser.add_argument("--name", default=StubConfig.name)
    parser.add_argument("--timeline", action="store_true", help="keep per-request times")
    args = parser.parse_args(argv)
    config = StubConfig(
        args.first_token_ms, args.itl_ms, args.reasoning_tokens, args.name, args.timeline
    )
    asyncio.run(_serve(config, args.host, args.port))
    return 0


class StubServer:
    """Runs the stub as a subprocess on a free loopback port; stops it by PID."""

    def __init__(self, config: StubConfig | None = None, startup_timeout: float = 10.0):
        self.config = config or StubConfig()
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> StubServer:
        c = self.config
        command = [sys.executable, "-m", "loadtests.stubserver", "--port", "0"]
        command += ["--first-token-ms", str(c.first_token_ms), "--itl-ms", str(c.itl_ms)]
        command += ["--reasoning-tokens", str(c.reasoning_tokens), "--name", c.name]
        command += ["--timeline"] if c.timeline else []
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONPATH": _package_root_path()},
        )
        assert self.process.stdout is not None
        line = ""
        ready, _, _ = select.select([self.process.stdout], [], [], self.startup_timeout)
        if ready:
            line = self.process.stdout.readline().strip()
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"stub server did not start: {line!r}")
        self.url = line.removeprefix("listening on ")
        return self

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def stop(self, timeout: float = 5.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()

    def __enter__(self) -> StubServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _package_root_path() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    existing = os.environ.get("PYTHONPATH")
    return root + (os.pathsep + existing if existing else "")


if __name__ == "__main__":
    sys.exit(main())
