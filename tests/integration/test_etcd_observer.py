"""The Raft probes against a real 3-member etcd 3.4 on loopback (heartbeat 50 ms, election
250 ms): the observer sees the failover when the leader is SIGKILLed or SIGSTOPped, the recorder
writes a history in the contract format, and an endpoint that is no Raft store is refused."""

from __future__ import annotations

import http.server
import json
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from chaoslib.exceptions import ActivityFailed

from probes import raft
from probes.raft import actions
from probes.raft.localcluster import EtcdCluster

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd-server is not installed"),
]

HISTORY_KEYS = {"process", "op", "key", "input", "output", "call", "return", "status"}


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(tmp_path / "etcd", heartbeat_ms=50, election_ms=250)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
        actions.stop_observer()
        if actions._recorder is not None:
            actions.stop_history()
        assert all(m.process is None or m.process.poll() is not None for m in cluster.members)


def configuration(cluster: EtcdCluster, run_dir: Path) -> dict:
    return {"raft_endpoints": cluster.client_urls, "raft_kind": "etcd", "run_dir": str(run_dir)}


def read_history(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def member_id(cluster: EtcdCluster, name: str) -> str:
    status = cluster.status(name)
    assert status is not None
    return status["header"]["member_id"]


def test_observer_measures_failover_when_the_leader_is_killed(etcd: EtcdCluster, tmp_path):
    config = configuration(etcd, tmp_path / "run")
    started = raft.start_observer(configuration=config)
    assert len(started["replicas"]) == 3 and all("term" in r for r in started["replicas"])
    raft.start_history(keys=3, clients=4, op_timeout_s=0.5, configuration=config)
    victim = etcd.leader()
    assert victim is not None
    victim_id = member_id(etcd, victim)
    actions._current_observer().wait_for(lambda: len(actions._current_observer().writes()) > 5, 2)

    fault = raft.mark_fault(configuration=config)
    etcd.kill(victim, signal.SIGKILL)
    verdict = raft.observer_report(failover_bound_s=2.0, write_bound_s=3.0, configuration=config)
    time.sleep(1.0)  # the recorder's clients outlive their timeouts (0.5 s) on the dead member
    history = raft.stop_history(configuration=config)

    assert verdict["ok"] is True, verdict["problems"]
    assert verdict["leader_before"]["leader"] == victim_id
    assert verdict["new_leader"]["leader"] != victim_id
    assert verdict["new_leader"]["term"] > verdict["leader_before"]["term"]
    # An election starts one election timeout (250 ms) after the last heartbeat (every 50 ms).
    assert 0.15 < verdict["failover_s"] < 2.0
    # A write acknowledged in the new term may beat the poll that sees the new leader.
    assert verdict["failover_s"] - 0.1 <= verdict["first_write_s"] < 3.0
    assert verdict["split_brain"] == [] and verdict["terms_monotonic"] is True
    assert verdict["leader_changes"] >= 1
    assert verdict["timeline"][-1]["leader"] == verdict["new_leader"]["leader"]
    saved = json.loads(Path(verdict["path"]).read_text())
    assert saved["failover_s"] == verdict["failover_s"] and saved["samples"]
    json.dumps(verdict)  # plain data for the journal

    ops = read_history(history["path"])
    assert history["counts"]["ok"] > 20 and len(ops) == history["operations"]
    after_fault = [o for o in ops if o["status"] == "ok" and o["call"] > fault["t0"] + 0.05]
    assert {o["op"] for o in after_fault} >= {"read", "write"}  # the survivors served clients


def test_observer_does_not_hang_on_a_paused_leader(etcd: EtcdCluster, tmp_path):
    config = configuration(etcd, tmp_path / "run")
    raft.start_observer(status_timeout_s=0.1, write_timeout_s=0.3, configuration=config)
    victim = etcd.leader()
    assert victim is not None
    paused_url = etcd.member(victim).client_url
    actions._current_observer().wait_for(lambda: len(actions._current_observer().writes()) > 5, 2)

    raft.mark_fault(configuration=config)
    etcd.kill(victim, signal.SIGSTOP)
    before = actions._current_observer().polls()
    verdict = raft.observer_report(failover_bound_s=2.0, write_bound_s=3.0, configuration=config)
    etcd.kill(victim, signal.SIGCONT)

    assert verdict["ok"] is True, verdict["problems"]
    others = [u for u in etcd.client_urls if u != paused_url]
    polled = {u: verdict["polls"][u] - before[u] for u in etcd.client_urls}
    # The others were polled many times while the paused one could only time out (100 ms each).
    window = verdict["first_write_s"]
    assert all(polled[u] >= 3 * polled[paused_url] for u in others), polled
    assert polled[paused_url] <= window / 0.1 + 2, polled


def test_history_against_etcd_is_json_lines_in_the_contract_format(etcd: EtcdCluster, tmp_path):
    config = configuration(etcd, tmp_path / "run")
    started = raft.start_history(
        keys=2, clients=3, op_timeout_s=0.5, mix={"read": 1, "write": 1, "cas": 1, "delete": 0.2},
        configuration=config,
    )  # fmt: skip
    time.sleep(1.0)
    summary = raft.stop_history(configuration=config)

    assert summary["path"] == started["path"]
    ops = read_history(summary["path"])
    assert len(ops) == summary["operations"] > 30
    assert all(set(o) == HISTORY_KEYS for o in ops)
    assert {o["op"] for o in ops} >= {"read", "write", "cas"}
    assert all(o["key"] in started["keys"] for o in ops)
    assert all((o["return"] is None) == (o["status"] == "unknown") for o in ops)
    assert all(o["return"] is None or o["return"] >= o["call"] for o in ops)
    written = {o["input"] for o in ops if o["op"] == "write"} | {
        o["input"]["value"] for o in ops if o["op"] == "cas"
    }
    reads = [o for o in ops if o["op"] == "read" and o["status"] == "ok"]
    # Fresh keys start absent; every value read was written in this very history.
    assert reads and all(o["output"] is None or o["output"] in written for o in reads)
    succeeded = [o for o in ops if o["op"] == "cas" and o["output"] is True]
    assert succeeded, "no compare-and-set succeeded: expected values are not tracked"
    meta = json.loads(Path(summary["meta_path"]).read_text())
    assert meta["store"] == "etcd" and meta["endpoints"] == etcd.client_urls


class _NotRaft(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(404)
        self.end_headers()
        self.wfile.write(b"404 page not found")

    def do_POST(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(b"<html>hello</html>")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def not_raft_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotRaft)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize("kind", ["ours", "etcd"])
def test_an_endpoint_that_is_no_raft_store_is_refused(not_raft_url: str, kind: str, tmp_path):
    config = {"raft_endpoints": [not_raft_url], "raft_kind": kind, "run_dir": str(tmp_path)}
    with pytest.raises(ActivityFailed, match="not"):
        raft.start_observer(configuration=config)
    with pytest.raises(ActivityFailed, match="not"):
        raft.start_history(configuration=config)


def test_no_endpoint_answering_is_refused(tmp_path):
    from resilience.ports import free_ports

    (port,) = free_ports(1)
    config = {"raft_endpoints": [f"http://127.0.0.1:{port}"], "raft_kind": "etcd"}
    with pytest.raises(ActivityFailed, match="no Raft endpoint answered"):
        raft.start_observer(configuration=config)
