"""The Raft store as real replica processes on 127.0.0.1: elections, failover, reads, snapshots.

Peers point straight at each other's peer ports (no fault proxy here). Every replica is stopped
by its PID, a paused one is resumed first, and each test has its own data directories.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from probes.raft.localcluster import OurRaftCluster, Replica

pytestmark = pytest.mark.integration


class Cluster:
    """The shared `OurRaftCluster` addressed by the replica ids its /status reports, with the
    agreed-leader wait and HTTP clients these tests use."""

    def __init__(self, store: OurRaftCluster) -> None:
        self.store = store
        self.ids = [m.id for m in store.members]
        self.http = httpx.Client(timeout=2.0)

    def replica(self, node_id: int) -> Replica:
        return next(m for m in self.store.members if m.id == node_id)

    def url(self, node_id: int) -> str:
        return self.replica(node_id).client_url

    def start(self, node_id: int) -> None:
        self.store.start_member(self.replica(node_id).name)

    def signal(self, node_id: int, signum: int) -> None:
        self.store.kill(self.replica(node_id).name, signum)

    def status(self, node_id: int) -> dict[str, Any] | None:
        return self.store.status(self.replica(node_id).name, timeout_s=0.3)

    def leader(self, among: list[int] | None = None, timeout: float = 5.0) -> dict[str, Any]:
        """The status of the one replica (of `among`) that says it leads and is agreed on."""
        ids = among or self.ids
        found: dict[str, Any] = {}

        def agreed() -> bool:
            statuses = [s for s in (self.status(i) for i in ids) if s]
            leaders = [s for s in statuses if s["role"] == "leader"]
            if len(leaders) != 1:
                return False
            term = leaders[0]["term"]
            followers = [s for s in statuses if s["leader"] == leaders[0]["id"]]
            found.update(leaders[0])
            return len(followers) == len(ids) and all(s["term"] == term for s in statuses)

        wait_until(agreed, timeout, "one agreed leader")
        return found

    def client(self, node_id: int) -> httpx.Client:
        return httpx.Client(base_url=self.url(node_id), timeout=2.0, follow_redirects=True)


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def raft_cluster(tmp_path: Path, size: int = 3, **config: Any) -> Iterator[Cluster]:
    """Replicas with `config`, stopped gracefully (SIGCONT + SIGTERM) by PID at the end."""
    store = OurRaftCluster(tmp_path, size=size, config=config)
    cluster = Cluster(store)
    try:
        store.start()
        yield cluster
    finally:
        store.stop(graceful=True)
        cluster.http.close()
        left = [m.pid for m in store.members if m.running()]
        assert not left, f"replicas left running: {left}"


def first_ack(cluster: Cluster, ids: list[int], key: str, value: str, timeout: float) -> float:
    """Write through any of `ids` until one acknowledges; returns when (monotonic)."""
    deadline = time.monotonic() + timeout
    n = 0
    while time.monotonic() < deadline:
        url = cluster.url(ids[n % len(ids)])
        n += 1
        try:
            r = cluster.http.put(
                url + f"/kv/{key}",
                json={"value": value},
                timeout=0.5,
                follow_redirects=True,
            )
        except httpx.HTTPError:
            continue
        if r.status_code == 200:
            return time.monotonic()
        time.sleep(0.005)
    raise AssertionError(f"no write acknowledged within {timeout}s")


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def test_writes_through_the_leader_are_read_everywhere_and_cas_holds(tmp_path: Path) -> None:
    with raft_cluster(tmp_path) as cluster:
        leader = cluster.leader()
        followers = [i for i in cluster.ids if i != leader["id"]]
        assert leader["leader_url"] == cluster.url(leader["id"])

        with cluster.client(followers[0]) as via_follower:
            put = via_follower.put("/kv/config/a", json={"value": "1"})
            assert put.status_code == 200 and put.json()["revision"] == 1
        for node_id in cluster.ids:
            with cluster.client(node_id) as c:
                got = c.get("/kv/config/a")
                assert got.status_code == 200, got.text
                assert got.json() == {
                    "key": "config/a",
                    "value": "1",
                    "mod_revision": 1,
                    "lease": None,
                }
                assert c.get("/kv/absent").status_code == 404

        raw = cluster.http.get(cluster.url(followers[1]) + "/kv/config/a")
        assert raw.status_code == 307
        assert raw.headers["location"] == leader["leader_url"] + "/kv/config/a"
        assert raw.json()["leader"] == leader["id"]

        with cluster.client(followers[1]) as c:
            refused = c.post("/kv/config/a/cas", json={"expect": None, "value": "x"}).json()
            assert refused == {
                "succeeded": False,
                "value": "1",
                "revision": 1,
                "term": leader["term"],
            }
            swapped = c.post("/kv/config/a/cas", json={"expect": "1", "value": "2"}).json()
            assert swapped["succeeded"] is True and swapped["revision"] == 2
            assert c.get("/kv/config/a").json()["value"] == "2"
            assert c.delete("/kv/config/a").json() == {
                "deleted": True,
                "revision": 3,
                "term": leader["term"],
            }
            assert c.put("/kv/x", json={"value": 5}).status_code == 400

        leader_metrics = cluster.http.get(leader["leader_url"] + "/metrics").text
        assert metric(leader_metrics, "raft_is_leader") == 1
        assert metric(leader_metrics, "raft_term") == leader["term"]
        assert metric(leader_metrics, "raft_applied_index") >= 4
        follower_metrics = cluster.http.get(cluster.url(followers[0]) + "/metrics").text
        assert metric(follower_metrics, "raft_is_leader") == 0
        assert metric(follower_metrics, "raft_leader_changes_total") >= 1


def test_sigkill_of_the_leader_elects_a_new_one_within_a_second(tmp_path: Path) -> None:
    with raft_cluster(tmp_path) as cluster:
        old = cluster.leader()
        with cluster.client(old["id"]) as c:
            for i in range(20):
                assert c.put(f"/kv/k{i}", json={"value": str(i)}).status_code == 200
        survivors = [i for i in cluster.ids if i != old["id"]]

        killed_at = time.monotonic()
        cluster.signal(old["id"], signal.SIGKILL)
        acked_at = first_ack(cluster, survivors, "after", "1", timeout=5.0)
        assert acked_at - killed_at < 1.0, f"failover took {acked_at - killed_at:.3f}s"

        new = cluster.leader(among=survivors)
        assert new["id"] != old["id"] and new["term"] > old["term"]
        with cluster.client(new["id"]) as c:
            assert [c.get(f"/kv/k{i}").json()["value"] for i in range(20)] == [
                str(i) for i in range(20)
            ]


def test_a_paused_leader_is_replaced_and_never_serves_a_stale_read(tmp_path: Path) -> None:
    with raft_cluster(tmp_path) as cluster:
        old = cluster.leader()
        assert (
            cluster.http.put(old["leader_url"] + "/kv/k", json={"value": "old"}).status_code == 200
        )

        cluster.signal(old["id"], signal.SIGSTOP)
        survivors = [i for i in cluster.ids if i != old["id"]]
        new = None

        def new_leader() -> bool:
            nonlocal new
            statuses = [cluster.status(i) for i in survivors]
            leading = [s for s in statuses if s and s["role"] == "leader"]
            new = leading[0] if leading else None
            return new is not None

        wait_until(new_leader, 3.0, "a leader among the survivors")
        assert new is not None and new["term"] > old["term"]
        write = cluster.http.put(new["leader_url"] + "/kv/k", json={"value": "new"})
        assert write.status_code == 200

        # A read already waiting on the paused leader, then reads right after it resumes.
        answers: list[httpx.Response] = []
        reader = threading.Thread(
            target=lambda: answers.append(
                cluster.http.get(cluster.url(old["id"]) + "/kv/k", timeout=5)
            )
        )
        reader.start()
        time.sleep(0.1)
        cluster.signal(old["id"], signal.SIGCONT)
        reader.join(timeout=6)
        for _ in range(10):
            answers.append(cluster.http.get(cluster.url(old["id"]) + "/kv/k", timeout=5))
        for answer in answers:
            assert answer.status_code in (307, 503), answer.text
            assert "old" not in answer.text
        assert any(a.status_code == 307 for a in answers)
        assert answers[-1].headers["location"] == new["leader_url"] + "/kv/k"
        status = cluster.status(old["id"])
        assert status is not None and status["role"] == "follower" and status["term"] >= new["term"]


def test_a_killed_follower_restarts_from_its_data_dir_and_catches_up(tmp_path: Path) -> None:
    with raft_cluster(tmp_path) as cluster:
        leader = cluster.leader()
        follower = next(i for i in cluster.ids if i != leader["id"])
        with cluster.client(leader["id"]) as c:
            for i in range(10):
                c.put(f"/kv/a{i}", json={"value": "1"})
            held_before = cluster.status(follower)
            assert held_before is not None
            cluster.signal(follower, signal.SIGKILL)
            for i in range(30):
                assert c.put(f"/kv/b{i}", json={"value": "2"}).status_code == 200
            target = c.get("/status").json()["commit_index"]

        cluster.start(follower)
        wait_until(
            lambda: (cluster.status(follower) or {}).get("applied_index", 0) >= target,
            10.0,
            "the restarted follower to apply what it missed",
        )
        status = cluster.status(follower)
        assert status is not None and status["role"] == "follower"
        assert status["snapshot_index"] == 0  # no snapshot needed: plain log catch-up
        assert status["last_index"] >= target > held_before["last_index"]


def test_compaction_then_install_snapshot_for_a_replica_far_behind(tmp_path: Path) -> None:
    with raft_cluster(tmp_path, snapshot_threshold=20, snapshot_trailing_entries=0) as cluster:
        leader = cluster.leader()
        follower = next(i for i in cluster.ids if i != leader["id"])
        cluster.signal(follower, signal.SIGKILL)
        with cluster.client(leader["id"]) as c:
            for i in range(70):
                assert c.put(f"/kv/k{i}", json={"value": str(i)}).status_code == 200
            status = c.get("/status").json()
            metrics = c.get("/metrics").text
        assert status["snapshot_index"] >= 60
        assert metric(metrics, "raft_snapshots_total") >= 3
        log_size = (cluster.replica(leader["id"]).data_dir / "log.bin").stat().st_size
        assert log_size < 40 * 200  # compacted: far fewer than 70 entries remain on disk

        cluster.start(follower)
        wait_until(
            lambda: (
                (cluster.status(follower) or {}).get("applied_index", 0) >= status["commit_index"]
            ),
            10.0,
            "the far-behind follower to catch up",
        )
        caught_up = cluster.status(follower)
        assert caught_up is not None and caught_up["snapshot_index"] >= status["snapshot_index"]

        # Its store really holds the data: make it the leader by killing the current one.
        cluster.signal(leader["id"], signal.SIGKILL)
        survivors = [i for i in cluster.ids if i != leader["id"]]
        new = cluster.leader(among=survivors)
        with cluster.client(new["id"]) as c:
            assert [c.get(f"/kv/k{i}").json()["value"] for i in range(70)] == [
                str(i) for i in range(70)
            ]


def test_lease_expiry_deletes_its_keys_and_keepalive_holds_them(tmp_path: Path) -> None:
    with raft_cluster(tmp_path) as cluster:
        leader = cluster.leader()
        with cluster.client(leader["id"]) as c:
            short = c.post("/leases", json={"ttl": 0.5}).json()
            kept = c.post("/leases", json={"ttl": 0.5}).json()
            assert short["ttl"] == 0.5 and short["id"] != kept["id"]
            assert c.put("/kv/short", json={"value": "1", "lease": short["id"]}).status_code == 200
            assert c.put("/kv/kept", json={"value": "1", "lease": kept["id"]}).status_code == 200
            assert c.get("/kv/short").json()["lease"] == short["id"]
            assert c.put("/kv/x", json={"value": "1", "lease": 999}).status_code == 400

            started = time.monotonic()
            while time.monotonic() - started < 1.2:
                assert c.post(f"/leases/{kept['id']}/keepalive").status_code == 200
                time.sleep(0.15)
            assert c.get("/kv/short").status_code == 404
            assert c.get("/kv/kept").status_code == 200
            assert c.post(f"/leases/{short['id']}/keepalive").status_code == 404

            wait_until(lambda: c.get("/kv/kept").status_code == 404, 2.0, "the kept lease to end")
            revoked = c.post("/leases", json={"ttl": 30}).json()
            c.put("/kv/r", json={"value": "1", "lease": revoked["id"]})
            assert c.delete(f"/leases/{revoked['id']}").status_code == 200
            assert c.get("/kv/r").status_code == 404


def test_five_replicas_elect_replicate_and_fail_over(tmp_path: Path) -> None:
    with raft_cluster(tmp_path, size=5) as cluster:
        leader = cluster.leader()
        with cluster.client(leader["id"]) as c:
            assert c.put("/kv/five", json={"value": "1"}).status_code == 200
        cluster.signal(leader["id"], signal.SIGKILL)
        survivors = [i for i in cluster.ids if i != leader["id"]]
        first_ack(cluster, survivors, "five", "2", timeout=5.0)
        new = cluster.leader(among=survivors)
        assert new["term"] > leader["term"]
        with cluster.client(survivors[0]) as c:
            assert c.get("/kv/five").json()["value"] == "2"
