"""Every local fault is real when observed from outside, and gone after recovery."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest
from chaoslib.exceptions import ActivityFailed

from experiments import context, faults
from resilience import launcher
from resilience.state import pid_alive
from tests.integration.cluster_fixtures import link_port, process, running_cluster

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    home = tmp_path_factory.mktemp("chaos-home")
    with running_cluster(home, nodes=2, gpus=2, restart_delay=0.2) as state:
        yield state


@pytest.fixture
def run(cluster, tmp_path):
    ctx = context.start_run("faults", tmp_path)
    yield ctx
    try:
        faults.recover_all(configuration={})
    finally:
        context.end_run()
    assert proxy_faults(cluster) == []


def proxy_faults(state):
    return httpx.get(state["proxy_control_url"] + "/faults", timeout=2, trust_env=False).json()


def health_rtt(port: int, timeout: float = 5.0) -> float:
    started = time.monotonic()
    r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=timeout, trust_env=False)
    r.raise_for_status()
    return time.monotonic() - started


def proc_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0]


def test_pod_kill_really_kills_and_recovery_restarts(cluster, run):
    out = faults.pod_kill(selector={"pods": ["worker-n1-g0"]}, mode="one", restart_after=None)
    old_pid = out["details"]["pids"]["worker-n1-g0"]
    time.sleep(0.2)
    assert not pid_alive(old_pid)
    assert not process(launcher.status(), "worker-n1-g0")["alive"]
    faults.recover(out["id"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        p = process(launcher.status(), "worker-n1-g0")
        if p["alive"] and p["pid"] != old_pid:
            break
        time.sleep(0.05)
    else:
        pytest.fail("killed worker was not restarted on recovery")


def test_pod_pause_stops_the_process_until_recovered(cluster, run):
    out = faults.pod_pause(
        selector={"labelSelectors": {"node": "node-0", "role": "worker"}}, mode="all"
    )
    pids = out["details"]["pids"]
    assert len(pids) == 2
    assert all(proc_state(pid) == "T" for pid in pids.values())
    port = process(cluster, "worker-n0-g0")["ports"]["http"]
    with pytest.raises(httpx.TimeoutException):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5, trust_env=False)
    faults.recover_all()
    assert all(proc_state(pid) != "T" for pid in pids.values())
    assert health_rtt(port) < 3.0


def test_network_delay_is_measured_through_the_link(cluster, run):
    port = link_port(cluster, "worker-n0-g1")
    before = health_rtt(port)
    out = faults.network_delay(
        selector={"pods": ["worker-n0-g1"]},
        latency="600ms",
        jitter="20ms",
        correlation=100,
        direction="to",
    )
    during = min(health_rtt(port) for _ in range(3))
    assert during >= 0.55, during
    assert proxy_faults(cluster)[0]["id"] == out["id"]
    faults.recover(out["id"])
    after = health_rtt(port)
    assert before < 0.45 and after < 0.45


def test_partition_reset_refuses_and_heals(cluster, run):
    port = link_port(cluster, "worker-n1-g1")
    faults.network_partition(selector={"pods": ["worker-n1-g1"]}, action="reset")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2, trust_env=False)
    faults.recover_all()
    assert health_rtt(port) < 3.0


def test_partition_blackhole_swallows_traffic(cluster, run):
    port = link_port(cluster, "worker-n0-g0")
    faults.network_partition(selector={"pods": ["worker-n0-g0"]}, action="blackhole")
    with pytest.raises(httpx.TimeoutException):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.8, trust_env=False)
    faults.recover_all()
    assert health_rtt(port) < 3.0


def test_bandwidth_limit_slows_a_large_reply(cluster, run):
    port = link_port(cluster, "worker-n1-g0")
    faults.network_bandwidth(selector={"pods": ["worker-n1-g0"]}, rate="20kbps")
    started = time.monotonic()
    r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=20, trust_env=False)
    elapsed = time.monotonic() - started
    size = len(r.content)
    assert size > 5000 and elapsed >= 0.8 * size / 20000 - 0.05, (size, elapsed)


def test_selector_with_no_match_injects_nothing(cluster, run):
    with pytest.raises(ActivityFailed, match="matches nothing"):
        faults.pod_kill(selector={"labelSelectors": {"role": "tpu"}})
    assert run.ledger.records() == []
    assert all(p["alive"] for p in launcher.status()["processes"])


def test_raw_socket_sees_the_reset(cluster, run):
    port = link_port(cluster, "worker-n0-g1")
    faults.network_partition(selector={"pods": ["worker-n0-g1"]}, action="reset")
    with pytest.raises(ConnectionError):
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            if not s.recv(100):
                raise ConnectionResetError("closed without a reply")


def test_partition_with_a_target_splits_instead_of_isolating(cluster, run):
    out = faults.network_partition(
        selector={"pods": ["raft-0", "raft-1"]},
        mode="all",
        target={"selector": {"labelSelectors": {"role": "raft"}}, "mode": "all"},
    )
    links = {name for rule in out["details"]["rules"] for name in rule["links"]}
    assert out["params"]["target_names"] == ["raft-2"]
    assert links == {"raft-0->raft-2", "raft-2->raft-0", "raft-1->raft-2", "raft-2->raft-1"}
    faults.recover_all()
