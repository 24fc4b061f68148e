"""Keys searched in worker processes, with a shared flag that stops every worker.

The search is pure Python and CPU-bound, so threads would not help: each worker process
interleaves its share of keys, stops at the deadline, and sets the shared flag when it finds
a violation so that the others (and the parent) stop at their next slice.
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import multiprocessing
import threading
import time
from typing import Any

from probes.linearizability.history import Operation
from probes.linearizability.interleave import Interleaver
from probes.linearizability.models import Model
from probes.linearizability.search import StopFlag
from probes.linearizability.verdict import KeyResult

__all__ = ["KeyPool"]

_STOP: StopFlag | None = None  # the shared flag, set in each worker by _init_worker


def _init_worker(stop: StopFlag) -> None:
    global _STOP
    _STOP = stop


def _search_share(
    parts: dict[Any, list[Operation]], model: Model, deadline_epoch: float, max_states: int
) -> dict[Any, KeyResult]:
    """Run in a worker. The deadline crosses processes as wall-clock time and becomes this
    process's monotonic time at once, so a clock step later cannot move it."""
    deadline = (
        math.inf if math.isinf(deadline_epoch) else time.monotonic() + deadline_epoch - time.time()
    )
    here = Interleaver(parts, model, max_states)
    ended = here.run(deadline, _STOP)
    if ended == "illegal" and _STOP is not None:
        _STOP.set()
    here.abandon_all(here.why(ended))
    return here.results


def _context() -> multiprocessing.context.BaseContext:
    """fork when this process runs one thread: the cheapest start, and safe then. With other
    threads (Chaos Toolkit, httpx), a forked child can inherit a lock held mid-operation and
    hang, so forkserver then (spawn where there is none). Those two import the parent's main
    module in each worker: scripts that check histories need the `__main__` guard."""
    methods = multiprocessing.get_all_start_methods()
    if threading.active_count() == 1 and "fork" in methods:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


class KeyPool:
    """One task per share of keys on a process pool; `is_set()` is the shared stop flag."""

    def __init__(
        self,
        shares: list[dict[Any, list[Operation]]],
        model: Model,
        deadline: float,
        max_states: int,
    ) -> None:
        ctx = _context()
        self._stop = ctx.Event()
        self._keys = {key: len(ops) for share in shares for key, ops in share.items()}
        epoch = math.inf if math.isinf(deadline) else time.time() + deadline - time.monotonic()
        self._pool = cf.ProcessPoolExecutor(
            len(shares), mp_context=ctx, initializer=_init_worker, initargs=(self._stop,)
        )
        self._futures = [
            self._pool.submit(_search_share, share, model, epoch, max_states) for share in shares
        ]

    def is_set(self) -> bool:
        """True once any worker found a violation (or `stop()` was called)."""
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()

    def results(self) -> dict[Any, KeyResult]:
        """Wait for every share (workers stop by themselves at the deadline or the flag),
        then shut the pool down. A worker that died leaves its keys unknown."""
        results: dict[Any, KeyResult] = {}
        try:
            for future in cf.as_completed(self._futures):
                try:
                    results.update(future.result())
                except cf.process.BrokenProcessPool as exc:
                    self._stop.set()
                    lost = f"worker process died: {exc}"
                    for key, size in self._keys.items():
                        results.setdefault(key, KeyResult(key, "unknown", size, reason=lost))
                    break
        finally:
            self._stop.set()
            self._pool.shutdown(wait=True, cancel_futures=True)
        return results
