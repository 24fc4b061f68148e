"""The alert rules and the GPU probes against the real Prometheus and a real simulated worker.

A `python -m resilience.worker` subprocess is scraped by a Prometheus started with the config
`render_config` generates (so the packaged rules file is loaded as the embedded cluster loads
it), through a file_sd target with the labels `scrape_targets` gives a worker.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from probes import gpu
from resilience.prometheus import ALERT_RULES, prometheus_argv, render_config

pytestmark = pytest.mark.integration

PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"
EXPECTED_ALERTS = {
    "GPUUtilHigh",
    "XIDFatal",
    "GPUThermalThrottle",
    "InferenceLatencyRegression",
    "InferenceThroughputDrop",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout_s: float, what: str) -> float:
    """Seconds until check() was true; AssertionError after timeout_s."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            if check():
                return time.monotonic() - started
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@pytest.fixture(scope="module")
def worker() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable, "-m", "resilience.worker", "--host", "127.0.0.1",
            "--port", str(port), "--name", "node-0-gpu0", "--node", "node-0", "--gpu", "0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: requests.get(f"{url}/health", timeout=1).ok, 10, "worker healthy")
        yield url
    finally:
        stop(process)


@pytest.fixture(scope="module")
def prometheus_url(tmp_path_factory, worker: str) -> Iterator[str]:
    if not Path(PROMETHEUS).exists():
        pytest.skip("the Debian prometheus package is not installed")
    run_dir = tmp_path_factory.mktemp("prometheus")
    targets = run_dir / "targets"
    targets.mkdir()
    labels = {"job": "worker", "instance_name": "node-0-gpu0", "app": "inference-worker"}
    labels |= {"role": "worker", "node": "node-0", "gpu": "0"}
    group = {"targets": [worker.removeprefix("http://")], "labels": labels}
    (targets / "cluster.json").write_text(json.dumps([group]))
    (run_dir / "prometheus.yml").write_text(render_config(targets))
    port = free_port()
    log = (run_dir / "prometheus.log").open("wb")
    process = subprocess.Popen(
        prometheus_argv(PROMETHEUS, port, str(run_dir)), stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: requests.get(f"{url}/-/ready", timeout=1).ok, 15, "Prometheus ready")
        yield url
    finally:
        stop(process)
        log.close()


def test_promtool_accepts_the_rules_file() -> None:
    if not shutil.which(PROMTOOL):
        pytest.skip("promtool (Debian package prometheus) is not installed")
    checked = subprocess.run(
        [PROMTOOL, "check", "rules", str(ALERT_RULES)], capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in checked.stdout


def test_generated_config_loads_the_alert_rules(prometheus_url: str) -> None:
    groups = requests.get(f"{prometheus_url}/api/v1/rules", timeout=5).json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert {rule["name"] for rule in rules} == EXPECTED_ALERTS
    assert all(rule["type"] == "alerting" for rule in rules)
    assert all(group["file"] == str(ALERT_RULES) for group in groups)


def test_xid_fault_is_seen_by_the_probe_and_fires_xidfatal(prometheus_url: str, worker: str):
    has_gpu = f"count({gpu.XID}{{node='node-0'}})"
    wait_until(
        lambda: requests.get(
            f"{prometheus_url}/api/v1/query", params={"query": has_gpu}, timeout=1
        ).json()["data"]["result"],
        15,
        "the worker's first scrape",
    )
    healthy = gpu.xid_seen(url=prometheus_url, within_s=30)
    assert healthy["ok"] is True and healthy["gpus_watched"] == 1
    assert gpu.gpu_throttled(url=prometheus_url, within_s=30)["ok"] is True
    memory = gpu.gpu_memory(url=prometheus_url)
    assert memory["ok"] is True and 0.85 < memory["gpus"][0]["used_share"] < 0.95

    fault = requests.put(f"{worker}/fault", json={"xid": 79, "healthy": False}, timeout=5)
    assert fault.status_code == 200, fault.text
    try:
        seen_after = wait_until(
            lambda: gpu.xid_seen(xid=79, within_s=30, expect=True, url=prometheus_url)["ok"],
            10,
            "xid_seen to report XID 79",
        )
        result = gpu.xid_seen(xid=79, node="node-0", within_s=30, url=prometheus_url)
        assert result["ok"] is False and result["fatal"] == [79]
        assert result["seen"][0]["gpu"] == "0" and result["seen"][0]["instance"] == "node-0-gpu0"
        assert seen_after < 5, f"XID took {seen_after:.1f}s to show (scrape interval 1s)"

        def firing() -> list[dict]:
            reply = requests.get(f"{prometheus_url}/api/v1/alerts", timeout=1).json()
            return [
                a
                for a in reply["data"]["alerts"]
                if a["labels"]["alertname"] == "XIDFatal" and a["state"] == "firing"
            ]

        wait_until(firing, 10, "XIDFatal to fire")
        alert = firing()[0]
        assert alert["labels"]["severity"] == "critical"
        summary = alert["annotations"]["summary"]
        assert "node-0" in summary and "79" in summary
    finally:
        requests.delete(f"{worker}/fault", timeout=5)
