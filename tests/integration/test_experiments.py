"""Both experiments end to end through Chaos Toolkit, signals mid-fault, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from resilience.state import pid_alive, read_state
from tests.integration.cluster_fixtures import chaos_home, link_port, running_cluster

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SHORT = {
    "load_users": 8,
    "load_duration": 14,
    "warmup_s": 4,
    "prometheus_window_s": 25,
    "fault_duration": "5s",
    "nodes": 2,
    "gpus_per_node": 2,
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    home = tmp_path_factory.mktemp("chaos-home")
    with running_cluster(home, nodes=2, gpus=2) as state:
        yield home, state


class Run:
    """A `chaos run` in a subprocess, with its output folder and fault ledger at hand."""

    def __init__(
        self,
        tmp: Path,
        home: Path,
        experiment: str,
        config: dict | None = None,
        wrapper: bool = True,
    ) -> None:
        self.tmp, self.home = tmp, home
        var_file = tmp / "vars.json"
        var_file.write_text(json.dumps({"configuration": {**SHORT, **(config or {})}}))
        if wrapper:
            argv = [str(BIN / "inference-chaos"), "run", experiment, "--var-file", str(var_file)]
        else:
            argv = [
                str(BIN / "chaos"),
                "--no-version-check",
                "run",
                "--var-file",
                str(var_file),
                experiment,
            ]
        env = {
            **os.environ,
            "INFERENCE_CHAOS_HOME": str(home),
            "INFERENCE_CHAOS_OUT": str(tmp / "runs"),
        }
        self.stderr_path = tmp / "stderr.log"
        self.proc = subprocess.Popen(
            argv,
            cwd=tmp,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.stderr_path, "w"),
            start_new_session=True,
        )

    def active_fault(self, timeout: float = 60.0) -> dict:
        """Wait until the run's mirrored ledger shows an injected, not yet removed fault."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for path in (self.home / "faults").glob("*.json"):
                try:
                    records = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue
                active = [r for r in records if r["injected_at"] and not r["removed_at"]]
                if active:
                    return active[0]
            if self.proc.poll() is not None:
                raise AssertionError(f"run ended before a fault was active: {self.stderr()}")
            time.sleep(0.05)
        raise AssertionError("no fault became active")

    def wait(self, timeout: float = 120.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def run_dir(self) -> Path:
        dirs = list((self.tmp / "runs").iterdir())
        assert len(dirs) == 1, dirs
        return dirs[0]

    def journal(self) -> dict:
        return json.loads((self.run_dir() / "journal.json").read_text())


def proxy_faults(state: dict) -> list:
    return httpx.get(state["proxy_control_url"] + "/faults", timeout=2, trust_env=False).json()


def assert_cluster_whole(home: Path, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        with chaos_home(home):
            state = read_state()
        dead = [p["name"] for p in state["processes"] if not pid_alive(p["pid"])]
        if not dead or time.monotonic() > deadline:
            assert dead == []
            return state
        time.sleep(0.1)


def test_worker_kill_really_kills_and_leaves_no_fault(cluster, tmp_path):
    home, state = cluster
    run = Run(tmp_path, home, str(ROOT / "experiments/worker-kill.yaml"))
    fault = run.active_fault()
    victim = fault["victims"][0]
    pid = fault["details"]["pids"][victim]
    assert not pid_alive(pid), "the victim must really be dead during the fault"
    code = run.wait()
    journal = run.journal()
    verdict = journal["inference_chaos"]
    assert verdict["verdict"] in ("passed", "deviated"), (verdict, run.stderr())
    assert code == (0 if verdict["verdict"] == "passed" else 1)
    assert verdict["faults"][0]["removed_at"] > verdict["faults"][0]["injected_at"]
    assert {s["probe"] for s in verdict["slos"]} >= {"availability-slo", "ttft-p95-slo"}
    assert proxy_faults(state) == []
    whole = assert_cluster_whole(home)
    assert next(p for p in whole["processes"] if p["name"] == victim)["pid"] != pid
    load_pid = next(r for r in journal["run"] if r["activity"]["name"] == "start-streaming-load")[
        "output"
    ]["pid"]
    assert not pid_alive(load_pid)
    report = (run.run_dir() / "report.html").read_text()
    assert "fault-window" in report and victim in report and "pod-kill" in report
    assert f"verdict {verdict['verdict'].upper()}" in run.stderr()


def test_network_delay_with_the_cluster_down_through_chaos_cli(tmp_path):
    home = tmp_path / "home"
    run = Run(tmp_path, home, str(ROOT / "experiments/network-delay.yaml"), wrapper=False)
    try:
        fault = run.active_fault()
        with chaos_home(home):
            state = read_state()
        port = link_port(state, fault["victims"][0])
        started = time.monotonic()
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=5, trust_env=False)
        assert time.monotonic() - started >= 0.35, "the victim's link must really be delayed"
        code = run.wait()
    finally:
        run.wait(1)
    verdict = run.journal()["inference_chaos"]
    assert verdict["cluster_owned"] is True
    assert code == (0 if verdict["verdict"] == "passed" else 1), run.stderr()
    assert verdict["faults"][0]["params"]["delay_ms"] == 500.0
    assert read_state(home / "state.json") is None
    pids = [p["pid"] for p in state["processes"]] + [state["supervisor"]["pid"]]
    assert not [pid for pid in pids if pid_alive(pid)], "a process of the run survived it"
    assert (run.run_dir() / "report.html").exists()


@pytest.mark.parametrize(
    ("experiment", "sig"),
    [("worker-kill.yaml", signal.SIGTERM), ("network-delay.yaml", signal.SIGINT)],
)
def test_a_signal_mid_fault_removes_every_fault_and_the_load(cluster, tmp_path, experiment, sig):
    home, state = cluster
    run = Run(
        tmp_path,
        home,
        str(ROOT / "experiments" / experiment),
        {"fault_duration": "60s", "load_duration": 90},
    )
    fault = run.active_fault()
    os.kill(run.proc.pid, sig)
    started = time.monotonic()
    code = run.wait(30)
    assert code != 0 and time.monotonic() - started < 20
    journal = run.journal()
    assert journal["status"] == "interrupted"
    assert journal["inference_chaos"]["verdict"] == "interrupted"
    assert all(f["removed_at"] for f in journal["inference_chaos"]["faults"])
    assert proxy_faults(state) == []
    assert_cluster_whole(home)
    load_pid = next(r for r in journal["run"] if r["activity"]["name"] == "start-streaming-load")[
        "output"
    ]["pid"]
    assert not pid_alive(load_pid)
    assert fault["kind"] in ("pod-kill", "network-delay")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "experiment.yaml"
    path.write_text(text)
    return path


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("inference-chaos: ")]
    assert lines, stderr
    return lines[0]


