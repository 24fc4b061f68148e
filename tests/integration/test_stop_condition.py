"""Stop conditions end to end: a real `chaos run` on the embedded cluster with real Prometheus.

A fault that fails nearly every request must be cut short by the burn-rate stop condition
(aborted, faults removed, the cluster serving again); a mild one must run to its end; a stop
condition that cannot be checked stops the run before anything is injected.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
import yaml

from resilience.state import pid_alive
from tests.integration.cluster_fixtures import running_cluster
from tests.integration.test_experiments import (
    Run,
    assert_cluster_whole,
    one_line_error,
    proxy_faults,
)

pytestmark = pytest.mark.integration

FAULT_HOLD_S = 60
GUARD = {"slo": 0.999, "max_burn_rate": 14.4, "window": "10s", "min_requests": 10, "poll": "0.5s"}
KILL_EVERY_WORKER = {
    "name": "kill-every-worker",
    "type": "action",
    "provider": {
        "type": "python",
        "module": "experiments.faults",
        "func": "pod_kill",
        "arguments": {
            "selector": {"labelSelectors": {"role": "worker"}},
            "mode": "all",
            "restart_after": None,
            "duration": f"{FAULT_HOLD_S}s",
        },
    },
}
DELAY_ONE_WORKER = {
    "name": "delay-one-worker",
    "type": "action",
    "provider": {
        "type": "python",
        "module": "experiments.faults",
        "func": "network_delay",
        "arguments": {
            "selector": {"labelSelectors": {"role": "worker"}},
            "mode": "one",
            "latency": "50ms",
            "duration": "4s",
        },
    },
}


def experiment(fault: dict, load_s: float, guard: dict | None = GUARD) -> dict:
    """A small experiment: streaming load, one fault, wait for the load; rollbacks always."""
    doc = {
        "version": "1.0.0",
        "title": f"stop condition: {fault['name']}",
        "description": "written by tests/integration/test_stop_condition.py",
        "configuration": {
            "target": "local",
            "gateway_url": "",
            "prometheus_url": "",
            "nodes": 1,
            "gpus_per_node": 2,
        },
        "runtime": {"rollbacks": {"strategy": "always"}},
        "controls": [
            {
                "name": "inference-chaos",
                "provider": {"type": "python", "module": "experiments.control"},
            }
        ],
        "method": [
            {
                "name": "start-streaming-load",
                "type": "action",
                "provider": {
                    "type": "python",
                    "module": "loadtests.actions",
                    "func": "start_load",
                    "arguments": {"users": 8, "duration": load_s, "max_tokens": 8},
                },
                "pauses": {"after": 3},
            },
            fault,
            {
                "name": "wait-for-load",
                "type": "action",
                "provider": {
                    "type": "python",
                    "module": "loadtests.actions",
                    "func": "wait_for_load",
                },
            },
        ],
        "rollbacks": [
            {
                "name": "remove-every-fault",
                "type": "action",
                "provider": {
                    "type": "python",
                    "module": "experiments.faults",
                    "func": "recover_all",
                },
            },
            {
                "name": "stop-load",
                "type": "action",
                "provider": {"type": "python", "module": "loadtests.actions", "func": "stop_load"},
            },
        ],
    }
    if guard is not None:
        doc["stop_condition"] = guard
    return doc


def start(tmp_path: Path, home: Path, doc: dict, config: dict | None = None) -> Run:
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return Run(tmp_path, home, str(path), config)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    home = tmp_path_factory.mktemp("chaos-home")
    with running_cluster(home, nodes=1, gpus=2) as state:
        yield home, state


def serves(gateway_url: str, timeout: float = 20.0) -> bool:
    """The gateway answers a chat completion with 200 again (workers back after the fault)."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            reply = httpx.post(
                gateway_url + "/v1/chat/completions", json=body, timeout=5, trust_env=False
            )
            if reply.status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


