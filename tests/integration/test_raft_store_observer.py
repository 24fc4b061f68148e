"""The Raft probes against three replicas of our own store (`python -m resilience.raft`), the
same way they judge etcd: kill the leader, see a new one in a higher term, record a history."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from probes import raft
from probes.raft import actions
from probes.raft.localcluster import OurRaftCluster

pytestmark = pytest.mark.integration


@pytest.fixture
def store(tmp_path: Path) -> Iterator[OurRaftCluster]:
    cluster = OurRaftCluster(tmp_path)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
        actions.stop_observer()
        if actions._recorder is not None:
            actions.stop_history()
        assert all(m.process is None or m.process.poll() is not None for m in cluster.members)


def test_observer_measures_failover_of_our_store(store: OurRaftCluster, tmp_path: Path):
    config = {"raft_endpoints": store.client_urls, "raft_kind": "ours", "run_dir": str(tmp_path)}
    started = raft.start_observer(configuration=config)
    assert {r["role"] for r in started["replicas"]} == {"leader", "follower"}
    raft.start_history(keys=3, clients=4, op_timeout_s=1.0, configuration=config)
    victim = store.leader()
    assert victim is not None
    observer = actions._current_observer()
    observer.wait_for(lambda: len(observer.writes()) > 5, 2)

    fault = raft.mark_fault(configuration=config)
    store.kill(victim)
    verdict = raft.observer_report(failover_bound_s=2.0, write_bound_s=3.0, configuration=config)
    time.sleep(0.3)
    history = raft.stop_history(configuration=config)

    assert verdict["ok"] is True, verdict["problems"]
    victim_id = str(store.member(victim).id)
    assert verdict["leader_before"]["leader"] == victim_id
    assert verdict["new_leader"]["leader"] != victim_id
    assert verdict["new_leader"]["term"] > verdict["leader_before"]["term"]
    assert 0.1 < verdict["failover_s"] < 2.0
    assert verdict["failover_s"] - 0.1 <= verdict["first_write_s"] < 3.0
    assert verdict["split_brain"] == [] and verdict["terms_monotonic"] is True

    ops = [json.loads(line) for line in Path(history["path"]).read_text().splitlines()]
    assert len(ops) == history["operations"] and history["counts"]["ok"] > 20
    after_fault = [o for o in ops if o["status"] == "ok" and o["call"] > fault["t0"] + 0.05]
    assert {o["op"] for o in after_fault} >= {"read", "write"}


def test_client_follows_redirects_and_does_not_hang_on_a_paused_replica(store: OurRaftCluster):
    import asyncio

    from probes.raft.clients import OutcomeUnknown, RaftStoreClient, StatusUnavailable

    leader = store.leader()
    follower, other = [m.name for m in store.members if m.name != leader]
    url = {m.name: m.client_url for m in store.members}

    async def scenario() -> tuple[str | None, float, float]:
        client = RaftStoreClient([url[follower]], timeout_s=0.3)
        try:
            await client.put("redirected", "v1")  # answered 307 by the follower
            value = await client.get("redirected")
            store.kill(other, signal.SIGSTOP)
            began = time.monotonic()
            with pytest.raises(StatusUnavailable):
                await client.status(url[other], 0.2)
            status_s = time.monotonic() - began
            paused = RaftStoreClient([url[other]], timeout_s=0.3)
            began = time.monotonic()
            with pytest.raises(OutcomeUnknown):
                await paused.put("redirected", "v2")
            put_s = time.monotonic() - began
            await paused.aclose()
            return value, status_s, put_s
        finally:
            store.kill(other, signal.SIGCONT)
            await client.aclose()

    value, status_s, put_s = asyncio.run(scenario())
    assert value == "v1"
    assert 0.19 <= status_s < 0.5 and 0.29 <= put_s < 0.6
