"""The embedded cluster as a user drives it: up, status, kill and restart, down."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

from resilience import launcher
from resilience.state import pid_alive, read_state
from tests.integration.cluster_fixtures import chaos_home, process, running_cluster

pytestmark = pytest.mark.integration


def wait_for(predicate, timeout=10.0, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout}s")


def test_up_serves_streams_scrapes_and_down_leaves_nothing(tmp_path):
    with running_cluster(tmp_path, nodes=2, gpus=2) as state:
        names = {p["name"] for p in state["processes"]}
        assert {"worker-n0-g0", "worker-n1-g1", "gateway", "faultproxy", "prometheus"} <= names
        assert all(pid_alive(p["pid"]) for p in state["processes"])
        body = {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 4,
            "stream": True,
        }
        with httpx.stream(
            "POST",
            state["gateway_url"] + "/v1/chat/completions",
            json=body,
            timeout=10,
            trust_env=False,
        ) as r:
            text = "".join(r.iter_text())
        assert r.status_code == 200 and text.rstrip().endswith("data: [DONE]")

        def scraped():
            r = httpx.get(
                state["prometheus_url"] + "/api/v1/query",
                params={"query": 'up{role="worker"}'},
                timeout=2,
                trust_env=False,
            )
            return len(r.json()["data"]["result"]) == 4

        wait_for(scraped, timeout=15)
    assert read_state(tmp_path / "state.json") is None


def test_a_killed_worker_is_restarted_unless_held(tmp_path):
    with running_cluster(tmp_path, nodes=1, gpus=2, restart_delay=0.2) as state:
        control = state["supervisor"]["control_url"]
        victim = process(state, "worker-n0-g0")
        os.kill(victim["pid"], 9)
        new = wait_for(
            lambda: (
                (p := process(launcher.status(), "worker-n0-g0"))["pid"] != victim["pid"]
                and p["alive"]
                and p
            )
        )
        assert new["restarts"] == 1

        httpx.post(f"{control}/processes/worker-n0-g0/hold", json={"until": None}, timeout=2)
        os.kill(new["pid"], 9)
        time.sleep(1.0)
        held = process(launcher.status(), "worker-n0-g0")
        assert held["pid"] == new["pid"] and not held["alive"]
        httpx.post(f"{control}/processes/worker-n0-g0/release", timeout=2)
        wait_for(lambda: process(launcher.status(), "worker-n0-g0")["alive"])


def test_up_twice_reuses_the_running_cluster(tmp_path):
    with running_cluster(tmp_path, nodes=1, gpus=1) as state:
        again = launcher.up(launcher.UpOptions(nodes=1, gpus_per_node=1))
        assert again["supervisor"]["pid"] == state["supervisor"]["pid"]


def test_missing_prometheus_is_a_one_line_error(tmp_path):
    env = {
        **os.environ,
        "INFERENCE_CHAOS_HOME": str(tmp_path),
        "PATH": os.path.dirname(sys.executable),
    }
    out = subprocess.run(
        [sys.executable, "-m", "inference_chaos.cli", "up"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "apt-get install prometheus" in lines[0]
    with chaos_home(tmp_path):
        assert launcher.running_state() is None


def test_cli_status_and_down(tmp_path):
    env = {**os.environ, "INFERENCE_CHAOS_HOME": str(tmp_path)}
    cli = [sys.executable, "-m", "inference_chaos.cli"]
    try:
        up = subprocess.run(
            cli + ["up", "--nodes", "1", "--gpus-per-node", "2"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert up.returncode == 0, up.stderr
        status = subprocess.run(
            cli + ["status"], env=env, capture_output=True, text=True, timeout=30
        )
        assert "worker-n0-g1" in status.stdout and "role=worker" in status.stdout
    finally:
        down = subprocess.run(cli + ["down"], env=env, capture_output=True, text=True, timeout=60)
    assert down.returncode == 0 and "cluster down" in down.stdout
    after = subprocess.run(cli + ["status"], env=env, capture_output=True, text=True, timeout=30)
    assert after.returncode == 3
