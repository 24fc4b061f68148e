"""GPU and node faults on the real embedded cluster: observed from outside, gone after recovery."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from experiments import context, faults
from resilience import launcher
from resilience.state import pid_alive
from tests.integration.cluster_fixtures import link_port, process, running_cluster

pytestmark = pytest.mark.integration
CHAT = {"model": "deepseek-sim", "messages": [{"role": "user", "content": "hi"}], "stream": True}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    home = tmp_path_factory.mktemp("chaos-home")
    with running_cluster(home, nodes=2, gpus=1, restart_delay=0.2, prometheus=False) as state:
        yield state


@pytest.fixture
def run(cluster, tmp_path):
    ctx = context.start_run("gpu-node-faults", tmp_path)
    yield ctx
    try:
        faults.recover_all(configuration={})
    finally:
        context.end_run()
    assert httpx.get(cluster["proxy_control_url"] + "/faults", timeout=2).json() == []


def port_of(name: str) -> int:
    return process(launcher.status(), name)["ports"]["http"]


def get(port: int, path: str, timeout: float = 3.0) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=timeout, trust_env=False)


def stream(port: int, max_tokens: int) -> tuple[float, str]:
    """Seconds a streamed completion takes, and its body."""
    started = time.monotonic()
    with httpx.stream(
        "POST",
        f"http://127.0.0.1:{port}/v1/chat/completions",
        json={**CHAT, "max_tokens": max_tokens},
        timeout=10,
        trust_env=False,
    ) as r:
        body = "".join(r.iter_text())
    return time.monotonic() - started, body


def wait_for(condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def healthy(name: str) -> bool:
    p = process(launcher.status(), name)
    try:
        return p["alive"] and get(p["ports"]["http"], "/health", 1.0).status_code == 200
    except httpx.TransportError:
        return False


def xid_metric(port: int) -> float:
    for line in get(port, "/metrics").text.splitlines():
        if line.startswith("DCGM_FI_DEV_XID_ERRORS"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no DCGM_FI_DEV_XID_ERRORS in /metrics")


def test_xid_79_makes_the_worker_unhealthy_until_recovered(cluster, run):
    port = port_of("worker-n1-g0")
    out = faults.gpu_xid(79, selector={"pods": ["worker-n1-g0"]})
    health = get(port, "/health")
    assert health.status_code == 503 and health.json()["xid"] == 79
    assert xid_metric(port) == 79
    faults.recover(out["id"])
    assert get(port, "/health").status_code == 200
    assert xid_metric(port) == 0


def test_xid_13_fails_in_flight_and_recovery_restarts_the_process(cluster, run):
    old_pid = process(launcher.status(), "worker-n0-g0")["pid"]
    port = port_of("worker-n0-g0")
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(stream(port, 200)[1]))
    reader.start()
    time.sleep(0.3)  # the stream is decoding
    out = faults.gpu_xid(13, selector={"pods": ["worker-n0-g0"]})
    reader.join(5)
    assert '"error"' in result[0] and "[DONE]" not in result[0]
    assert get(port, "/health").status_code == 503
    faults.recover(out["id"])
    assert not pid_alive(old_pid)
    wait_for(lambda: healthy("worker-n0-g0"), "the restarted worker")
    assert process(launcher.status(), "worker-n0-g0")["pid"] != old_pid


def test_throttle_slows_streams(cluster, run):
    port = port_of("worker-n1-g0")
    before = min(stream(port, 30)[0] for _ in range(2))
    faults.gpu_throttle(slowdown=3.0, selector={"pods": ["worker-n1-g0"]})
    during, body = stream(port, 30)
    assert "[DONE]" in body
    assert during > 2 * before, (before, during)
    assert "900" in get(port, "/fault").text


def test_node_crash_kills_every_process_of_the_node_until_recovery(cluster, run):
    state = launcher.status()
    on_node = {p["name"]: p["pid"] for p in state["processes"] if p["labels"]["node"] == "node-1"}
    assert "worker-n1-g0" in on_node and len(on_node) >= 2
    out = faults.node_crash(node="node-1")
    assert sorted(out["victims"]) == sorted(on_node)
    assert not any(pid_alive(pid) for pid in on_node.values())
    time.sleep(0.5)  # longer than restart_delay: held down, not restarted
    assert not any(process(launcher.status(), n)["alive"] for n in on_node)
    faults.recover(out["id"])
    wait_for(lambda: all(process(launcher.status(), n)["alive"] for n in on_node), "node-1 back")
    assert all(process(launcher.status(), n)["pid"] != pid for n, pid in on_node.items())
    wait_for(lambda: healthy("worker-n1-g0"), "worker-n1-g0 healthy again")


def test_node_isolate_blackholes_the_node_links_until_recovery(cluster, run):
    port = link_port(cluster, "worker-n1-g0")
    out = faults.node_isolate(node="node-1")
    links = {name for rule in out["details"]["rules"] for name in rule["links"]}
    assert "gateway->worker-n1-g0" in links
    assert all(r["direction"] == "both" for r in out["details"]["rules"])
    with pytest.raises(httpx.TimeoutException):
        get(port, "/health", timeout=0.8)
    faults.recover_all()
    assert get(port, "/health").status_code == 200


def test_xid_94_fails_in_flight_but_the_gpu_stays_usable(cluster, run):
    port = port_of("worker-n0-g0")
    wait_for(lambda: healthy("worker-n0-g0"), "worker-n0-g0 healthy")
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(stream(port, 200)[1]))
    reader.start()
    time.sleep(0.3)
    faults.gpu_xid(94, selector={"pods": ["worker-n0-g0"]})
    reader.join(5)
    assert "Xid 94" in result[0] and "[DONE]" not in result[0]
    assert get(port, "/health").status_code == 200
    assert get(port, "/fault").json()["ecc_dbe_volatile"] == 1
    assert "[DONE]" in stream(port, 5)[1]
