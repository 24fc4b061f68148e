"""One Raft replica: roles, timers, elections, replication, commit, ReadIndex, snapshots.

The node is driven from outside and touches no socket: messages arrive through `handle` and
leave through an injected `Transport`; time comes from an injected clock and only advances the
node when `tick` is called (every `tick_interval_s` by `start`, by hand in tests).

What keeps it safe (the Raft paper, and section numbers of Ongaro's thesis):
- term and vote are fsynced before the node acts on them (`_persist`), log entries before the
  node acknowledges them; a leader counts itself toward a commit only up to what it fsynced;
- a leader commits only entries of its own term by counting replicas (5.4.2), and appends a
  no-op when elected so that happens promptly;
- reads are linearizable by ReadIndex (6.4): note the commit index, confirm leadership with a
  round of heartbeats answered by a majority *sent after* the read arrived, wait until applied;
- pre-vote (9.6) keeps a replica that was cut off from raising terms and deposing a healthy
  leader when it returns; with check-quorum a replica that heard from a leader within the
  minimum election timeout refuses votes, and a leader that has not heard from a majority
  within that timeout steps down, so a partitioned leader stops acting as one.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from resilience.raft.config import RaftConfig
from resilience.raft.log import Entry, RaftLog
from resilience.raft.messages import (
    AppendRequest,
    AppendResponse,
    Request,
    Response,
    SnapshotRequest,
    SnapshotResponse,
    VoteRequest,
    VoteResponse,
)
from resilience.raft.persist import (
    HardState,
    Snapshot,
    load_hard_state,
    load_snapshot,
    save_hard_state,
    save_snapshot,
)

__all__ = [
    "NodeStats",
    "NotLeader",
    "ProposalDropped",
    "ProposalTimeout",
    "RaftNode",
    "ReadTimeout",
    "Role",
    "StateMachine",
    "Transport",
]

log = logging.getLogger("resilience.raft.node")

STALL_SLACK_S = 0.03  # a tick later than this means the process itself was held up


class Role(StrEnum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


class NotLeader(Exception):
    """This replica cannot serve the request; `leader_url` says where to go, None if unknown."""

    def __init__(self, leader_id: int | None, leader_url: str | None) -> None:
        super().__init__(f"not leader (leader: {leader_id})")
        self.leader_id = leader_id
        self.leader_url = leader_url


class ProposalTimeout(Exception):
    """Not applied within the deadline: the write may still commit later (outcome unknown)."""


class ProposalDropped(Exception):
    """Another entry was committed at the proposal's index: it will never take effect."""


class ReadTimeout(Exception):
    """Leadership could not be confirmed, or the store not caught up, within the deadline."""


class Transport(Protocol):
    """Delivers one request to a peer; None when it could not (timeout, refused, reset)."""

    async def send(self, peer: int, message: Request) -> Response | None: ...


class StateMachine(Protocol):
    def apply(self, command: Any, index: int) -> Any: ...
    def snapshot(self) -> dict[str, Any]: ...
    def restore(self, state: dict[str, Any] | None) -> None: ...


@dataclass
class NodeStats:
    """Counters the metrics endpoint exports."""

    leader_changes: int = 0
    proposals_failed: int = 0
    snapshots: int = 0  # taken here
    snapshots_installed: int = 0  # received from a leader


@dataclass
class _ReadWaiter:
    seq: int  # heartbeats numbered at least this were sent after the read arrived
    term: int
    future: asyncio.Future[None]


@dataclass
class _ApplyWaiter:
    index: int
    term: int | None  # fail with NotLeader if leadership of this term ends first
    future: asyncio.Future[None]


