"""Nodes added and removed while the cluster runs, a restart on demand, and the controllers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from experiments.backends.local import LocalBackend
from resilience import launcher
from resilience.ports import free_ports, port_in_use
from resilience.state import pid_alive
from tests.integration.cluster_fixtures import chaos_home, link_port, process, running_cluster

pytestmark = pytest.mark.integration
CONTROLLER_MODULE = Path(__file__).resolve().parents[2] / "resilience" / "controller.py"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def wait_for(predicate, timeout=10.0, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout}s")


def get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=3, trust_env=False)


def chat(url: str, session: str = "s") -> httpx.Response:
    return httpx.post(
        url + "/v1/chat/completions", json={**CHAT, "user": session}, timeout=5, trust_env=False
    )


def test_a_node_joins_serves_through_its_links_and_leaves_without_a_trace(tmp_path):
    with running_cluster(tmp_path, nodes=1, gpus=1) as state:
        control = state["supervisor"]["control_url"]
        run_dir = Path(state["run_dir"])
        started = time.monotonic()
        r = httpx.post(f"{control}/nodes", json={"gpus": 2}, timeout=20, trust_env=False)
        took = time.monotonic() - started
        assert r.status_code == 200, r.text
        added = r.json()
        assert added["node"] == "node-1" and added["zone"] == "zone-b"
        assert added["workers"] == ["worker-n1-g0", "worker-n1-g1"]
        print(f"node of 2 GPUs added in {took:.2f}s")

        st = launcher.status()
        assert st is not None and st["added_nodes"] == ["node-1"]
        new = {name: process(st, name) for name in added["workers"]}
        assert all(p["alive"] and p["labels"]["node"] == "node-1" for p in new.values())
        assert new["worker-n1-g1"]["labels"]["zone"] == "zone-b"
        for name in new:  # each new worker answers through its own new link in the proxy
            reply = chat(f"http://127.0.0.1:{link_port(st, name)}")
            assert reply.status_code == 200 and reply.headers["x-served-by"] == name
        proxy_links = {link["name"] for link in get(st["proxy_control_url"] + "/links").json()}
        assert {"gateway->worker-n1-g0", "gateway->worker-n1-g1"} <= proxy_links

        # the files others read the layout from follow
        doc = json.loads((run_dir / "cluster.json").read_text())
        assert doc["nodes"]["node-1"]["gpus"] == 2
        assert doc["nodes"]["node-1"]["workers"]["1"]["name"] == "worker-n1-g1"
        targets = json.loads((run_dir / "targets" / "cluster.json").read_text())
        assert {"worker-n1-g0", "worker-n1-g1"} <= {g["labels"]["instance_name"] for g in targets}
        on_file = {link["name"] for link in json.loads((run_dir / "links.json").read_text())}
        assert "gateway->worker-n1-g1" in on_file

        # without tasks the gateway routes to every worker, old and new, and keeps serving
        upstreams = get(st["gateway_url"] + "/upstreams").json()
        assert set(upstreams) == {"worker-n0-g0", "worker-n1-g0", "worker-n1-g1"}
        served = {chat(st["gateway_url"], f"s{i}").headers["x-served-by"] for i in range(30)}
        assert served & set(new), "the gateway never picked a new worker"

        def scraped():
            r = get(st["prometheus_url"] + '/api/v1/query?query=up{node="node-1"}')
            return len(r.json()["data"]["result"]) == 2

        wait_for(scraped, timeout=12)

        # initial nodes stay, unknown nodes are unknown
        refused = httpx.delete(f"{control}/nodes/node-0", timeout=5, trust_env=False)
        assert refused.status_code == 409 and "initial" in refused.json()["error"]
        unknown = httpx.delete(f"{control}/nodes/node-7", timeout=5, trust_env=False)
        assert unknown.status_code == 404

        ports = [p["ports"]["http"] for p in new.values()] + [link_port(st, n) for n in new]
        removed = httpx.delete(f"{control}/nodes/node-1", timeout=15, trust_env=False)
        assert removed.status_code == 200, removed.text
        assert sorted(removed.json()["removed"]) == sorted(new)
        assert not [p["pid"] for p in new.values() if pid_alive(p["pid"])]
        wait_for(lambda: not any(port_in_use(port) for port in ports), timeout=5)

        after = launcher.status()
        assert after is not None and after["added_nodes"] == []
        assert not {p["name"] for p in after["processes"]} & set(new)
        assert not [link for link in after["links"] if link["target"] in new]
        assert "node-1" not in json.loads((run_dir / "cluster.json").read_text())["nodes"]
        assert set(get(after["gateway_url"] + "/upstreams").json()) == {"worker-n0-g0"}
        assert chat(after["gateway_url"]).status_code == 200
        assert process(after, "gateway")["pid"] == process(state, "gateway")["pid"]

        again = httpx.post(f"{control}/nodes", json={"gpus": 1}, timeout=20, trust_env=False)
        assert again.json()["node"] == "node-2"  # names are never reused within a run
        bad = httpx.post(f"{control}/nodes", json={"gpus": 0}, timeout=5, trust_env=False)
        assert bad.status_code == 400


def test_restart_kills_and_starts_a_fresh_process_at_once_even_when_held(tmp_path):
    with running_cluster(tmp_path, nodes=1, gpus=2, restart_delay=5.0, prometheus=False) as state:
        control = state["supervisor"]["control_url"]
        old = process(state, "worker-n0-g1")
        httpx.post(
            f"{control}/processes/worker-n0-g1/hold", json={"until": None}, timeout=2
        ).raise_for_status()
        started = time.monotonic()
        r = httpx.post(f"{control}/processes/worker-n0-g1/restart", timeout=10, trust_env=False)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["name"] == "worker-n0-g1" and answer["pid"] != old["pid"]
        assert not pid_alive(old["pid"])
        url = f"http://127.0.0.1:{old['ports']['http']}"
        wait_for(lambda: _answers(url + "/health"), timeout=10)
        print(f"restart to serving: {time.monotonic() - started:.2f}s (restart delay 5 s)")
        assert chat(url).headers["x-served-by"] == "worker-n0-g1"
        now = process(launcher.status(), "worker-n0-g1")
        assert (now["pid"], now["restarts"], now["held"]) == (answer["pid"], 1, False)
        missing = httpx.post(f"{control}/processes/nobody/restart", timeout=5, trust_env=False)
        assert missing.status_code == 404


def _answers(url: str) -> bool:
    try:
        return get(url).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_bad_task_layout_is_refused_in_one_line_before_anything_starts(tmp_path):
    env = {**os.environ, "INFERENCE_CHAOS_HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-m", "inference_chaos.cli", "up", "--store", "etcd", "--tasks", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == "inference-chaos: controllers need our store; use --store ours"
    assert not (tmp_path / "state.json").exists()
    with chaos_home(tmp_path), pytest.raises(launcher.ClusterError, match="at most 2"):
        launcher.up(launcher.UpOptions(nodes=1, gpus_per_node=2, tasks=3))


def test_a_running_cluster_with_fewer_tasks_says_how_to_restart():
    assert launcher.tasks_mismatch({"tasks": 0}, 0, 1) is None
    assert launcher.tasks_mismatch({"tasks": 4, "task_gpus": 1}, 2, 1) is None
    problem = launcher.tasks_mismatch({"tasks": 0}, 4, 1)
    assert problem is not None
    assert "has 0 tasks" in problem and "4 tasks" in problem
    assert "inference-chaos up --tasks 4 --task-gpus 1" in problem
    assert launcher.tasks_mismatch({"tasks": 4, "task_gpus": 1}, 2, 2) is not None


class _StatusHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = json.dumps({"id": "controller-0", "role": "leader", "settled": True}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_controllers_carry_their_live_role_as_a_label():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StatusHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        dead = free_ports(1)[0]
        labels = {"app": "inference-controller", "role": "controller", "node": "node-0"}
        state = {
            "processes": [
                {"name": "controller-0", "ports": {"http": server.server_port}, "labels": labels},
                {"name": "controller-1", "ports": {"http": dead}, "labels": labels},
                {"name": "gateway", "ports": {"http": dead}, "labels": {"role": "gateway"}},
            ]
        }
        found = {c.name: c.labels for c in LocalBackend(state).candidates()}
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert found["controller-0"]["controller-role"] == "leader"
    assert found["controller-1"]["controller-role"] == "unreachable"
    assert "controller-role" not in found["gateway"]


@pytest.mark.skipif(
    not CONTROLLER_MODULE.exists(), reason="resilience/controller.py is not written yet"
)
def test_with_tasks_ready_waits_for_a_settled_leader_and_its_routing_table(tmp_path):
    with running_cluster(tmp_path, nodes=2, gpus=2, tasks=2, prometheus=False) as state:
        assert state["tasks"] == 2
        controllers = [p for p in state["processes"] if p["labels"]["role"] == "controller"]
        assert [(c["name"], c["labels"]["node"]) for c in controllers] == [
            ("controller-0", "node-0"),
            ("controller-1", "node-1"),
        ]
        statuses = [
            get(f"http://127.0.0.1:{c['ports']['http']}/status").json() for c in controllers
        ]
        leaders = [s for s in statuses if s["role"] == "leader"]
        assert len(leaders) == 1 and leaders[0]["settled"] is True
        # the gateway routes by the controller's table: the two workers that serve a task
        upstreams = get(state["gateway_url"] + "/upstreams").json()
        assert len(upstreams) == 2
        tasks = {get(f"{u['url']}/task").json()["state"] for u in upstreams.values()}
        assert tasks == {"serving"}
        roles = {
            c.name: c.labels.get("controller-role")
            for c in LocalBackend(state).candidates()
            if c.name.startswith("controller-")
        }
        assert sorted(roles.values()) == ["leader", "standby"]
        doc = json.loads((Path(state["run_dir"]) / "cluster.json").read_text())
        assert sorted(doc["nodes"]) == ["node-0", "node-1"]
        # a node added now is the controllers' to use: the supervisor routes nothing to it
        control = state["supervisor"]["control_url"]
        added = httpx.post(f"{control}/nodes", json={"gpus": 1}, timeout=20, trust_env=False)
        assert added.status_code == 200, added.text
        doc = json.loads((Path(state["run_dir"]) / "cluster.json").read_text())
        assert doc["nodes"]["node-2"]["workers"]["0"]["name"] == "worker-n2-g0"
        assert "worker-n2-g0" not in get(state["gateway_url"] + "/upstreams").json()


def test_an_experiment_that_wants_more_tasks_than_the_running_cluster_stops(tmp_path):
    from experiments.control import _ensure_target
    from resilience.state import write_state

    running = {
        "supervisor": {"pid": os.getpid()},
        "ready": True,
        "tasks": 0,
        "task_gpus": 1,
        "gateway_url": "http://127.0.0.1:1",
    }
    with chaos_home(tmp_path):
        write_state(running)
        with pytest.raises(RuntimeError) as caught:
            _ensure_target(None, {"tasks": "4", "task_gpus": 1})  # --var gives strings
        configuration: dict = {"tasks": 0}
        _ensure_target(None, configuration)  # no tasks asked: the running cluster serves
    assert "running cluster has 0 tasks" in str(caught.value)
    assert "inference-chaos up --tasks 4" in str(caught.value)
    assert configuration["gateway_url"] == "http://127.0.0.1:1"
