"""Record a client history against a Raft store, for the linearizability checker to judge.

Jepsen's way: N clients, each with at most one operation in flight, each operation a plain
record with its call and return times. An operation that times out may still take effect later,
so it is recorded `unknown` with no return time and stays pending to the end of the history;
its client then takes a NEW process id (the old process is, as far as the history knows, still
waiting for that answer), so no process ever has two operations open at once. A definite error
(refused before sending, 4xx, "no leader") is `fail`. Every written value is unique
(f"{process}-{n}") so a read names the write it saw.

Keys get a fresh prefix per recorder: the history starts from "every key absent", which is what
the checker assumes. One JSON object per line, in the docs/internals.md "Histories" format;
`call` and `return` are `time.monotonic()` seconds, and a sidecar `<name>.meta.json` holds the
offset to Unix time so a report can lay the history beside other timelines.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from probes.raft.background import BackgroundLoop
from probes.raft.clients import OperationFailed, OutcomeUnknown, StoreClient

__all__ = ["DEFAULT_MIX", "HistoryRecorder", "Operation", "fresh_keys", "meta_path_for"]

DEFAULT_MIX: dict[str, float] = {"read": 0.4, "write": 0.4, "cas": 0.2}
OP_KINDS = ("read", "write", "cas", "delete")
GUARD_S = 0.5  # beyond the client's own timeout, in case a client forgets to enforce it
STOP_SLACK_S = 5.0  # beyond the time operations in flight may take to finish


@dataclass(frozen=True)
class Operation:
    """One history entry; `ret` is None while (forever, for the history) pending."""

    process: int
    op: str
    key: str
    input: Any
    output: Any
    call: float
    ret: float | None
    status: str  # "ok" | "fail" | "unknown"

    def to_json(self) -> dict[str, Any]:
        return {
            "process": self.process,
            "op": self.op,
            "key": self.key,
            "input": self.input,
            "output": self.output,
            "call": self.call,
            "return": self.ret,
            "status": self.status,
        }


def fresh_keys(count: int, prefix: str = "history") -> list[str]:
    """`count` key names no earlier run has used, so every key starts absent."""
    run = uuid.uuid4().hex[:8]
    return [f"{prefix}-{run}-k{i}" for i in range(count)]


def meta_path_for(path: Path) -> Path:
    return path.with_name(path.stem + ".meta.json")


class HistoryRecorder:
    """`clients` concurrent clients doing `mix` of operations on `keys`, written to `path`."""

    def __init__(
        self,
        client: StoreClient,
        path: Path,
        *,
        keys: Sequence[str],
        clients: int = 4,
        op_timeout_s: float = 1.0,
        mix: Mapping[str, float] | None = None,
        think_s: float = 0.0,
        seed: int | None = None,
        meta: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        mix = dict(DEFAULT_MIX if mix is None else mix)
        unknown = set(mix) - set(OP_KINDS)
        if unknown or not any(w > 0 for w in mix.values()):
            raise ValueError(f"mix must weigh some of {OP_KINDS}; got {mix}")
        if not keys or clients < 1:
            raise ValueError("a history needs at least one key and one client")
        self.client = client
        self.path = Path(path)
        self.meta_path = meta_path_for(self.path)
        self.keys = list(keys)
        self.clients = clients
        self.op_timeout_s = op_timeout_s
        self.mix = mix
        self.think_s = think_s
        self.clock = clock
        self.extra_meta = dict(meta or {})
        self.wall_offset_s = time.time() - clock()
        self._rng = random.Random(seed)
        self._process_ids = itertools.count()
        self._last_seen: dict[str, str | None] = {}
        self._ops: list[Operation] = []
        self._lock = threading.Lock()
        self._file: TextIO | None = None
        self._background: BackgroundLoop | None = None
        self._stop: asyncio.Event | None = None
        self._main: Any = None
        self.started_at: float | None = None
        self.stopped_at: float | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> HistoryRecorder:
        if self._background is not None:
            raise RuntimeError("recorder already started")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("w", encoding="utf-8")
        self.started_at = self.clock()
        self._write_meta()
        self._stop = asyncio.Event()
        self._background = BackgroundLoop("raft-history")
        self._main = self._background.run(self._run())
        return self

    def stop(self) -> dict[str, Any]:
        """Stop every client (an operation in flight is cut and recorded unknown); summarise."""
        background, self._background = self._background, None
        if background is not None:
            assert self._stop is not None
            background.loop.call_soon_threadsafe(self._stop.set)
            try:
                self._main.result(self.op_timeout_s + GUARD_S + STOP_SLACK_S)
            finally:
                background.close()
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.stopped_at is None and self.started_at is not None:
            self.stopped_at = self.clock()
            self._write_meta()
        return self.summary()

    def operations(self) -> list[Operation]:
        with self._lock:
            return list(self._ops)

    def summary(self) -> dict[str, Any]:
        ops = self.operations()
        by_op: dict[str, dict[str, int]] = {}
        for o in ops:
            by_op.setdefault(o.op, {"ok": 0, "fail": 0, "unknown": 0})[o.status] += 1
        counts = Counter(o.status for o in ops)
        end = self.stopped_at if self.stopped_at is not None else self.clock()
        return {
            "path": str(self.path),
            "meta_path": str(self.meta_path),
            "operations": len(ops),
            "counts": {s: counts.get(s, 0) for s in ("ok", "fail", "unknown")},
            "by_op": by_op,
            "processes": len({o.process for o in ops}),
            "keys": self.keys,
            "clients": self.clients,
            "duration_s": None if self.started_at is None else round(end - self.started_at, 3),
            "wall_offset_s": self.wall_offset_s,
        }

    def _write_meta(self) -> None:
        meta = {
            "format": "docs/internals.md#histories",
            "clock": "time.monotonic",
            "wall_offset_s": self.wall_offset_s,
            "started": self.started_at,
            "stopped": self.stopped_at,
            "keys": self.keys,
            "clients": self.clients,
            "op_timeout_s": self.op_timeout_s,
            "mix": self.mix,
            "endpoints": list(self.client.endpoints),
            **self.extra_meta,
        }
        self.meta_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    # -- the background work --------------------------------------------------------------

    async def _run(self) -> None:
        assert self._stop is not None
        tasks = [asyncio.create_task(self._client_loop()) for _ in range(self.clients)]
        try:
            await self._stop.wait()
            # Let operations in flight finish (each within its own timeout) rather than cut
            # them: a cut operation is one more pending write for the checker to carry.
            await asyncio.wait(tasks, timeout=self.op_timeout_s + GUARD_S)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.client.aclose()

    def _append(self, op: Operation) -> None:
        with self._lock:
            self._ops.append(op)
            if self._file is not None:
                self._file.write(json.dumps(op.to_json()) + "\n")
                self._file.flush()

    def _choose(self) -> tuple[str, str]:
        kinds = list(self.mix)
        kind = self._rng.choices(kinds, weights=[self.mix[k] for k in kinds])[0]
        return kind, self._rng.choice(self.keys)

    async def _client_loop(self) -> None:
        assert self._stop is not None
        process = next(self._process_ids)
        n = 0
        while not self._stop.is_set():
            kind, key = self._choose()
            n += 1
            op = await self._invoke(process, kind, key, f"{process}-{n}")
            if op.status == "unknown":
                # The old process stays blocked on that answer forever, as far as the history
                # knows; this client carries on under a new identity.
                process, n = next(self._process_ids), 0
            if self.think_s:
                await asyncio.sleep(self.think_s)
            else:
                await asyncio.sleep(0)

    async def _invoke(self, process: int, kind: str, key: str, value: str) -> Operation:
        t = self.op_timeout_s
        inp: Any = None
        if kind == "read":
            call_coro: Any = self.client.get(key, t)
        elif kind == "write":
            inp = value
            call_coro = self.client.put(key, value, t)
        elif kind == "cas":
            expect = self._last_seen.get(key)
            inp = {"expect": expect, "value": value}
            call_coro = self.client.cas(key, expect, value, t)
        else:
            call_coro = self.client.delete(key, t)
        call = self.clock()
        output: Any = None
        try:
            async with asyncio.timeout(t + GUARD_S):
                result = await call_coro
            status = "ok"
        except OperationFailed:
            status = "fail"
        except asyncio.CancelledError:
            # Stopped while in flight: the operation may still happen.
            self._append(Operation(process, kind, key, inp, None, call, None, "unknown"))
            raise
        except (OutcomeUnknown, TimeoutError):
            status = "unknown"
        except Exception:  # noqa: BLE001 - whatever it was, the outcome is not known
            status = "unknown"
        ret = self.clock() if status != "unknown" else None
        if status == "ok":
            output = self._remember(kind, key, value, result)
        op = Operation(process, kind, key, inp, output, call, ret, status)
        self._append(op)
        return op

    def _remember(self, kind: str, key: str, value: str, result: Any) -> Any:
        """The operation's output, and the latest value known for the key (for CAS expects)."""
        if kind == "read":
            self._last_seen[key] = result
            return result
        if kind == "write":
            self._last_seen[key] = value
            return None
        if kind == "cas":
            if result:
                self._last_seen[key] = value
            return bool(result)
        self._last_seen[key] = None
        return None