class RaftNode:
    """A replica; `peer_ids` are the other replicas (static membership)."""

    def __init__(
        self,
        node_id: int,
        peer_ids: Iterable[int],
        data_dir: Path,
        state_machine: StateMachine,
        transport: Transport,
        config: RaftConfig,
        *,
        client_url: str = "",
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.id = node_id
        self.peers = sorted(set(peer_ids) - {node_id})
        self.quorum = (len(self.peers) + 1) // 2 + 1
        self.config = config
        self.transport = transport
        self.sm = state_machine
        self.clock = clock
        self.client_url = client_url
        self.stats = NodeStats()
        self._rng = rng or random.Random()

        data_dir.mkdir(parents=True, exist_ok=True)
        self._hard_state_path = data_dir / "state.json"
        self._snapshot_path = data_dir / "snapshot.json"
        hard = load_hard_state(self._hard_state_path)
        self.term, self.voted_for = hard.term, hard.voted_for
        self.log = RaftLog(data_dir / "log.bin", fsync=config.fsync)
        self._snapshot = load_snapshot(self._snapshot_path)
        if self.log.base_index > self._snapshot.index:
            raise RuntimeError(f"{data_dir}: the log starts after the snapshot; files are missing")
        if self.log.term_at(self._snapshot.index) != self._snapshot.term:
            self.log.reset(self._snapshot.index, self._snapshot.term)  # crashed mid-install
        self.sm.restore(self._snapshot.state)
        self.commit_index = self.applied_index = self._snapshot.index

        self.role = Role.FOLLOWER
        self.leader_id: int | None = None
        self.leader_url: str | None = None
        self._leader_known = asyncio.Event()
        self._counted_leadership: tuple[int, int] | None = None
        self._last_leader_contact = -math.inf
        self._election_deadline = self.clock() + self._random_timeout()
        self._round = 0  # bumps per campaign so late answers to an old one are ignored
        self._votes: set[int] = set()

        # Leader state, rebuilt on every election won.
        self._next_index: dict[int, int] = {}
        self._match_index: dict[int, int] = {}
        self._ack_time: dict[int, float] = {}  # send time of the latest request a peer answered
        self._acked_seq: dict[int, int] = {}
        self._last_send: dict[int, float] = {}
        self._kick: dict[int, asyncio.Event] = {}
        self._flush_kick = asyncio.Event()
        self._seq = 0
        self._noop_index = 0

        self._proposals: dict[int, list[tuple[int, asyncio.Future[Any]]]] = {}
        self._read_waiters: list[_ReadWaiter] = []
        self._apply_waiters: list[_ApplyWaiter] = []
        self._disk_lock = asyncio.Lock()  # log mutations and fsyncs; snapshots write under it
        self._snapshot_lock = asyncio.Lock()  # the snapshot file
        self._snapshotting = False
        self._tasks: set[asyncio.Task[Any]] = set()

    # Public view ----------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self.role is Role.LEADER

    @property
    def leader_ready(self) -> bool:
        """Leader whose no-op is applied: its store holds every write acknowledged before it."""
        return self.role is Role.LEADER and self.applied_index >= self._noop_index

    @property
    def snapshot_index(self) -> int:
        return self._snapshot.index

    def status(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "role": self.role.value,
            "leader": self.leader_id,
            "leader_url": self.leader_url,
            "term": self.term,
            "commit_index": self.commit_index,
            "applied_index": self.applied_index,
            "last_index": self.log.last_index,
            "snapshot_index": self._snapshot.index,
        }

    async def wait_for_leader(self, timeout: float) -> bool:
        """Wait until some replica is known to lead; False if none within `timeout`."""
        try:
            async with asyncio.timeout(timeout):
                await self._leader_known.wait()
        except TimeoutError:
            return False
        return True

    # Lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Run the timers on the real clock."""
        self._spawn(self._run_ticker())

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.log.close()

    async def _run_ticker(self) -> None:
        interval = self.config.tick_interval_s
        last, deferred = self.clock(), False
        while True:
            await asyncio.sleep(interval)
            now = self.clock()
            # Defer judging by one tick at most, so a process that is always late still acts.
            deferred = not deferred and now - last > interval + STALL_SLACK_S
            self.tick(stalled=deferred)
            last = now

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("raft task failed", exc_info=task.exception())

    # Timers ---------------------------------------------------------------------------------

    def tick(self, stalled: bool = False) -> None:
        """Act on whatever time says: heartbeats and check-quorum, or an election.

        `stalled` says this process itself was not running for a while (an overloaded CPU, a
        SIGSTOP): messages that arrived meanwhile are still unread, so silence proves nothing
        yet and the judgments wait for the next tick.
        """
        now = self.clock()
        if self.role is Role.LEADER:
            if self.config.check_quorum and not stalled and self.peers:
                silent_for = now - self._quorum_contact(now)
                if silent_for >= self.config.election_timeout_min_s:
                    log.warning(
                        "node %d: no majority heard for %.3fs; stepping down", self.id, silent_for
                    )
                    self._become_follower(self.term)
                    return
            for peer in self.peers:
                if now - self._last_send[peer] >= self.config.heartbeat_interval_s:
                    self._kick[peer].set()
        elif now >= self._election_deadline and not stalled:
            if self.config.pre_vote:
                self._start_pre_vote()
            else:
                self._start_election()

    def _random_timeout(self) -> float:
        return self._rng.uniform(
            self.config.election_timeout_min_s, self.config.election_timeout_max_s
        )

    def _reset_election_timer(self) -> None:
        self._election_deadline = self.clock() + self._random_timeout()

    def _quorum_contact(self, now: float) -> float:
        """The latest time by which a majority (this leader included) had answered it."""
        times = sorted([now, *(self._ack_time[p] for p in self.peers)], reverse=True)
        return times[self.quorum - 1]

    def _in_lease(self, now: float) -> bool:
        """A leader is believed alive: votes are refused so a returning replica cannot depose it."""
        if not self.config.check_quorum:
            return False
        if self.role is Role.LEADER:
            return True
        return (
            self.leader_id is not None
            and now - self._last_leader_contact < self.config.election_timeout_min_s
        )

    # Terms and roles ------------------------------------------------------------------------

    def _persist(self, term: int, voted_for: int | None) -> None:
        """Durably record term and vote *before* they take effect."""
        save_hard_state(self._hard_state_path, HardState(term, voted_for), fsync=self.config.fsync)
        self.term, self.voted_for = term, voted_for

    def _set_leader(self, leader_id: int | None, leader_url: str | None) -> None:
        self.leader_id, self.leader_url = leader_id, leader_url
        if leader_id is None:
            self._leader_known.clear()
            return
        self._leader_known.set()
        if self._counted_leadership != (leader_id, self.term):
            self._counted_leadership = (leader_id, self.term)
            self.stats.leader_changes += 1

    def _become_follower(
        self, term: int, leader_id: int | None = None, url: str | None = None
    ) -> None:
        was_leader = self.role is Role.LEADER
        if term > self.term:
            self._persist(term, None)
        self.role = Role.FOLLOWER
        self._set_leader(leader_id, url)
        self._reset_election_timer()
        if was_leader:
            self._end_leadership()

    def _end_leadership(self) -> None:
        """Wake the leader's tasks so they exit; fail reads that needed this leadership."""
        for kick in self._kick.values():
            kick.set()
        self._flush_kick.set()
        error = NotLeader(self.leader_id, self.leader_url)
        for waiter in self._read_waiters:
            if not waiter.future.done():
                waiter.future.set_exception(error)
        self._read_waiters.clear()
        for waiter in [w for w in self._apply_waiters if w.term is not None]:
            if not waiter.future.done():
                waiter.future.set_exception(error)
            self._apply_waiters.remove(waiter)

    def _leads(self, term: int) -> bool:
        return self.role is Role.LEADER and self.term == term

    # Elections ------------------------------------------------------------------------------

    def _start_pre_vote(self) -> None:
        """Ask whether an election could be won before raising the term (thesis 9.6)."""
        self.role = Role.PRE_CANDIDATE
        self._set_leader(None, None)
        self._reset_election_timer()
        self._round += 1
        self._votes = {self.id}
        if len(self._votes) >= self.quorum:
            self._start_election()
            return
        request = VoteRequest(
            self.term + 1, self.id, self.log.last_index, self.log.last_term, pre_vote=True
        )
        for peer in self.peers:
            self._spawn(self._ask_vote(peer, request, self._round))

    def _start_election(self) -> None:
        self._persist(self.term + 1, self.id)
        self.role = Role.CANDIDATE
        self._set_leader(None, None)
        self._reset_election_timer()
        self._round += 1
        self._votes = {self.id}
        log.info("node %d: campaigning in term %d", self.id, self.term)
        if len(self._votes) >= self.quorum:
            self._become_leader()
            return
        request = VoteRequest(self.term, self.id, self.log.last_index, self.log.last_term)
        for peer in self.peers:
            self._spawn(self._ask_vote(peer, request, self._round))

    async def _ask_vote(self, peer: int, request: VoteRequest, round_: int) -> None:
        response = await self.transport.send(peer, request)
        if not isinstance(response, VoteResponse) or round_ != self._round:
            return
        if request.pre_vote:
            if self.role is not Role.PRE_CANDIDATE:
                return
            if response.granted:
                self._votes.add(peer)
                if len(self._votes) >= self.quorum:
                    self._start_election()
            elif response.term > self.term:
                self._become_follower(response.term)
            return
        if response.term > self.term:
            self._become_follower(response.term)
            return
        if self.role is Role.CANDIDATE and response.granted and response.term == self.term:
            self._votes.add(peer)
            if len(self._votes) >= self.quorum:
                self._become_leader()

    def _become_leader(self) -> None:
        log.info("node %d: leader of term %d", self.id, self.term)
        self.role = Role.LEADER
        self._set_leader(self.id, self.client_url)
        now = self.clock()
        for peer in self.peers:
            self._next_index[peer] = self.log.last_index + 1
            self._match_index[peer] = 0
            self._ack_time[peer] = now  # check-quorum gives a new leader one timeout of grace
            self._acked_seq[peer] = 0
            self._last_send[peer] = -math.inf
            self._kick[peer] = asyncio.Event()
        self._flush_kick = asyncio.Event()
        self._noop_index = self.log.last_index + 1
        self.log.append([Entry(self._noop_index, self.term, None)])
        self._spawn(self._flush_loop(self.term))
        for peer in self.peers:
            self._spawn(self._replicate(peer, self.term))
        self._wake_replication()

    def handle_vote(self, request: VoteRequest) -> VoteResponse:
        now = self.clock()
        up_to_date = (request.last_log_term, request.last_log_index) >= (
            self.log.last_term,
            self.log.last_index,
        )
        in_lease = self._in_lease(now)
        if request.pre_vote:  # answers only; changes nothing here
            granted = request.term > self.term and up_to_date and not in_lease
            return VoteResponse(request.term if granted else self.term, granted)
        if request.term < self.term or in_lease:
            return VoteResponse(self.term, False)
        if request.term > self.term:
            self._become_follower(request.term)
        if self.voted_for in (None, request.candidate_id) and up_to_date:
            if self.voted_for is None:
                self._persist(self.term, request.candidate_id)
            self._reset_election_timer()
            return VoteResponse(self.term, True)
        return VoteResponse(self.term, False)

    # Replication (leader) -------------------------------------------------------------------

    def _wake_replication(self) -> None:
        self._flush_kick.set()
        for kick in self._kick.values():
            kick.set()

    async def _flush_loop(self, term: int) -> None:
        """fsync the leader's own appends in batches; the leader counts only what is durable."""
        kick = self._flush_kick
        while self._leads(term):
            await kick.wait()
            kick.clear()
            if not self._leads(term):
                return
            async with self._disk_lock:
                target = self.log.last_index
                if target > self.log.durable_index:
                    if self.config.fsync:
                        await asyncio.to_thread(self.log.sync)
                    self.log.mark_durable(target)
            self._advance_commit()

    async def _replicate(self, peer: int, term: int) -> None:
        """One request in flight per peer; whatever piles up meanwhile goes in the next one."""
        kick = self._kick[peer]
        while self._leads(term):
            await kick.wait()
            kick.clear()
            if not self._leads(term):
                return
            self._seq += 1
            seq, sent_at = self._seq, self.clock()
            self._last_send[peer] = sent_at
            next_index = self._next_index[peer]
            if next_index <= self.log.base_index:
                await self._send_snapshot(peer, term, seq, sent_at)
                continue
            prev = next_index - 1
            request = AppendRequest(
                term=term,
                leader_id=self.id,
                leader_url=self.client_url,
                prev_log_index=prev,
                prev_log_term=self.log.term_at(prev) or 0,
                entries=tuple(self.log.slice(next_index, self.config.max_entries_per_append)),
                leader_commit=self.commit_index,
            )
            response = await self.transport.send(peer, request)
            if not self._leads(term) or not isinstance(response, AppendResponse):
                continue  # unreachable: the next heartbeat tick retries
            if response.term > self.term:
                self._become_follower(response.term)
                return
            self._note_ack(peer, seq, sent_at)
            if response.success:
                self._match_index[peer] = max(self._match_index[peer], response.match_index)
                self._next_index[peer] = max(next_index, self._match_index[peer] + 1)
                self._advance_commit()
            else:
                hint = response.conflict_index or prev
                self._next_index[peer] = max(self._match_index[peer] + 1, min(hint, prev))
            if self._next_index[peer] <= self.log.last_index:
                kick.set()

    async def _send_snapshot(self, peer: int, term: int, seq: int, sent_at: float) -> None:
        snapshot = self._snapshot
        log.info("node %d: sending snapshot at %d to node %d", self.id, snapshot.index, peer)
        request = SnapshotRequest(
            term, self.id, self.client_url, snapshot.index, snapshot.term, snapshot.state
        )
        response = await self.transport.send(peer, request)
        if not self._leads(term) or not isinstance(response, SnapshotResponse):
            return
        if response.term > self.term:
            self._become_follower(response.term)
            return
        self._note_ack(peer, seq, sent_at)
        self._match_index[peer] = max(self._match_index[peer], response.match_index)
        self._next_index[peer] = self._match_index[peer] + 1
        self._advance_commit()
        if self._next_index[peer] <= self.log.last_index:
            self._kick[peer].set()

    def _note_ack(self, peer: int, seq: int, sent_at: float) -> None:
        """A peer answered a request of this term: it still takes this node as leader."""
        self._acked_seq[peer] = max(self._acked_seq[peer], seq)
        self._ack_time[peer] = max(self._ack_time[peer], sent_at)
        still_waiting = []
        for waiter in self._read_waiters:
            acks = 1 + sum(1 for p in self.peers if self._acked_seq[p] >= waiter.seq)
            if acks >= self.quorum:
                if not waiter.future.done():
                    waiter.future.set_result(None)
            else:
                still_waiting.append(waiter)
        self._read_waiters = still_waiting

    def _advance_commit(self) -> None:
        """Commit the highest index held durably by a majority, if it is of this term (5.4.2)."""
        if self.role is not Role.LEADER:
            return
        matches = sorted([self.log.durable_index, *self._match_index.values()], reverse=True)
        candidate = matches[self.quorum - 1]
        if candidate > self.commit_index and self.log.term_at(candidate) == self.term:
            self.commit_index = candidate
            self._apply_committed()

    # Replication (follower) -----------------------------------------------------------------

    def _accept_leader(self, term: int, leader_id: int, leader_url: str) -> None:
        if self.role is Role.LEADER and term == self.term:
            log.error("node %d: two leaders in term %d (%d)", self.id, term, leader_id)
        if term > self.term or self.role is not Role.FOLLOWER:
            self._become_follower(term, leader_id, leader_url)
        else:
            self._set_leader(leader_id, leader_url)
            self._reset_election_timer()
        self._last_leader_contact = self.clock()

    async def handle_append(self, request: AppendRequest) -> AppendResponse:
        async with self._disk_lock:
            if request.term < self.term:
                return AppendResponse(self.term, False)
            self._accept_leader(request.term, request.leader_id, request.leader_url)
            prev, entries = request.prev_log_index, request.entries
            if prev < self.log.base_index:
                # That prefix is in this replica's snapshot: committed, so it matches.
                entries = entries[self.log.base_index - prev :]
            elif prev > self.log.last_index:
                return AppendResponse(self.term, False, conflict_index=self.log.last_index + 1)
            elif self.log.term_at(prev) != request.prev_log_term:
                conflict = self.log.first_index_of_term_at(prev)
                return AppendResponse(self.term, False, conflict_index=conflict)
            self._merge(entries)
            if self.log.durable_index < self.log.last_index:
                # Also entries this replica wrote as leader and never synced before it stepped
                # down: a success reply vouches for every entry up to `match`.
                target = self.log.last_index
                if self.config.fsync:
                    await asyncio.to_thread(self.log.sync)
                self.log.mark_durable(target)
            match = request.prev_log_index + len(request.entries)
            commit = min(request.leader_commit, match)
            if commit > self.commit_index:
                self.commit_index = commit
                self._apply_committed()
            return AppendResponse(self.term, True, match_index=match)

    def _merge(self, entries: tuple[Entry, ...]) -> None:
        """Append what is new, cutting a conflicting suffix first."""
        for position, entry in enumerate(entries):
            held = self.log.term_at(entry.index)
            if held == entry.term:
                continue
            if held is not None:
                if entry.index <= self.commit_index:
                    raise RuntimeError(f"leader overwrites committed entry {entry.index}")
                self.log.truncate_after(entry.index - 1)
            self.log.append(entries[position:])
            return

    async def handle_snapshot(self, request: SnapshotRequest) -> SnapshotResponse:
        async with self._disk_lock:
            if request.term < self.term:
                return SnapshotResponse(self.term)
            self._accept_leader(request.term, request.leader_id, request.leader_url)
            index, term = request.last_included_index, request.last_included_term
            if index <= self.commit_index:
                return SnapshotResponse(self.term, match_index=index)
            snapshot = Snapshot(index, term, request.state)
            async with self._snapshot_lock:
                await asyncio.to_thread(
                    save_snapshot, self._snapshot_path, snapshot, self.config.fsync
                )
                self._snapshot = snapshot
            if self.log.term_at(index) == term:
                self.log.compact(index)
            else:
                self.log.reset(index, term)
            self.sm.restore(request.state)
            self.commit_index = self.applied_index = index
            self.stats.snapshots_installed += 1
            log.info("node %d: installed snapshot at %d", self.id, index)
            self._wake_apply_waiters()
            return SnapshotResponse(self.term, match_index=index)

    async def handle(self, message: Request) -> Response:
        """Dispatch a peer's request to its handler."""
        if isinstance(message, VoteRequest):
            return self.handle_vote(message)
        if isinstance(message, AppendRequest):
            return await self.handle_append(message)
        return await self.handle_snapshot(message)

    # Apply and snapshots --------------------------------------------------------------------

    def _apply_committed(self) -> None:
        while self.applied_index < self.commit_index:
            index = self.applied_index + 1
            entry = self.log.entry(index)
            result = None if entry.command is None else self.sm.apply(entry.command, index)
            self.applied_index = index
            for term, future in self._proposals.pop(index, ()):
                if future.done():
                    continue
                if term == entry.term:
                    future.set_result(result)
                else:
                    future.set_exception(
                        ProposalDropped(f"entry {index} went to term {entry.term}")
                    )
        self._wake_apply_waiters()
        self._maybe_snapshot()

    def _wake_apply_waiters(self) -> None:
        still_waiting = []
        for waiter in self._apply_waiters:
            if waiter.index <= self.applied_index:
                if not waiter.future.done():
                    waiter.future.set_result(None)
            else:
                still_waiting.append(waiter)
        self._apply_waiters = still_waiting

    def _maybe_snapshot(self) -> None:
        if self._snapshotting:
            return
        if self.applied_index - self._snapshot.index < self.config.snapshot_threshold:
            return
        self._snapshotting = True
        term = self.log.term_at(self.applied_index)
        assert term is not None
        snapshot = Snapshot(self.applied_index, term, self.sm.snapshot())
        self._spawn(self._take_snapshot(snapshot))

    async def _take_snapshot(self, snapshot: Snapshot) -> None:
        """Save the store, then drop the log prefix it covers (but a few trailing entries)."""
        try:
            async with self._snapshot_lock:
                if snapshot.index <= self._snapshot.index:
                    return  # a leader's snapshot got here first
                await asyncio.to_thread(
                    save_snapshot, self._snapshot_path, snapshot, self.config.fsync
                )
                self._snapshot = snapshot
            async with self._disk_lock:
                upto = snapshot.index - self.config.snapshot_trailing_entries
                if self.log.term_at(upto) is not None:
                    self.log.compact(upto)
            self.stats.snapshots += 1
            log.info("node %d: snapshot at %d, log from %d", self.id, snapshot.index, upto)
        finally:
            self._snapshotting = False

    # Client operations ----------------------------------------------------------------------

    def _require_leader(self, term: int | None = None) -> None:
        if self.role is not Role.LEADER or (term is not None and term != self.term):
            raise NotLeader(self.leader_id, self.leader_url)

    async def propose(self, command: Any) -> Any:
        """Append `command`, replicate it, and return its result once applied here.

        Raises NotLeader, ProposalTimeout (outcome unknown) or ProposalDropped (never applied).
        """
        self._require_leader()
        entry = Entry(self.log.last_index + 1, self.term, command)
        self.log.append([entry])
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        pending = (entry.term, future)
        self._proposals.setdefault(entry.index, []).append(pending)
        self._wake_replication()
        try:
            return await asyncio.wait_for(future, self.config.write_deadline_s)
        except TimeoutError:
            self.stats.proposals_failed += 1
            raise ProposalTimeout(f"entry {entry.index} not applied in time") from None
        except ProposalDropped:
            self.stats.proposals_failed += 1
            raise
        finally:
            waiting = self._proposals.get(entry.index)
            if waiting and pending in waiting:
                waiting.remove(pending)
                if not waiting:
                    del self._proposals[entry.index]

    async def read_index(self) -> int:
        """Make a linearizable read safe: returns once this store reflects every write
        acknowledged before the call, as confirmed by a majority still following this leader.

        Raises NotLeader (also when deposed meanwhile) or ReadTimeout.
        """
        self._require_leader()
        term = self.term
        try:
            async with asyncio.timeout(self.config.read_deadline_s):
                if self.applied_index < self._noop_index:
                    # Until this term's no-op commits, commit_index may lag what the last
                    # leader acknowledged.
                    await self._wait_applied(self._noop_index, term)
                self._require_leader(term)
                read_index = self.commit_index
                if self.quorum > 1:
                    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                    self._read_waiters.append(_ReadWaiter(self._seq + 1, term, future))
                    for kick in self._kick.values():
                        kick.set()
                    await future
                await self._wait_applied(read_index, None)
        except TimeoutError:
            raise ReadTimeout("leadership not confirmed in time") from None
        return read_index

    async def _wait_applied(self, index: int, term: int | None) -> None:
        if self.applied_index >= index:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = _ApplyWaiter(index, term, future)
        self._apply_waiters.append(waiter)
        try:
            await future
        finally:
            if waiter in self._apply_waiters:
                self._apply_waiters.remove(waiter)
