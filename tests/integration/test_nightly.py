"""`inference-chaos nightly` end to end: two short experiments on one cluster, and a night where
one experiment file is broken and another crashes mid-fault with its load running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from resilience.ports import port_in_use
from resilience.state import pid_alive, read_state

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SHORT = [
    "nodes=2",
    "gpus_per_node=2",
    "load_users=8",
    "load_duration=14",
    "warmup_s=4",
    "prometheus_window_s=25",
    "fault_duration=4",
    # a kill under load cuts the streams that already had tokens: 2-3 of ~370 in 14 s
    "availability_target=0.99",
    "failover_bound_s=2.0",
]
# Injects a network delay and starts load, then the chaos process aborts: no rollback runs,
# so the fault and Locust outlive it unless the suite removes them.
CRASHING = """
version: 1.0.0
title: A run that crashes with a fault active and its load running
description: os.abort() in the method, after the fault and the load started.
tags: [nightly]
configuration:
  target: local
  nodes: 2
  gpus_per_node: 2
controls:
  - name: inference-chaos
    provider: {type: python, module: experiments.control}
method:
  - name: start-streaming-load
    type: action
    provider:
      type: python
      module: loadtests.actions
      func: start_load
      arguments: {users: 2, duration: 60, max_tokens: 8}
  - name: delay-one-worker
    type: action
    provider:
      type: python
      module: experiments.faults
      func: network_delay
      arguments:
        selector: {labelSelectors: {role: worker}}
        mode: one
        latency: 300ms
  - name: crash
    type: action
    provider: {type: python, module: os, func: abort}
