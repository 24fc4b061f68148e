"""Watch a Raft store from outside while it is being broken, without ever hanging on it.

Every replica's status is polled by a task of its own, a few ms apart, each poll with a short
total timeout: a paused (SIGSTOP) replica costs its own task one timeout per poll and delays
nobody else. Beside the polls one writer keeps writing a counter key, one write at a time, each
with its own timeout (news of a new leader starts the next write without waiting for a stuck
one). Only changes of what a replica says are kept (memory stays small over long
runs, and nothing the judgement needs is lost). `probes.raft.judge` turns the record into a
verdict.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from probes.raft.background import BackgroundLoop
from probes.raft.clients import (
    NotARaftStore,
    OperationFailed,
    OutcomeUnknown,
    StatusUnavailable,
    StoreClient,
)
from probes.raft.judge import StatusSample, WriteSample, judge

__all__ = ["RaftObserver"]

STOP_TIMEOUT_S = 5.0


class RaftObserver:
    """Polls every endpoint and writes through `client`, in a background thread of its own."""

    def __init__(
        self,
        client: StoreClient,
        *,
        poll_interval_s: float = 0.01,
        status_timeout_s: float = 0.2,
        write_timeout_s: float = 0.5,
        write_interval_s: float = 0.01,
        write_key: str = "inference-chaos-observer",
        write: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.endpoints = list(client.endpoints)
        self.poll_interval_s = poll_interval_s
        self.status_timeout_s = status_timeout_s
        self.write_timeout_s = write_timeout_s
        self.write_interval_s = write_interval_s
        self.write_key = write_key
        self.write = write
        self.clock = clock
        # Offset from this process's monotonic clock to Unix time, to align with other timelines.
        self.wall_offset_s = time.time() - clock()
        self.t0: float | None = None
        self.started_at: float | None = None
        self._lock = threading.Lock()
        self._samples: list[StatusSample] = []
        self._latest: dict[str, StatusSample] = {}
        self._writes: list[WriteSample] = []
        self._polls: dict[str, int] = dict.fromkeys(self.endpoints, 0)
        self._not_raft: dict[str, str] = {}
        self._background: BackgroundLoop | None = None
        self._stop: asyncio.Event | None = None
        self._leader_news: asyncio.Event | None = None
        self._main: Any = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> RaftObserver:
        if self._background is not None:
            raise RuntimeError("observer already started")
        self.started_at = self.clock()
        self._background = BackgroundLoop("raft-observer")
        self._stop = asyncio.Event()  # binds to the background loop on first use
        self._leader_news = asyncio.Event()
        self._main = self._background.run(self._run())
        return self

    def stop(self) -> None:
        """Stop polling and writing; the record stays readable."""
        background, self._background = self._background, None
        if background is None:
            return
        if self._stop is not None:
            background.loop.call_soon_threadsafe(self._stop.set)
        try:
            self._main.result(STOP_TIMEOUT_S)
        finally:
            background.close()

    @property
    def running(self) -> bool:
        return self._background is not None

    def mark_fault(self, at: float | None = None) -> float:
        """Remember the fault time t0 (now, on the observer's monotonic clock, unless given)."""
        self.t0 = self.clock() if at is None else at
        return self.t0

    # -- reading the record ---------------------------------------------------------------

    def samples(self) -> list[StatusSample]:
        with self._lock:
            return list(self._samples)

    def writes(self) -> list[WriteSample]:
        with self._lock:
            return list(self._writes)

    def polls(self) -> dict[str, int]:
        with self._lock:
            return dict(self._polls)

    def not_raft(self) -> dict[str, str]:
        """Endpoints that answered, but not as a Raft store: endpoint -> what they said."""
        with self._lock:
            return dict(self._not_raft)

    def report(
        self,
        failover_bound_s: float,
        *,
        write_bound_s: float | None = None,
        expect_new_leader: bool = True,
        t0: float | None = None,
    ) -> dict[str, Any]:
        """Judge what was seen since start against fault time t0 (see `probes.raft.judge`)."""
        t0 = self.t0 if t0 is None else t0
        if t0 is None:
            raise ValueError("no fault time: call mark_fault() or pass t0")
        verdict = judge(
            self.samples(),
            self.writes(),
            t0,
            failover_bound_s=failover_bound_s,
            write_bound_s=write_bound_s,
            expect_new_leader=expect_new_leader,
            applied_term=self.client.applied_term,
            wall_offset_s=self.wall_offset_s,
        )
        verdict["t0"] = t0
        verdict["t0_at"] = round(t0 + self.wall_offset_s, 4)
        verdict["polls"] = self.polls()
        verdict["writes"] = len(self.writes())
        verdict["endpoints"] = self.endpoints
        return verdict

    def wait_for(self, condition: Callable[[], bool], timeout_s: float) -> bool:
        """Poll `condition` (e.g. "a new leader was seen") until true or `timeout_s` passes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.01)
        return condition()

    # -- the background work --------------------------------------------------------------

    async def _run(self) -> None:
        assert self._stop is not None
        tasks = [asyncio.create_task(self._poll(e)) for e in self.endpoints]
        if self.write:
            tasks.append(asyncio.create_task(self._write_loop()))
        try:
            await self._stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.client.aclose()

    def _record(self, sample: StatusSample) -> None:
        with self._lock:
            self._polls[sample.endpoint] += 1
            previous = self._latest.get(sample.endpoint)
            if sample.same_state(previous):
                return
            self._latest[sample.endpoint] = sample
            self._samples.append(sample)
        news = sample.leader is not None and (
            previous is None or (previous.leader, previous.term) != (sample.leader, sample.term)
        )
        if news and self._leader_news is not None:
            if sample.claims_leadership:
                self.client.hint_leader(sample.endpoint)
            self._leader_news.set()

    async def _poll(self, endpoint: str) -> None:
        assert self._stop is not None
        while not self._stop.is_set():
            began = self.clock()
            try:
                st = await self.client.status(endpoint, self.status_timeout_s)
                sample = StatusSample(
                    endpoint=endpoint,
                    at=self.clock(),
                    id=st.id,
                    leader=st.leader,
                    term=st.term,
                    role=st.role,
                )
            except NotARaftStore as exc:
                with self._lock:
                    self._not_raft[endpoint] = str(exc)
                sample = StatusSample(endpoint=endpoint, at=self.clock(), error=str(exc))
            except StatusUnavailable as exc:
                sample = StatusSample(endpoint=endpoint, at=self.clock(), error=str(exc))
            except Exception as exc:  # noqa: BLE001 - one odd answer must not end the watch
                error = f"{type(exc).__name__}: {exc}"
                sample = StatusSample(endpoint=endpoint, at=self.clock(), error=error)
            self._record(sample)
            await asyncio.sleep(max(0.0, self.poll_interval_s - (self.clock() - began)))

    async def _write_loop(self) -> None:
        """One write at a time, except that news of a new leader starts the next write at once.

        A write sent to a replica that lost its leader can sit until its timeout (etcd holds
        it); waiting for that would measure our timeout, not the store. The abandoned write
        still finishes (or times out) on its own and is recorded then.
        """
        assert self._stop is not None and self._leader_news is not None
        n = 0
        in_flight: set[asyncio.Task[None]] = set()
        try:
            while not self._stop.is_set():
                n += 1
                self._leader_news.clear()
                write = asyncio.create_task(self._write_once(str(n)))
                in_flight.add(write)
                write.add_done_callback(in_flight.discard)
                news = asyncio.create_task(self._leader_news.wait())
                await asyncio.wait({write, news}, return_when=asyncio.FIRST_COMPLETED)
                news.cancel()
                await asyncio.sleep(self.write_interval_s)
        finally:
            for task in list(in_flight):
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)

    async def _write_once(self, value: str) -> None:
        call = self.clock()
        term = None
        try:
            ack = await self.client.put(self.write_key, value, self.write_timeout_s)
            status, term = "ok", ack.term
        except OperationFailed:
            status = "fail"
        except (OutcomeUnknown, TimeoutError):
            status = "unknown"
        except Exception:  # noqa: BLE001 - counted as unknown, the writer keeps going
            status = "unknown"
        with self._lock:
            self._writes.append(WriteSample(call, self.clock(), status, term))
