"""A tiny OpenAI-style streaming upstream for gateway tests, steerable over HTTP.

Run: python stub_upstream.py --port P --name NAME. `POST /control` with a JSON object changes
its behaviour (keys of `Behaviour`); `GET /stats` says how many completions it was asked for.
It stands in for a worker so the gateway's tests do not depend on resilience/worker.py.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import time

from aiohttp import web


@dataclasses.dataclass
class Behaviour:
    ttft_delay_s: float = 0.005  # after the headers, before the first token (like prefill)
    chunk_delay_s: float = 0.002
    fail_status: int | None = None  # answer every completion with this HTTP status
    die_after_tokens: int | None = None  # abort the connection after this many tokens
    health_status: int = 200
    health_delay_s: float = 0.0


class Stub:
    def __init__(self, name: str) -> None:
        self.name = name
        self.behaviour = Behaviour()
        self.completions = 0

    def chunk(self, delta: dict, finish: str | None = None) -> bytes:
        obj = {
            "id": "chatcmpl-stub",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": "stub",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return b"data: " + json.dumps(obj).encode() + b"\n\n"

    async def completions_handler(self, request: web.Request) -> web.StreamResponse:
        self.completions += 1
        b = self.behaviour
        payload = await request.json()
        tokens = int(payload.get("max_tokens", 8))
        headers = {"x-served-by": self.name}
        if b.fail_status is not None:
            error = {"error": {"message": "stub told to fail", "type": "server_error"}}
            return web.json_response(error, status=b.fail_status, headers=headers)
        if not payload.get("stream"):
            await asyncio.sleep(b.ttft_delay_s)
            text = " ".join(f"tok{i}" for i in range(tokens))
            body = {
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "length",
                    }
                ],
                "usage": {
                    "prompt_tokens": 1,
                    "completion_tokens": tokens,
                    "total_tokens": tokens + 1,
                },
            }
            return web.json_response(body, headers=headers)
        response = web.StreamResponse(
            headers={**headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        await response.write(self.chunk({"role": "assistant", "content": ""}))
        await asyncio.sleep(b.ttft_delay_s)
        for i in range(tokens):
            if b.die_after_tokens is not None and i == b.die_after_tokens:
                await asyncio.sleep(0.05)  # let the tokens already written leave the socket
                assert request.transport is not None
                request.transport.abort()
                return response
            await response.write(self.chunk({"content": f"tok{i} "}))
            await asyncio.sleep(b.chunk_delay_s)
        await response.write(self.chunk({}, finish="length"))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def health(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.behaviour.health_delay_s)
        return web.json_response(
            {"status": "ok", "name": self.name}, status=self.behaviour.health_status
        )

    async def control(self, request: web.Request) -> web.Response:
        changes = await request.json()
        self.behaviour = dataclasses.replace(self.behaviour, **changes)
        return web.json_response(dataclasses.asdict(self.behaviour))

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({"name": self.name, "completions": self.completions})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True)
    args = parser.parse_args()
    stub = Stub(args.name)
    app = web.Application()
    app.router.add_post("/v1/chat/completions", stub.completions_handler)
    app.router.add_get("/health", stub.health)
    app.router.add_post("/control", stub.control)
    app.router.add_get("/stats", stub.stats)
    web.run_app(
        app, host="127.0.0.1", port=args.port, print=None, access_log=None, shutdown_timeout=0.5
    )


if __name__ == "__main__":
    main()
