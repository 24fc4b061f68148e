"""The Raft node's decisions, driven without sockets: an in-memory network and a fake clock.

Time only moves when a test advances the clock and calls `tick`, so elections happen exactly
where the test says. Messages go through their JSON form, as they would over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from resilience.raft.config import RaftConfig
from resilience.raft.log import Entry
from resilience.raft.messages import (
    AppendRequest,
    AppendResponse,
    Request,
    Response,
    VoteRequest,
    VoteResponse,
    decode_request,
    decode_response,
    encode,
)
from resilience.raft.node import (
    NotLeader,
    ProposalDropped,
    ProposalTimeout,
    RaftNode,
    ReadTimeout,
    Role,
)
from resilience.raft.persist import load_hard_state
from resilience.raft.statemachine import KVStateMachine, put_command

CONFIG = RaftConfig(fsync=False, read_deadline_s=0.3, write_deadline_s=1.0)
HEARTBEAT = CONFIG.heartbeat_interval_s + 0.001  # clear of float rounding at the boundary
BEYOND_ELECTION_TIMEOUT = CONFIG.election_timeout_max_s + 0.01


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Network:
    """Delivers requests between nodes in memory; a cut link loses them (and their answers)."""

    def __init__(self) -> None:
        self.nodes: dict[int, RaftNode] = {}
        self.cut: set[tuple[int, int]] = set()

    def isolate(self, node_id: int) -> None:
        for other in self.nodes:
            if other != node_id:
                self.cut |= {(node_id, other), (other, node_id)}

    def heal(self) -> None:
        self.cut.clear()

    def transport(self, source: int) -> NetworkTransport:
        return NetworkTransport(self, source)


class NetworkTransport:
    def __init__(self, network: Network, source: int) -> None:
        self.network, self.source = network, source

    async def send(self, peer: int, message: Request) -> Response | None:
        if (self.source, peer) in self.network.cut:
            return None
        await asyncio.sleep(0)
        wire = decode_request(json.loads(json.dumps(encode(message))))
        response = await self.network.nodes[peer].handle(wire)
        if (peer, self.source) in self.network.cut:
            return None
        return decode_response(json.loads(json.dumps(encode(response))))


class ScriptedTransport:
    """Answers with whatever the test's function says."""

    def __init__(self, answer: Callable[[int, Request], Response | None]) -> None:
        self.answer = answer
        self.sent: list[tuple[int, Request]] = []

    async def send(self, peer: int, message: Request) -> Response | None:
        self.sent.append((peer, message))
        await asyncio.sleep(0)
        return self.answer(peer, message)