def test_a_burning_slo_aborts_the_run_and_removes_every_fault(cluster, tmp_path):
    home, state = cluster
    run = start(tmp_path, home, experiment(KILL_EVERY_WORKER, load_s=FAULT_HOLD_S + 10))
    fault = run.active_fault()
    victims = fault["victims"]
    assert len(victims) == 2 and not any(pid_alive(fault["details"]["pids"][v]) for v in victims)
    injected = time.monotonic()
    code = run.wait(FAULT_HOLD_S)
    ended_after = time.monotonic() - injected
    assert ended_after < 20, f"the run went on {ended_after:.1f}s after the fault"
    assert code != 0, run.stderr()

    journal = run.journal()
    verdict = journal["inference_chaos"]
    assert journal["status"] == "interrupted"
    assert verdict["verdict"] == "aborted", (verdict["reasons"], run.stderr()[-2000:])
    assert verdict["reasons"][0].startswith("stop condition: burn rate "), verdict["reasons"]
    assert "> 14.4x over " in verdict["reasons"][0]
    guard = verdict["stop_condition"]
    assert guard["breached"] and guard["burn_rate"] > 14.4
    assert guard["config"]["max_burn_rate"] == 14.4 and guard["config"]["window_s"] == 10.0
    assert guard["stopped_by"]["kind"] == "burn-rate" and guard["polls"] >= 1
    record = verdict["faults"][0]
    assert record["injected_at"] < guard["breached_at"] <= record["removed_at"]
    assert record["removed_at"] - record["injected_at"] < 20 and record["error"] is None
    assert all(f["removed_at"] for f in verdict["faults"])
    assert [r["activity"]["name"] for r in journal["run"]] == [
        "start-streaming-load",
        "kill-every-worker",
    ], "the method stops before its next activity"
    load_pid = journal["run"][0]["output"]["pid"]
    assert not pid_alive(load_pid)
    assert "inference-chaos: stop condition: burn rate" in run.stderr()
    assert "verdict ABORTED" in run.stderr()
    report = (run.run_dir() / "report.html").read_text()
    assert 'id="stop-condition"' in report and "v-aborted" in report

    assert proxy_faults(state) == []
    whole = assert_cluster_whole(home)
    assert all(
        next(p for p in whole["processes"] if p["name"] == v)["pid"] != fault["details"]["pids"][v]
        for v in victims
    ), "the killed workers were started again"
    assert serves(state["gateway_url"]), "the cluster serves again after the abort"


def test_a_mild_fault_under_a_stop_condition_runs_to_its_end(cluster, tmp_path):
    home, state = cluster
    assert serves(state["gateway_url"])
    run = start(tmp_path, home, experiment(DELAY_ONE_WORKER, load_s=9))
    code = run.wait(60)
    journal = run.journal()
    verdict = journal["inference_chaos"]
    assert verdict["verdict"] == "passed" and code == 0, (verdict["reasons"], run.stderr()[-2000:])
    guard = verdict["stop_condition"]
    assert not guard["breached"] and guard["breached_at"] is None and guard["stopped_by"] is None
    assert guard["judged_polls"] >= 3, guard
    assert guard["max_burn_rate_seen"] is not None and guard["max_burn_rate_seen"] <= 14.4
    record = verdict["faults"][0]
    assert record["removed_at"] - record["injected_at"] >= 4.0
    assert [r["activity"]["name"] for r in journal["run"]][-1] == "wait-for-load"
    report = (run.run_dir() / "report.html").read_text()
    assert "Stop condition held" in report


def test_a_malformed_stop_condition_is_bad_input_before_anything_runs(cluster, tmp_path):
    home, state = cluster
    guard = {**GUARD, "max_burn_rate": 0}
    run = start(tmp_path, home, experiment(KILL_EVERY_WORKER, load_s=10, guard=guard))
    assert run.wait(60) == 2  # refused by `inference-chaos run` before Chaos Toolkit starts
    assert "stop_condition.max_burn_rate: must be > 0" in one_line_error(run.stderr())
    assert not list(tmp_path.rglob("journal.json"))
    assert serves(state["gateway_url"])


def test_a_stop_condition_that_cannot_be_checked_stops_the_run_first(cluster, tmp_path):
    home, state = cluster
    config = {"prometheus_url": "http://127.0.0.1:9"}
    expected = "stop_condition: Prometheus at"
    run = start(tmp_path, home, experiment(KILL_EVERY_WORKER, load_s=10, guard=GUARD), config)
    assert run.wait(60) == 1
    assert expected in one_line_error(run.stderr())
    journal = run.journal()
    verdict = journal["inference_chaos"]
    assert verdict["verdict"] == "failed" and expected in verdict["reasons"][0]
    assert verdict["faults"] == [] and journal["run"] == []
    assert proxy_faults(state) == []
    assert json.loads((home / "state.json").read_text())["ready"] is True
