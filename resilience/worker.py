"""A simulated GPU inference worker with vLLM's OpenAI-compatible chat API and metrics.

Run as ``python -m resilience.worker --host 127.0.0.1 --port P --name NAME --node NODE --gpu G``.
Latency comes from `resilience.batching`: one asyncio task (the engine) advances every admitted
sequence by one token per decode step, admits waiting ones between steps while the KV cache has
room, and wakes each request's handler, which writes its SSE chunk straight to the socket. Nothing
is generated for real; the timing, queueing, metrics and failure modes are the point.

GPU faults enter through `GpuState` (``GET/PUT/DELETE /fault``): the fault actions flip its fields
and the engine, ``/health`` and the DCGM metrics react as a real GPU's would.

The controllers place tasks (model replicas) through ``GET/PUT/DELETE /task`` (`TaskSlot`): a
worker loads a task for ``load_s`` seconds, refusing chat requests meanwhile, then serves it.
"""

import argparse
import asyncio
import dataclasses
import json
import logging
import math
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from resilience.batching import BatchingConfig, KvScheduler, LatencyModel
from resilience.jsonconfig import dataclass_from_json
from resilience.worker_metrics import METRICS_CONTENT_TYPE, WorkerMetrics

__all__ = [
    "ChatRequest",
    "Engine",
    "GpuState",
    "RequestError",
    "SequenceState",
    "TaskSlot",
    "TaskStatus",
    "count_prompt_tokens",
    "create_app",
    "main",
    "parse_chat_request",
    "parse_task_request",
]

log = logging.getLogger("resilience.worker")

DEFAULT_MODEL = "deepseek-sim"
HANG_POLL_S = 0.05  # how often a hung or blocked engine looks again
FB_TOTAL_MIB = 81559.0  # what nvidia-smi reports for an H100 80GB HBM3
GPU_MEMORY_UTILIZATION = 0.9  # vLLM preallocates this share of HBM at start-up
MAX_SM_CLOCK_MHZ = 1980.0
IDLE_POWER_W, MAX_POWER_W = 70.0, 700.0
IDLE_TEMP_C, BUSY_TEMP_C = 36.0, 68.0
# Xids after which the driver tears down the CUDA contexts on the GPU: the requests in flight
# fail even when the GPU itself stays usable (94, a contained ECC error).
CONTEXT_KILLING_XIDS = frozenset({13, 31, 94})
CHAT_PATH = "/v1/chat/completions"


# GPU fault seam ---------------------------------------------------------------------------------


@dataclass
class GpuState:
    """What the simulated GPU looks like; fault actions edit it through ``PUT /fault``.

    ``healthy=False`` is a GPU that is gone (Xid 79, uncorrectable ECC): ``/health`` answers 503,
    new requests get 503 and in-flight ones fail. ``hang=True`` stalls the engine while
    ``/health`` still says ok, as a stuck kernel does in vLLM. ``slowdown`` multiplies every step
    (thermal or power throttling), ``kv_capacity_factor`` shrinks the KV cache (HBM pressure).
    ``temperature_c`` and ``fb_used_mib`` left null are modelled from load.
    """

    healthy: bool = True
    xid: int = 0
    temperature_c: float | None = None
    sm_clock_mhz: float = MAX_SM_CLOCK_MHZ
    fb_used_mib: float | None = None
    fb_total_mib: float = FB_TOTAL_MIB
    ecc_sbe_volatile: int = 0
    ecc_dbe_volatile: int = 0
    slowdown: float = 1.0
    hang: bool = False
    kv_capacity_factor: float = 1.0

    def __post_init__(self) -> None:
        if self.xid < 0 or self.ecc_sbe_volatile < 0 or self.ecc_dbe_volatile < 0:
            raise ValueError("xid and ECC counters must be >= 0")
        if self.sm_clock_mhz <= 0 or self.fb_total_mib <= 0:
            raise ValueError("sm_clock_mhz and fb_total_mib must be > 0")
        if self.fb_used_mib is not None and not 0 <= self.fb_used_mib <= self.fb_total_mib:
            raise ValueError("fb_used_mib must be within [0, fb_total_mib]")
        if self.slowdown <= 0:
            raise ValueError("slowdown must be > 0")
        if not 0 <= self.kv_capacity_factor <= 1:
            raise ValueError("kv_capacity_factor must be within [0, 1]")

    def updated(self, changes: Any) -> "GpuState":
        """A validated copy with ``changes`` (a JSON object) applied; all or nothing."""
        return dataclass_from_json(GpuState, changes, "GPU fault update", base=self)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Requests ---------------------------------------------------------------------------------------