def run(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test on its own event loop (no pytest-asyncio here)."""

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return wrapper


def make_node(
    node_id: int,
    ids: Iterable[int],
    data_dir: Path,
    transport: Any,
    clock: FakeClock,
    config: RaftConfig = CONFIG,
) -> RaftNode:
    return RaftNode(
        node_id,
        ids,
        data_dir,
        KVStateMachine(),
        transport,
        config,
        client_url=f"http://node-{node_id}",
        clock=clock,
        rng=random.Random(node_id),
    )


@contextlib.asynccontextmanager
async def cluster(
    tmp_path: Path, size: int = 3, config: RaftConfig = CONFIG
) -> AsyncIterator[tuple[FakeClock, Network]]:
    clock, network = FakeClock(), Network()
    ids = list(range(1, size + 1))
    for node_id in ids:
        data_dir = tmp_path / f"n{node_id}"
        network.nodes[node_id] = make_node(
            node_id, ids, data_dir, network.transport(node_id), clock, config
        )
    try:
        yield clock, network
    finally:
        for node in network.nodes.values():
            await node.stop()


async def settle() -> None:
    """Let in-flight messages and their answers run to completion."""
    for _ in range(5):
        await asyncio.sleep(0.002)


async def until(check: Callable[[], bool], what: str, timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.001)
    assert check(), what


async def elect(clock: FakeClock, network: Network, leader: int) -> RaftNode:
    """Let `leader`'s election timer run out first; wait until its no-op is committed."""
    clock.advance(BEYOND_ELECTION_TIMEOUT)
    node = network.nodes[leader]
    node.tick()
    await until(lambda: node.leader_ready, f"node {leader} elected and its no-op applied")
    return node


async def heartbeats(clock: FakeClock, network: Network, leader: int, rounds: int = 1) -> None:
    for _ in range(rounds):
        clock.advance(HEARTBEAT)
        network.nodes[leader].tick()
        await settle()


# Elections ------------------------------------------------------------------------------------


@run
async def test_the_first_to_time_out_becomes_leader_of_term_one(tmp_path: Path) -> None:
    async with cluster(tmp_path) as (clock, network):
        leader = await elect(clock, network, 1)
        await heartbeats(clock, network, 1)
        for node in network.nodes.values():
            assert node.term == 1
            assert node.leader_id == 1 and node.leader_url == "http://node-1"
            assert node.log.last_index == 1 and node.log.entry(1).command is None  # the no-op
            assert node.stats.leader_changes == 1
        assert leader.role is Role.LEADER and leader.commit_index == 1
        assert [n.role for n in network.nodes.values()].count(Role.LEADER) == 1
        assert load_hard_state(tmp_path / "n2" / "state.json").voted_for == 1


@run
async def test_a_candidate_with_an_older_log_is_refused(tmp_path: Path) -> None:
    clock = FakeClock()
    node = make_node(1, [1, 2, 3], tmp_path, ScriptedTransport(lambda p, m: None), clock)
    entries = (Entry(1, 1, None), Entry(2, 2, None))
    await node.handle_append(AppendRequest(2, 9, "http://old", 0, 0, entries, 0))
    clock.advance(1.0)  # the old leader is long gone: no lease protects it any more

    older_term = node.handle_vote(VoteRequest(3, 5, last_log_index=9, last_log_term=1))
    assert older_term == VoteResponse(3, False)  # a longer log of an older term loses
    shorter = node.handle_vote(VoteRequest(3, 6, last_log_index=1, last_log_term=2))
    assert shorter.granted is False
    assert node.handle_vote(VoteRequest(3, 7, last_log_index=2, last_log_term=2)).granted
    assert load_hard_state(tmp_path / "state.json").voted_for == 7  # persisted before answering
    # one vote per term, even for a better log
    assert not node.handle_vote(VoteRequest(3, 8, last_log_index=9, last_log_term=3)).granted
    await node.stop()


@run
async def test_pre_vote_does_not_bump_terms(tmp_path: Path) -> None:
    async with cluster(tmp_path) as (clock, network):
        await elect(clock, network, 1)
        await heartbeats(clock, network, 1)
        network.isolate(3)
        for _ in range(10):  # cut off, node 3 keeps timing out while the others carry on
            await heartbeats(clock, network, 1, rounds=7)
            network.nodes[3].tick()
            await settle()
            assert network.nodes[3].role is Role.PRE_CANDIDATE
        assert [n.term for n in network.nodes.values()] == [1, 1, 1]

        # back on the network while node 2 still hears the leader: its pre-vote is refused
        network.heal()
        await heartbeats(clock, network, 1)
        network.nodes[3].tick()  # its election timer already ran out
        await settle()
        assert network.nodes[1].role is Role.LEADER
        assert [n.term for n in network.nodes.values()] == [1, 1, 1]
        await heartbeats(clock, network, 1)
        assert network.nodes[3].role is Role.FOLLOWER and network.nodes[3].leader_id == 1


@run
async def test_a_pre_vote_request_changes_nothing_on_the_receiver(tmp_path: Path) -> None:
    node = make_node(1, [1, 2, 3], tmp_path, ScriptedTransport(lambda p, m: None), FakeClock())
    answer = node.handle_vote(VoteRequest(8, 2, 0, 0, pre_vote=True))
    assert answer == VoteResponse(8, True)
    assert (node.term, node.voted_for) == (0, None)
    assert load_hard_state(tmp_path / "state.json").term == 0
    await node.stop()


@run
async def test_a_leader_steps_down_when_a_peer_answers_with_a_higher_term(tmp_path: Path) -> None:
    async with cluster(tmp_path) as (clock, network):
        leader = await elect(clock, network, 1)
        network.nodes[2]._persist(7, None)  # node 2 lived through elections node 1 missed
        await heartbeats(clock, network, 1)
        assert leader.role is Role.FOLLOWER and leader.term == 7
        assert load_hard_state(tmp_path / "n1" / "state.json").term == 7


@run
async def test_a_leader_steps_down_on_append_entries_of_a_higher_term(tmp_path: Path) -> None:
    async with cluster(tmp_path) as (clock, network):
        leader = await elect(clock, network, 1)
        reply = await leader.handle_append(AppendRequest(5, 2, "http://node-2", 0, 0, (), 0))
        assert reply.term == 5
        assert leader.role is Role.FOLLOWER and leader.leader_id == 2


@run
async def test_check_quorum_deposes_a_leader_cut_off_from_the_majority(tmp_path: Path) -> None:
    async with cluster(tmp_path) as (clock, network):
        leader = await elect(clock, network, 1)
        network.cut |= {(1, 3), (3, 1)}  # one follower lost: the majority still answers
        await heartbeats(clock, network, 1, rounds=6)
        assert leader.role is Role.LEADER

        network.isolate(1)
        await heartbeats(clock, network, 1, rounds=2)
        assert leader.role is Role.LEADER  # not yet an election timeout of silence
        await heartbeats(clock, network, 1, rounds=2)
        assert leader.role is Role.FOLLOWER and leader.term == 1


@run
async def test_commit_counts_replicas_only_for_entries_of_the_current_term(tmp_path: Path) -> None:
    held_by_peers = {"index": 2}  # how far the followers claim to hold the leader's log

    def answer(peer: int, message: Request) -> Response | None:
        if isinstance(message, VoteRequest):
            return VoteResponse(message.term, True)
        if isinstance(message, AppendRequest):
            held = min(held_by_peers["index"], message.prev_log_index + len(message.entries))
            return AppendResponse(message.term, True, match_index=held)
        return None

    clock = FakeClock()
    node = make_node(1, [1, 2, 3], tmp_path, ScriptedTransport(answer), clock)
    # entry 2 of term 2 came from an old leader and was never committed
    entries = (Entry(1, 1, None), Entry(2, 2, put_command("k", "v")))
    await node.handle_append(AppendRequest(2, 3, "http://old", 0, 0, entries, 1))
    assert node.commit_index == 1
    clock.advance(1.0)
    node.tick()
    await until(lambda: node.is_leader, "node 1 elected")
    assert node.term == 3
    await settle()
    # a majority holds entry 2, but it is of term 2: counting replicas must not commit it
    assert node.commit_index == 1 and node.sm.get("k") is None

    held_by_peers["index"] = 3  # now the followers hold this term's no-op too
    clock.advance(HEARTBEAT)
    node.tick()
    await until(lambda: node.commit_index == 3, "the no-op commits, and entry 2 with it")
    assert node.sm.get("k") is not None
    await node.stop()


@run
async def test_five_replicas_commit_with_two_of_them_down(tmp_path: Path) -> None:
    config = RaftConfig(fsync=False, write_deadline_s=0.2)
    async with cluster(tmp_path, size=5, config=config) as (clock, network):
        network.isolate(4)
        network.isolate(5)
        network.cut -= {(4, 5), (5, 4)}
        leader = await elect(clock, network, 1)
        assert leader.quorum == 3
        assert (await leader.propose(put_command("k", "v")))["revision"] == 1
        network.isolate(3)  # the fourth one gone: no majority, no commit
        with pytest.raises(ProposalTimeout):
            await leader.propose(put_command("k", "w"))


# Replication and reads ------------------------------------------------------------------------


@run
async def test_proposals_are_applied_on_every_replica_in_one_order(tmp_path: Path) -> None:
    async with cluster(tmp_path) as (clock, network):
        leader = await elect(clock, network, 1)
        results = await asyncio.gather(
            *(leader.propose(put_command(f"k{i % 3}", str(i))) for i in range(20))
        )
        assert sorted(r["revision"] for r in results) == list(range(1, 21))
        await heartbeats(clock, network, 1)  # carries the commit index to the followers
        stores = [node.sm.snapshot() for node in network.nodes.values()]
        assert stores[0] == stores[1] == stores[2]
        assert stores[0]["revision"] == 20
        assert {n.applied_index for n in network.nodes.values()} == {leader.commit_index}


@run
async def test_a_follower_drops_a_conflicting_suffix_and_hints_where_to_retry(
    tmp_path: Path,
) -> None:
    node = make_node(1, [1, 2, 3], tmp_path, ScriptedTransport(lambda p, m: None), FakeClock())
    old = tuple(Entry(i, 1, put_command("k", f"old{i}")) for i in (1, 2, 3))
    assert (await node.handle_append(AppendRequest(1, 2, "u2", 0, 0, old, 1))).success

    # a new leader's log disagrees from index 2 on; its first probe misses
    miss = await node.handle_append(AppendRequest(2, 3, "u3", 3, 2, (), 1))
    assert not miss.success and miss.conflict_index == 1  # skip all of term 1 at once
    too_far = await node.handle_append(AppendRequest(2, 3, "u3", 7, 2, (), 1))
    assert not too_far.success and too_far.conflict_index == 4

    new = (Entry(2, 2, put_command("k", "new")),)
    reply = await node.handle_append(AppendRequest(2, 3, "u3", 1, 1, new, 2))
    assert reply.success and reply.match_index == 2
    assert [(e.index, e.term) for e in node.log.slice(1, 10)] == [(1, 1), (2, 2)]
    assert node.sm.get("k").value == "new"  # type: ignore[union-attr]
    await node.stop()


@run
async def test_read_index_confirms_leadership_with_a_majority(tmp_path: Path) -> None:
    async with cluster(tmp_path) as (clock, network):
        leader = await elect(clock, network, 1)
        await leader.propose(put_command("k", "v"))
        assert await leader.read_index() == leader.commit_index

        network.isolate(1)  # no majority answers any more: no read may be served
        with pytest.raises(ReadTimeout):
            await leader.read_index()


@run
async def test_a_deposed_leader_never_serves_a_stale_read(tmp_path: Path) -> None:
    async with cluster(tmp_path) as (clock, network):
        old = await elect(clock, network, 1)
        await old.propose(put_command("k", "old"))
        network.isolate(1)  # as if node 1 were paused (SIGSTOP): it never even ticks
        new = await elect(clock, network, 2)
        assert new.term == 2
        await new.propose(put_command("k", "new"))

        network.heal()  # resumed: it still believes it leads term 1
        assert old.role is Role.LEADER and old.sm.get("k").value == "old"  # type: ignore[union-attr]
        with pytest.raises(NotLeader):
            await old.read_index()
        assert old.role is Role.FOLLOWER and old.term == 2


@run
async def test_a_proposal_overwritten_by_a_new_leader_is_reported_dropped(tmp_path: Path) -> None:
    async with cluster(tmp_path) as (clock, network):
        old = await elect(clock, network, 1)
        network.isolate(1)
        doomed = asyncio.create_task(old.propose(put_command("k", "lost")))
        await settle()
        new = await elect(clock, network, 2)  # its no-op takes the doomed entry's index
        await new.propose(put_command("k", "kept"))
        network.heal()
        await heartbeats(clock, network, 2, rounds=2)
        with pytest.raises(ProposalDropped):
            await doomed
        assert old.stats.proposals_failed == 1
        assert old.sm.get("k").value == "kept"  # type: ignore[union-attr]


# Snapshots and restarts -----------------------------------------------------------------------


@run
async def test_a_far_behind_follower_catches_up_by_install_snapshot(tmp_path: Path) -> None:
    config = RaftConfig(fsync=False, snapshot_threshold=5, snapshot_trailing_entries=0)
    async with cluster(tmp_path, config=config) as (clock, network):
        leader = await elect(clock, network, 1)
        network.isolate(3)
        for i in range(12):
            await leader.propose(put_command(f"k{i}", str(i)))
        # compaction writes the snapshot off the loop: a wall-clock wait, generous on a busy box
        await until(lambda: leader.log.base_index >= 10, "the leader compacted its log", 15.0)
        assert leader.stats.snapshots >= 2 and leader.snapshot_index == leader.log.base_index

        network.heal()
        lagging = network.nodes[3]
        for _ in range(20):
            await heartbeats(clock, network, 1)
            if lagging.applied_index == leader.commit_index:
                break
        assert lagging.stats.snapshots_installed == 1
        assert lagging.applied_index == leader.commit_index
        assert lagging.sm.snapshot() == leader.sm.snapshot()

        # and after a restart it comes back from its own files
        await lagging.stop()
        reopened = make_node(3, [1, 2, 3], tmp_path / "n3", network.transport(3), clock, config)
        network.nodes[3] = reopened
        assert reopened.snapshot_index >= lagging.snapshot_index
        assert reopened.sm.get("k0").value == "0"  # type: ignore[union-attr]


@run
async def test_a_restarted_replica_remembers_its_term_vote_and_log(tmp_path: Path) -> None:
    clock = FakeClock()
    transport = ScriptedTransport(lambda p, m: None)
    node = make_node(1, [1, 2, 3], tmp_path, transport, clock)
    await node.handle_append(AppendRequest(3, 2, "u2", 0, 0, (Entry(1, 3, None),), 0))
    clock.advance(1.0)
    assert node.handle_vote(VoteRequest(4, 2, 1, 3)).granted
    await node.stop()

    again = make_node(1, [1, 2, 3], tmp_path, transport, clock)
    assert (again.term, again.voted_for, again.log.last_index) == (4, 2, 1)
    assert not again.handle_vote(VoteRequest(4, 3, 1, 3)).granted  # already voted in term 4
    await again.stop()
