"""The Raft probes against three replicas of our own store (`python -m resilience.raft`), the
same way they judge etcd: kill the leader, see a new one in a higher term, record a history."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from probes import raft
from probes.raft import actions
from resilience.ports import free_ports

pytestmark = pytest.mark.integration

STOP_WAIT_S = 5.0


class OurRaftCluster:
    """Three replicas on free loopback ports, each stopped by its PID."""

    def __init__(self, base_dir: Path, size: int = 3, config: dict | None = None) -> None:
        self.base_dir = base_dir
        self.ids = list(range(1, size + 1))
        ports = free_ports(2 * size)
        self.client_port = {i: ports[2 * (i - 1)] for i in self.ids}
        self.peer_port = {i: ports[2 * (i - 1) + 1] for i in self.ids}
        self.config = config or {}
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.client_port[i]}"

    @property
    def client_urls(self) -> list[str]:
        return [self.url(i) for i in self.ids]

    def start(self, timeout_s: float = 15.0) -> OurRaftCluster:
        for i in self.ids:
            peers = {str(j): f"http://127.0.0.1:{self.peer_port[j]}" for j in self.ids if j != i}
            log = (self.base_dir / f"raft-{i}.log").open("wb")
            self.processes[i] = subprocess.Popen(
                [
                    sys.executable, "-m", "resilience.raft", "--id", str(i),
                    "--host", "127.0.0.1", "--client-port", str(self.client_port[i]),
                    "--peer-port", str(self.peer_port[i]), "--peers", json.dumps(peers),
                    "--data-dir", str(self.base_dir / f"raft-{i}"),
                    "--config", json.dumps(self.config),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
            log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.leader() is not None and all(self.status(i) for i in self.ids):
                return self
            time.sleep(0.05)
        raise TimeoutError(f"our store elected no leader within {timeout_s} s")

    def status(self, i: int) -> dict | None:
        try:
            r = httpx.get(self.url(i) + "/status", timeout=0.5, trust_env=False)
            return r.json() if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    def leader(self) -> int | None:
        for i in self.ids:
            if self.processes[i].poll() is None:
                s = self.status(i)
                if s and s.get("role") == "leader":
                    return i
        return None

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        self.processes[i].send_signal(sig)

    def stop(self) -> None:
        for p in self.processes.values():
            if p.poll() is None:
                p.kill()
        for p in self.processes.values():
            p.wait(STOP_WAIT_S)


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
        assert all(p.poll() is not None for p in cluster.processes.values())


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
    assert verdict["leader_before"]["leader"] == str(victim)
    assert verdict["new_leader"]["leader"] != str(victim)
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
    follower, other = [i for i in store.ids if i != leader]

    async def scenario() -> tuple[str | None, float, float]:
        client = RaftStoreClient([store.url(follower)], timeout_s=0.3)
        try:
            await client.put("redirected", "v1")  # answered 307 by the follower
            value = await client.get("redirected")
            store.kill(other, signal.SIGSTOP)
            began = time.monotonic()
            with pytest.raises(StatusUnavailable):
                await client.status(store.url(other), 0.2)
            status_s = time.monotonic() - began
            paused = RaftStoreClient([store.url(other)], timeout_s=0.3)
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