class RequestError(Exception):
    """A request the OpenAI API would refuse; carries the HTTP status and the error body."""

    def __init__(self, message: str, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {
            "error": {"message": str(self), "type": kind, "param": self.param, "code": self.status}
        }


@dataclass(frozen=True)
class ChatRequest:
    """The parts of a chat-completions request the simulation uses."""

    prompt_tokens: int
    max_tokens: int
    stream: bool
    include_usage: bool


def count_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Approximate tokens as chars/4 plus a chat-template overhead per message."""
    chars = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    chars += len(part["text"])
    return max(1, 4 * len(messages) + (chars + 3) // 4)


def parse_chat_request(body: Any, config: BatchingConfig) -> ChatRequest:
    """Validate a decoded JSON body like vLLM does; raise `RequestError` on anything wrong."""
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list", param="messages")
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise RequestError("each message must be an object with a 'role'", param="messages")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = config.default_max_tokens
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise RequestError("'max_tokens' must be a positive integer", param="max_tokens")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError("'stream' must be a boolean", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise RequestError("'stream_options' must be an object", param="stream_options")
    include_usage = bool(options and options.get("include_usage"))
    if body.get("n", 1) != 1:
        raise RequestError("only n=1 is supported", param="n")
    prompt_tokens = count_prompt_tokens(messages)
    if prompt_tokens + max_tokens > config.max_model_len:
        raise RequestError(
            f"This model's maximum context length is {config.max_model_len} tokens. However, "
            f"you requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the "
            f"messages, {max_tokens} in the completion).",
            param="max_tokens",
        )
    return ChatRequest(prompt_tokens, max_tokens, stream, include_usage)


# Task seam --------------------------------------------------------------------------------------

TaskState = Literal["idle", "loading", "serving"]


@dataclass(frozen=True)
class TaskStatus:
    """What ``GET /task`` answers: the task this worker holds, its state, and since when (Unix)."""

    id: str | None = None
    state: TaskState = "idle"
    since: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_task_request(body: Any, default_load_s: float) -> tuple[str, float]:
    """The task id and load time of a ``PUT /task`` body; `RequestError` (400) on anything wrong.

    Unknown keys are refused like everywhere else here: a controller's typo must fail loudly.
    """
    if not isinstance(body, dict):
        raise RequestError("the task body must be a JSON object")
    unknown = sorted(set(body) - {"id", "load_s"})
    if unknown:
        raise RequestError(f"unknown task key(s): {', '.join(unknown)}; known keys: id, load_s")
    task_id = body.get("id")
    if not isinstance(task_id, str) or not task_id:
        raise RequestError("'id' must be a non-empty string", param="id")
    load_s = body.get("load_s")
    if load_s is None:
        return task_id, default_load_s
    if (
        isinstance(load_s, bool)
        or not isinstance(load_s, int | float)
        or not math.isfinite(load_s)
        or load_s < 0
    ):
        raise RequestError("'load_s' must be a finite number >= 0", param="load_s")
    return task_id, float(load_s)


class TaskSlot:
    """The task (model replica) placed on this worker, loaded in the background.

    State lives in memory only, so a restarted worker starts idle, as a restarted vLLM pod holds
    no model until it is told which one. A load finishes only on a healthy GPU: a hung GPU
    stalls it, and a GPU that fell off the bus meanwhile fails it back to idle.
    """

    def __init__(self, metrics: WorkerMetrics, gpu: Callable[[], GpuState]) -> None:
        self.metrics = metrics
        self._gpu = gpu
        self.status = TaskStatus()
        self._loader: asyncio.Task[None] | None = None

    @property
    def loading(self) -> bool:
        return self.status.state == "loading"

    def load(self, task_id: str, load_s: float) -> TaskStatus:
        """Start loading `task_id`, replacing whatever was loaded or loading before."""
        self._cancel_loader()
        self._set(TaskStatus(task_id, "loading"))
        self._loader = asyncio.create_task(self._load(task_id, load_s), name=f"load-{task_id}")
        return self.status

    def unload(self) -> TaskStatus:
        self._cancel_loader()
        self._set(TaskStatus())
        return self.status

    def close(self) -> None:
        """Stop a load in progress (the app is shutting down)."""
        self._cancel_loader()

    async def _load(self, task_id: str, load_s: float) -> None:
        await asyncio.sleep(load_s)
        gpu = self._gpu()
        while gpu.healthy and gpu.hang:  # the weights' copy to HBM stalls with the GPU
            await asyncio.sleep(HANG_POLL_S)
            gpu = self._gpu()
        self._loader = None
        if gpu.healthy:
            self._set(TaskStatus(task_id, "serving"))
            log.info("task %s serving", task_id)
        else:
            self._set(TaskStatus())
            log.warning("task %s failed to load: GPU unavailable", task_id)

    def _cancel_loader(self) -> None:
        if self._loader is not None:
            self._loader.cancel()
            self._loader = None

    def _set(self, status: TaskStatus) -> None:
        self.status = status
        self.metrics.set_task(status.id, status.state == "serving")


# Engine -----------------------------------------------------------------------------------------


class SequenceState:
    """One request inside the engine; its handler sleeps on ``event`` between tokens."""

    __slots__ = (
        "prompt_tokens",
        "max_tokens",
        "arrival",
        "last_token_at",
        "generated",
        "done",
        "error",
        "event",
    )

    def __init__(self, prompt_tokens: int, max_tokens: int, arrival: float) -> None:
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.arrival = arrival
        self.last_token_at = arrival
        self.generated = 0
        self.done = False
        self.error: str | None = None
        self.event = asyncio.Event()


class Engine:
    """The continuous-batching loop: steps, admission, token delivery, and busy accounting."""

    def __init__(
        self, config: BatchingConfig, metrics: WorkerMetrics, seed: int | str | None = None
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.gpu = GpuState()
        self.scheduler: KvScheduler[SequenceState] = KvScheduler(
            config.kv_cache_tokens, config.max_num_seqs
        )
        self.model = LatencyModel(config, seed)
        self._wake = asyncio.Event()
        self._busy_total = 0.0
        self._busy_since: float | None = None

    # Called by handlers.

    def submit(self, prompt_tokens: int, max_tokens: int) -> SequenceState:
        seq = SequenceState(prompt_tokens, max_tokens, time.monotonic())
        self.scheduler.submit(seq, prompt_tokens, max_tokens)
        self._wake.set()
        return seq

    def abort(self, seq: SequenceState, error: str | None = None) -> None:
        """Drop a sequence (client gone, GPU failed) and free its KV reservation at once."""
        if seq.done:
            return
        seq.done = True
        seq.error = error
        self.scheduler.finish(seq)
        self.metrics.request_finished("abort", time.monotonic() - seq.arrival)
        seq.event.set()

    def fail_all(self, error: str) -> None:
        """What a GPU that falls off the bus does to every request it holds."""
        for seq in [*self.scheduler.running, *self.scheduler.waiting]:
            self.abort(seq, error)

    def set_gpu(self, gpu: GpuState) -> None:
        was_healthy = self.gpu.healthy
        self.gpu = gpu
        if was_healthy and not gpu.healthy:
            self.fail_all(f"GPU unavailable (Xid {gpu.xid})" if gpu.xid else "GPU unavailable")
        self._wake.set()

    def busy_seconds(self) -> float:
        """Total time the engine had work, for the GPU-utilisation gauge."""
        since = self._busy_since
        return self._busy_total + (time.monotonic() - since if since is not None else 0.0)

    # The loop.

    async def run(self) -> None:
        sched = self.scheduler
        cfg = self.config
        clock = time.monotonic
        deadline = clock()
        while True:
            if not sched.has_work():
                if self._busy_since is not None:
                    self._busy_total += clock() - self._busy_since
                    self._busy_since = None
                self._wake.clear()
                await self._wake.wait()
                deadline = clock()
                self._busy_since = deadline
            gpu = self.gpu
            if gpu.hang or not gpu.healthy:
                await asyncio.sleep(HANG_POLL_S)
                deadline = clock()
                continue
            sched.capacity_tokens = int(cfg.kv_cache_tokens * gpu.kv_capacity_factor)
            decoding = list(sched.running)
            admitted = sched.admit(cfg.max_num_batched_tokens)
            if not decoding and not admitted:
                # Only waiters that do not fit a shrunk cache: nothing to compute until it grows.
                await asyncio.sleep(HANG_POLL_S)
                deadline = clock()
                continue
            step = self.model.step_seconds(len(decoding), [s.prompt_tokens for s in admitted])
            step *= gpu.slowdown
            now = clock()
            # Steps are scheduled back to back from the previous deadline, so event-loop latency
            # shorter than a step does not stretch the simulated GPU's time.
            start = deadline if now - deadline < step else now
            deadline = start + step
            delay = deadline - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            self._emit_tokens(decoding, admitted, clock())

    def _emit_tokens(
        self, decoding: list[SequenceState], admitted: list[SequenceState], now: float
    ) -> None:
        """Give every sequence in the step its next token and wake its handler."""
        itl = self.metrics.itl.observe
        finish = self.scheduler.finish
        finished_reason = self.metrics.request_finished
        tokens = 0
        for seq in decoding:
            if seq.done:
                continue
            itl(now - seq.last_token_at)
            seq.last_token_at = now
            seq.generated += 1
            tokens += 1
            if seq.generated >= seq.max_tokens:
                seq.done = True
                finish(seq)
                finished_reason("length", now - seq.arrival)
            seq.event.set()
        prompt_tokens = 0
        for seq in admitted:
            if seq.done:
                continue
            self.metrics.ttft.observe(now - seq.arrival)
            prompt_tokens += seq.prompt_tokens
            seq.last_token_at = now
            seq.generated = 1
            tokens += 1
            if seq.max_tokens <= 1:
                seq.done = True
                finish(seq)
                finished_reason("length", now - seq.arrival)
            seq.event.set()
        if prompt_tokens:
            self.metrics.prompt_tokens.inc(prompt_tokens)
        if tokens:
            self.metrics.generation_tokens.inc(tokens)


# Wire format ------------------------------------------------------------------------------------

_VOCAB = (
    "the", "cluster", "serves", "tokens", "while", "a", "GPU", "fails", "and", "the", "gateway",
    "retries", "on", "another", "worker", "so", "users", "never", "notice", "that", "leader",
    "changed", "in", "time", "cache", "blocks", "are", "freed", "when", "streams", "end", "fast",
)  # fmt: skip
_CONTENT_PIECES = tuple(b'"content":' + json.dumps(" " + w).encode() for w in _VOCAB)
_REASONING_PIECES = tuple(b'"reasoning_content":' + json.dumps(" " + w).encode() for w in _VOCAB)


class ChunkWriter:
    """Pre-rendered SSE chunk bytes for one request: per token only two joins, no json.dumps."""

    def __init__(
        self, request_id: str, model: str, req: ChatRequest, reasoning_tokens: int, offset: int
    ) -> None:
        self.request_id = request_id
        self.model = model
        self.created = int(time.time())
        self.req = req
        self.reasoning = min(reasoning_tokens, req.max_tokens)
        self.offset = offset
        head = (
            f'data: {{"id":"{request_id}","object":"chat.completion.chunk",'
            f'"created":{self.created},"model":{json.dumps(model)},'
            '"choices":[{"index":0,"delta":{'
        )
        usage = ',"usage":null' if req.include_usage else ""
        self._head = head.encode()
        self._tail = f'}},"logprobs":null,"finish_reason":null}}]{usage}}}\n\n'.encode()
        self._last_tail = f'}},"logprobs":null,"finish_reason":"length"}}]{usage}}}\n\n'.encode()
        self.role_chunk = self._head + b'"role":"assistant","content":""' + self._tail

    def token_piece(self, index: int) -> bytes:
        word = (self.offset + index) % len(_VOCAB)
        return (_REASONING_PIECES if index < self.reasoning else _CONTENT_PIECES)[word]

    def token_chunk(self, index: int) -> bytes:
        tail = self._last_tail if index == self.req.max_tokens - 1 else self._tail
        return b"".join((self._head, self.token_piece(index), tail))

    def usage(self) -> dict[str, int]:
        prompt, completion = self.req.prompt_tokens, self.req.max_tokens
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def usage_chunk(self) -> bytes:
        chunk = {
            "id": self.request_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": self.usage(),
        }
        return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"

    def completion(self) -> dict[str, Any]:
        """The non-streaming ``chat.completion`` object."""
        words = [" " + _VOCAB[(self.offset + i) % len(_VOCAB)] for i in range(self.req.max_tokens)]
        message: dict[str, Any] = {"role": "assistant", "content": "".join(words[self.reasoning :])}
        if self.reasoning:
            message["reasoning_content"] = "".join(words[: self.reasoning])
        return {
            "id": self.request_id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": "length"}
            ],
            "usage": self.usage(),
        }


def _error_event(message: str) -> bytes:
    body = RequestError(message, status=503).body()
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


# HTTP -------------------------------------------------------------------------------------------


@dataclass
class _UtilWindow:
    """Busy share between scrapes, as DCGM samples utilisation over an interval."""

    at: float
    busy: float
    value: float = 0.0


class WorkerApp:
    """The HTTP face of one worker: routes, handlers and scrape-time metric refresh."""

    def __init__(self, name: str, node: str, gpu: str, model: str, config: BatchingConfig) -> None:
        self.name = name
        self.node = node
        self.gpu_index = gpu
        self.model = model
        self.config = config
        self.metrics = WorkerMetrics(model, node, gpu)
        self.engine: Engine | None = None
        self.task = TaskSlot(self.metrics, lambda: self._engine().gpu)
        self._counter = 0
        self._id_prefix = os.urandom(4).hex()
        self._util = _UtilWindow(time.monotonic(), 0.0)

    def build(self) -> web.Application:
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.cleanup_ctx.append(self._engine_lifetime)
        app.on_shutdown.append(self._abort_on_shutdown)
        app.on_response_prepare.append(self._served_by)
        app.router.add_post(CHAT_PATH, self.chat_completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics_handler)
        app.router.add_get("/fault", self.get_fault)
        app.router.add_put("/fault", self.put_fault)
        app.router.add_delete("/fault", self.delete_fault)
        app.router.add_get("/task", self.get_task)
        app.router.add_put("/task", self.put_task)
        app.router.add_delete("/task", self.delete_task)
        return app

    async def _engine_lifetime(self, app: web.Application) -> AsyncIterator[None]:
        self.engine = Engine(self.config, self.metrics, seed=f"{self.config.seed}:{self.name}")
        task = asyncio.create_task(self.engine.run(), name=f"engine-{self.name}")
        yield
        self.task.close()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    async def _abort_on_shutdown(self, app: web.Application) -> None:
        """End every stream with an error at SIGTERM, so shutdown never waits for them."""
        if self.engine is not None:
            self.engine.fail_all("worker shutting down")

    async def _served_by(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers["x-served-by"] = self.name
        if request.path == CHAT_PATH:
            response.headers["x-task"] = self.task.status.id or ""

    def _engine(self) -> Engine:
        if self.engine is None:
            raise web.HTTPServiceUnavailable(text="engine not started")
        return self.engine

    # Inference.

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        engine = self._engine()
        raw = await request.read()
        # Checked after the last await, like the GPU below: no request slips into a load.
        if self.task.loading:
            return web.json_response({"error": "model loading"}, status=503)
        try:
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise RequestError(f"request body is not valid JSON: {exc}") from None
            req = parse_chat_request(body, self.config)
            # Checked after the last await, so no request slips into a GPU that just failed.
            if not engine.gpu.healthy:
                raise RequestError("GPU unavailable", status=503)
        except RequestError as exc:
            return web.json_response(exc.body(), status=exc.status)

        self._counter += 1
        writer = ChunkWriter(
            f"chatcmpl-{self._id_prefix}{self._counter:08x}",
            self.model,
            req,
            self.config.reasoning_tokens,
            offset=self._counter * 7,
        )
        seq = engine.submit(req.prompt_tokens, req.max_tokens)
        try:
            if req.stream:
                return await self._stream(request, seq, writer)
            return await self._complete(seq, writer)
        finally:
            # Client gone (handler cancelled or write failed): the KV reservation goes back now.
            engine.abort(seq)

    async def _stream(
        self, request: web.Request, seq: SequenceState, writer: ChunkWriter
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        _set_nodelay(request)
        sent = 0
        event = seq.event
        try:
            while True:
                await event.wait()
                event.clear()
                generated = seq.generated
                if sent < generated:
                    parts = [writer.role_chunk] if sent == 0 else []
                    while sent < generated:
                        parts.append(writer.token_chunk(sent))
                        sent += 1
                    await resp.write(b"".join(parts))
                if seq.error is not None:
                    # vLLM sends an error event; we also end without [DONE], as a dying server
                    # would, so no client mistakes the cut-off stream for a complete one.
                    await resp.write(_error_event(seq.error))
                    break
                if seq.done and sent >= seq.max_tokens:
                    tail = writer.usage_chunk() if writer.req.include_usage else b""
                    await resp.write(tail + b"data: [DONE]\n\n")
                    break
            await resp.write_eof()
        except ConnectionResetError:
            pass  # the client left; the caller frees the sequence
        return resp

    async def _complete(self, seq: SequenceState, writer: ChunkWriter) -> web.Response:
        while not seq.done:
            await seq.event.wait()
            seq.event.clear()
        if seq.error is not None:
            err = RequestError(seq.error, status=503)
            return web.json_response(err.body(), status=err.status)
        return web.json_response(writer.completion())

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {
                        "id": self.model,
                        "object": "model",
                        "created": int(time.time()),
                        "owned_by": "inference-chaos",
                        "root": self.model,
                        "max_model_len": self.config.max_model_len,
                    }
                ],
            }
        )

    # Operations.

    async def health(self, request: web.Request) -> web.Response:
        gpu = self._engine().gpu
        body = {
            "status": "ok" if gpu.healthy else "unhealthy",
            "name": self.name,
            "node": self.node,
            "gpu": self.gpu_index,
            "model": self.model,
        }
        if not gpu.healthy:
            body["xid"] = gpu.xid
        return web.json_response(body, status=200 if gpu.healthy else 503)

    async def metrics_handler(self, request: web.Request) -> web.Response:
        self._refresh_gauges()
        return web.Response(
            body=self.metrics.render(), headers={"Content-Type": METRICS_CONTENT_TYPE}
        )

    def _refresh_gauges(self) -> None:
        engine = self._engine()
        sched = engine.scheduler
        self.metrics.set_scheduler(sched.num_running, sched.num_waiting, sched.usage)
        now, busy = time.monotonic(), engine.busy_seconds()
        window = self._util
        if now - window.at >= 0.25:  # shorter windows are noise; reuse the last value
            window.value = min(1.0, (busy - window.busy) / (now - window.at))
            window.at, window.busy = now, busy
        util = window.value
        gpu = engine.gpu
        fb_used = (
            gpu.fb_used_mib
            if gpu.fb_used_mib is not None
            else GPU_MEMORY_UTILIZATION * gpu.fb_total_mib
        )
        temperature = (
            gpu.temperature_c
            if gpu.temperature_c is not None
            else IDLE_TEMP_C + (BUSY_TEMP_C - IDLE_TEMP_C) * util
        )
        clock_share = gpu.sm_clock_mhz / MAX_SM_CLOCK_MHZ
        self.metrics.set_gpu(
            util_percent=100.0 * util,
            fb_used_mib=fb_used,
            fb_total_mib=gpu.fb_total_mib,
            temperature_c=temperature,
            sm_clock_mhz=gpu.sm_clock_mhz,
            xid=gpu.xid,
            ecc_dbe=gpu.ecc_dbe_volatile,
            ecc_sbe=gpu.ecc_sbe_volatile,
            power_w=IDLE_POWER_W + (MAX_POWER_W - IDLE_POWER_W) * util * min(1.0, clock_share),
        )

    async def get_fault(self, request: web.Request) -> web.Response:
        return web.json_response(self._engine().gpu.to_json())

    async def put_fault(self, request: web.Request) -> web.Response:
        engine = self._engine()
        try:
            changes = await request.json()
            new_state = engine.gpu.updated(changes)
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
            return web.json_response(RequestError(str(exc)).body(), status=400)
        engine.set_gpu(new_state)
        if changes.get("xid") in CONTEXT_KILLING_XIDS:  # the PUT reports the Xid event itself
            engine.fail_all(f"CUDA error: contexts lost (Xid {changes['xid']})")
        log.warning("worker %s GPU state changed: %s", self.name, changes)
        return web.json_response(new_state.to_json())

    async def delete_fault(self, request: web.Request) -> web.Response:
        engine = self._engine()
        engine.set_gpu(GpuState())
        log.warning("worker %s GPU state reset to healthy", self.name)
        return web.json_response(engine.gpu.to_json())

    # Tasks.

    async def get_task(self, request: web.Request) -> web.Response:
        return web.json_response(self.task.status.to_json())

    async def put_task(self, request: web.Request) -> web.Response:
        engine = self._engine()
        try:
            body = json.loads(await request.read())
            task_id, load_s = parse_task_request(body, self.config.model_load_s)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return web.json_response({"error": f"the body is not valid JSON: {exc}"}, status=400)
        except RequestError as exc:
            return web.json_response({"error": str(exc)}, status=exc.status)
        gpu = engine.gpu
        if not gpu.healthy:
            return web.json_response({"error": "GPU unavailable", "xid": gpu.xid}, status=503)
        status = self.task.load(task_id, load_s)
        log.info("worker %s loading task %s (%.3f s)", self.name, task_id, load_s)
        return web.json_response(status.to_json(), status=202)

    async def delete_task(self, request: web.Request) -> web.Response:
        previous = self.task.status.id
        status = self.task.unload()
        log.info("worker %s unloaded task %s", self.name, previous)
        return web.json_response(status.to_json())


def _set_nodelay(request: web.Request) -> None:
    """Make sure each SSE chunk leaves at once; aiohttp sets this too, but timing depends on it."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def create_app(
    name: str,
    node: str = "node-0",
    gpu: str = "0",
    model: str = DEFAULT_MODEL,
    config: BatchingConfig | None = None,
) -> web.Application:
    """The worker's aiohttp application (the engine starts with the app)."""
    return WorkerApp(name, node, gpu, model, config or BatchingConfig()).build()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m resilience.worker", description="Simulated GPU inference worker."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--gpu", required=True)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--config", default=None, help="JSON object overriding BatchingConfig")
    args = parser.parse_args(argv)
    try:
        args.config = BatchingConfig.from_json(json.loads(args.config) if args.config else None)
    except (json.JSONDecodeError, ValueError, TypeError) as exc:
        parser.error(f"--config: {exc}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    app = create_app(args.name, args.node, args.gpu, args.model, args.config)
    log.info("worker %s (%s gpu %s) on %s:%d", args.name, args.node, args.gpu, args.host, args.port)
    web.run_app(
        app,
        host=args.host,
        port=args.port,
        access_log=None,  # no per-request logging: eight workers share two cores
        print=None,
        handler_cancellation=True,  # a client that disconnects frees its KV slot at once
        shutdown_timeout=1.0,
    )


if __name__ == "__main__":
    sys.exit(main())