"""


class Night:
    """`inference-chaos nightly` in a subprocess, watched from outside: every pid and port the
    cluster had while it ran is noted, so the test can prove none outlives the suite."""

    def __init__(
        self, tmp: Path, experiments: list[str], variables: list[str], extra: tuple = ()
    ) -> None:
        self.home, self.out = tmp / "home", tmp / "night"
        self.pids: set[int] = set()
        self.supervisors: set[int] = set()
        self.ports: set[int] = set()
        argv = [str(BIN / "inference-chaos"), "nightly", *experiments, "--out", str(self.out)]
        for var in variables:
            argv += ["--var", var]
        argv += list(extra)
        env = {**os.environ, "INFERENCE_CHAOS_HOME": str(self.home)}
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self._watching = True
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while self._watching:
            state = read_state(self.home / "state.json")
            if state:
                self.pids |= {p["pid"] for p in state["processes"] if p.get("pid")}
                self.pids.add(state["supervisor"]["pid"])
                self.supervisors.add(state["supervisor"]["pid"])
                self.ports |= {port for p in state["processes"] for port in p["ports"].values()}
                self.ports |= {link["listen_port"] for link in state["links"]}
            time.sleep(0.2)

    def wait(self, timeout: float) -> tuple[int, str, str]:
        try:
            stdout, stderr = self.proc.communicate(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            self._watching = False
            self._watcher.join(timeout=2)
        return self.proc.returncode, stdout, stderr

    def summary(self) -> dict:
        return json.loads((self.out / "summary.json").read_text())

    def assert_nothing_left(self) -> None:
        assert self.pids, "the watcher never saw the cluster"
        assert [pid for pid in self.pids if pid_alive(pid)] == []
        assert [port for port in self.ports if port_in_use(port)] == []
        assert read_state(self.home / "state.json") is None
        needle = f"INFERENCE_CHAOS_HOME={self.home}".encode()
        survivors = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    environ = (entry / "environ").read_bytes().split(b"\0")
                except OSError:
                    continue
                if needle in environ and pid_alive(int(entry.name)):
                    survivors.append(int(entry.name))
        assert survivors == [], "a process started by the suite outlived it"


def test_two_experiments_pass_on_one_cluster_and_leave_nothing(tmp_path):
    night = Night(tmp_path, ["worker-kill", "raft-leader-kill"], SHORT)
    code, stdout, stderr = night.wait(timeout=150)
    assert code == 0, stdout + stderr[-3000:]
    names = ["worker-kill", "raft-leader-kill"]
    for name in names:
        folder = night.out / name
        assert {"journal.json", "report.html", "chaos.log"} <= {p.name for p in folder.iterdir()}
        journal = json.loads((folder / "journal.json").read_text())
        assert journal["inference_chaos"]["run_dir"] == str(folder.resolve())
        vars_file = json.loads((folder / "vars.json").read_text())["configuration"]
        assert vars_file["nodes"] == 2 and vars_file["gpus_per_node"] == 2
    assert (night.out / "worker-kill" / "records.jsonl").stat().st_size > 0
    raft_vars = json.loads((night.out / "raft-leader-kill/vars.json").read_text())
    assert "load_users" not in raft_vars["configuration"], "only keys the experiment declares"
    assert not (night.out / ".staging").exists()
    summary = night.summary()
    assert [e["name"] for e in summary["experiments"]] == names
    assert [e["verdict"] for e in summary["experiments"]] == ["passed", "passed"]
    worker, raft = summary["experiments"]
    assert worker["file"] == "experiments/worker-kill.yaml"
    assert worker["report"] == "worker-kill/report.html"
    assert {"availability", "ttft_p95_s"} <= set(worker["figures"])
    assert raft["figures"]["linearizable"] is True and 0 < raft["figures"]["time_to_new_leader_s"]
    for e in summary["experiments"]:
        assert e["exit_code"] == 0 and e["reset"]["ok"] and e["checks"]
        assert 0 < e["overhead_s"] < e["duration_s"]
        assert e["phases_s"]["method"] > 5
    assert summary["score"]["value"] == 1.0 and summary["regressions"] == []
    cases = ET.parse(night.out / "junit.xml").getroot().iter("testcase")
    assert sorted(c.get("name") for c in cases) == sorted(names)
    assert "worker-kill/report.html" in (night.out / "index.html").read_text()
    assert "[2/2] raft-leader-kill  PASS" in stderr and "method: kill-one-worker" in stderr
    assert "nightly: 2/2 passed" in stdout
    night.assert_nothing_left()


def test_a_broken_and_a_crashing_experiment_cost_only_themselves(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("title: broken\nmethod: [\n  - name: x\n")
    crashing = tmp_path / "crashing.yaml"
    crashing.write_text(CRASHING)
    raft_vars = ["nodes=2", "gpus_per_node=2", "fault_duration=4", "failover_bound_s=2.0"]
    night = Night(tmp_path, [str(broken), str(crashing), "raft-leader-kill"], raft_vars)
    code, stdout, stderr = night.wait(timeout=120)
    assert code == 1, stdout + stderr[-3000:]
    by_name = {e["name"]: e for e in night.summary()["experiments"]}
    assert list(by_name) == ["broken", "crashing", "raft-leader-kill"]
    assert by_name["broken"]["verdict"] == "failed" and by_name["broken"]["exit_code"] == 2
    assert "malformed YAML" in by_name["broken"]["reasons"][0]
    crashed = by_name["crashing"]
    assert crashed["verdict"] == "crashed" and crashed["exit_code"] == -signal.SIGABRT
    assert any("left processes running" in r and "locust" in r for r in crashed["reasons"])
    assert any(a.startswith("fault network-delay on worker-") for a in crashed["reset"]["actions"])
    assert crashed["reset"]["ok"]
    assert by_name["raft-leader-kill"]["verdict"] == "passed", by_name["raft-leader-kill"]
    cases = ET.parse(night.out / "junit.xml").getroot().iter("testcase")
    assert len(list(cases)) == 3
    assert "CRASHED" in stderr and "reset undid: fault network-delay" in stderr
    night.assert_nothing_left()


def test_a_mess_the_reset_cannot_clear_in_time_restarts_the_cluster(tmp_path):
    """A worker killed and held by a crashed run needs a restart and a gateway health check to
    be whole again: far more than the 0.1 s this night allows, so the suite fails the
    crashed run for it and starts a new cluster, on which the next experiment still passes."""
    crashing = tmp_path / "kills.yaml"
    crashing.write_text(
        CRASHING.replace("func: network_delay", "func: pod_kill").replace(
            "latency: 300ms", "restart_after: null"
        )
    )
    raft_vars = ["nodes=2", "gpus_per_node=2", "fault_duration=4", "failover_bound_s=2.0"]
    night = Night(
        tmp_path, [str(crashing), "raft-leader-kill"], raft_vars, ("--reset-deadline", "0.1")
    )
    code, stdout, stderr = night.wait(timeout=120)
    assert code == 1, stdout + stderr[-3000:]
    kills, raft = night.summary()["experiments"]
    assert kills["verdict"] == "crashed" and not kills["reset"]["ok"]
    assert any("the suite restarted it" in r for r in kills["reasons"]), kills["reasons"]
    assert kills["reset"]["problems"], kills["reset"]  # what was still wrong at the deadline
    assert raft["verdict"] == "passed" and raft["reset"]["ok"], raft["reasons"]
    assert len(night.supervisors) == 2, "one cluster at the start, one after the failed reset"
    night.assert_nothing_left()