def test_malformed_experiment_is_a_one_line_error(tmp_path):
    path = write(tmp_path, "title: broken\nmethod: [\n  - name: x\n")
    out = subprocess.run(
        [str(BIN / "inference-chaos"), "run", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "malformed YAML" in out.stderr
    assert str(path) in out.stderr and not (tmp_path / "chaos-runs").exists()


def test_unknown_fault_is_a_one_line_error(tmp_path):
    text = (
        (ROOT / "experiments/worker-kill.yaml")
        .read_text()
        .replace("func: pod_kill", "func: pod_explode")
    )
    out = subprocess.run(
        [str(BIN / "inference-chaos"), "run", str(write(tmp_path, text))],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "pod_explode" in out.stderr


def test_selector_without_match_stops_before_anything_is_injected(cluster, tmp_path):
    home, state = cluster
    text = (
        (ROOT / "experiments/worker-kill.yaml")
        .read_text()
        .replace(
            'selector: {labelSelectors: {role: worker, serving: "true"}}',
            "selector: {labelSelectors: {role: tpu}}",
        )
    )
    run = Run(tmp_path, home, str(write(tmp_path, text)))
    assert run.wait(60) == 1
    assert "selector matches nothing: role=tpu" in one_line_error(run.stderr())
    journal = run.journal()
    assert journal["inference_chaos"]["verdict"] == "failed"
    assert journal["inference_chaos"]["faults"] == [] and journal["run"] == []
    assert proxy_faults(state) == []
    assert_cluster_whole(home)


def test_unreachable_prometheus_fails_the_run_before_the_method(cluster, tmp_path):
    home, state = cluster
    run = Run(
        tmp_path,
        home,
        str(ROOT / "experiments/network-delay.yaml"),
        {"prometheus_url": "http://127.0.0.1:9"},
    )
    assert run.wait(60) == 1
    journal = run.journal()
    verdict = journal["inference_chaos"]
    assert verdict["verdict"] == "failed"
    assert any("127.0.0.1:9" in r for r in verdict["reasons"]), verdict["reasons"]
    assert verdict["faults"] == [] and journal["run"] == []
    assert (
        "127.0.0.1:9" in one_line_error(run.stderr().split("verdict")[0] + "\n" + run.stderr())
        or "127.0.0.1:9" in run.stderr()
    )


@pytest.mark.parametrize("experiment", ["raft-leader-kill.yaml", "raft-partition.yaml"])
def test_raft_experiments_judge_failover_and_linearizability(tmp_path, experiment):
    home = tmp_path / "home"
    run = Run(
        tmp_path,
        home,
        str(ROOT / "experiments" / experiment),
        {"nodes": 1, "gpus_per_node": 1, "failover_bound_s": 2.0, "fault_duration": 3},
    )
    fault = run.active_fault()
    with chaos_home(home):
        state = read_state()
    statuses = [
        httpx.get(f"{e}/status", timeout=1, trust_env=False).json()
        for e in state["raft_endpoints"]
        if not (
            fault["kind"] == "pod-kill"
            and e.endswith(
                str(
                    next(p for p in state["processes"] if p["name"] == fault["victims"][0])[
                        "ports"
                    ]["http"]
                )
            )
        )
    ]
    assert fault["victims"][0].startswith("raft-")
    code = run.wait(120)
    journal = run.journal()
    verdict = journal["inference_chaos"]
    assert verdict["verdict"] == "passed", (verdict["reasons"], run.stderr()[-2000:])
    assert code == 0
    checks = {s.get("check") for s in verdict["slos"]}
    assert {"linearizability", "raft-failover"} <= checks
    failover = next(s for s in verdict["slos"] if s.get("check") == "raft-failover")
    assert 0 < failover["failover_s"] <= 2.0 and failover["split_brain"] == []
    assert statuses, "the surviving replicas answered during the fault"
    assert read_state(home / "state.json") is None
    assert (run.run_dir() / "raft-history.jsonl").exists()


def test_raft_leader_kill_runs_unchanged_against_a_real_etcd(tmp_path):
    home = tmp_path / "home"
    with running_cluster(home, nodes=1, gpus=1, store="etcd") as state:
        assert state["store"] == "etcd"
        run = Run(
            tmp_path,
            home,
            str(ROOT / "experiments/raft-leader-kill.yaml"),
            {"failover_bound_s": 2.0, "fault_duration": 3},
        )
        fault = run.active_fault()
        victim = next(p for p in state["processes"] if p["name"] == fault["victims"][0])
        assert victim["kind"] == "etcd" and not pid_alive(victim["pid"])
        code = run.wait(120)
        verdict = run.journal()["inference_chaos"]
        assert verdict["verdict"] == "passed" and code == 0, verdict["reasons"]
        failover = next(s for s in verdict["slos"] if s.get("check") == "raft-failover")
        assert failover["failover_s"] <= 2.0
        assert_cluster_whole(home)
