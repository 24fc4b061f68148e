"""One background thread that runs delayed callbacks in order: the fake's controllers.

A single thread keeps the emulated controllers serial (like one reconcile worker), so their
updates to the store never interleave; `stop()` drops whatever has not run yet.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(self) -> None:
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._counter = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="fakekube-controllers", daemon=True)

    def start(self) -> None:
        """Run callbacks from now on (those queued before start run first, when due)."""
        if not self._thread.is_alive() and not self._stopped:
            self._thread.start()

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> None:
        with self._cond:
            if self._stopped:
                return
            due = time.monotonic() + max(0.0, delay_s)
            heapq.heappush(self._queue, (due, next(self._counter), callback))
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._queue.clear()
            self._cond.notify()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    if not self._queue:
                        self._cond.wait()
                        continue
                    wait = self._queue[0][0] - time.monotonic()
                    if wait <= 0:
                        break
                    self._cond.wait(wait)
                if self._stopped:
                    return
                _, _, callback = heapq.heappop(self._queue)
            try:
                callback()
            except Exception:  # a controller bug must not kill every later callback
                log.exception("fakekube controller callback failed")
