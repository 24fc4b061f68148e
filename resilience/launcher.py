"""`up`, `status` and `down` for the embedded cluster, from the caller's side.

The supervisor runs detached so the cluster outlives the command that started it (a user
brings it up once and runs many experiments). `down` asks the supervisor to stop and then
checks from outside that every pid is gone and every port is free.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from resilience import state as state_mod
from resilience.ports import port_in_use
from resilience.prometheus import find_prometheus
from resilience.topology import ClusterSpec


class ClusterError(RuntimeError):
    """A one-line problem with the embedded cluster, fit to print as it is."""


@dataclass
class UpOptions:
    nodes: int = 4
    gpus_per_node: int = 2
    worker_config: dict[str, Any] = field(default_factory=dict)
    gateway_config: dict[str, Any] = field(default_factory=dict)
    restart_delay: float = 1.0
    prometheus: bool = True
    raft_replicas: int = 3
    raft_config: dict[str, Any] = field(default_factory=dict)
    store: str = "ours"
    tasks: int = 0  # model replicas placed by the controllers; 0 = no controllers
    task_gpus: int = 1
    controllers: int = 2  # only when tasks > 0
    controller_config: dict[str, Any] = field(default_factory=dict)
    timeout: float = 30.0

    def cluster_spec(self) -> ClusterSpec:
        return ClusterSpec(
            nodes=self.nodes,
            gpus_per_node=self.gpus_per_node,
            worker_config=self.worker_config,
            gateway_config=self.gateway_config,
            prometheus=self.prometheus,
            raft_replicas=self.raft_replicas,
            raft_config=self.raft_config,
            store=self.store,
            tasks=self.tasks,
            task_gpus=self.task_gpus,
            controllers=self.controllers,
            controller_config=self.controller_config,
        )


def running_state() -> dict[str, Any] | None:
    """State of a cluster whose supervisor is alive and ready; stale files are removed."""
    st = state_mod.read_state()
    if not st:
        return None
    pid = st.get("supervisor", {}).get("pid")
    if not pid or not state_mod.pid_alive(pid):
        state_mod.remove_state()
        return None
    return st if st.get("ready") else None


def tasks_mismatch(state: dict[str, Any], tasks: int, task_gpus: int) -> str | None:
    """Why a running cluster cannot serve a caller that wants `tasks` tasks, or None if it can
    (a cluster started without tasks has no controllers; they cannot be added later)."""
    running, running_gpus = int(state.get("tasks") or 0), int(state.get("task_gpus") or 1)
    if tasks <= 0 or (tasks <= running and task_gpus == running_gpus):
        return None
    return (
        f"the running cluster has {running} tasks of {running_gpus} GPU(s) but {tasks} tasks "
        f"of {task_gpus} GPU(s) are asked for; restart it: 'inference-chaos down', then "
        f"'inference-chaos up --tasks {tasks} --task-gpus {task_gpus}'"
    )


def up(opts: UpOptions | None = None) -> dict[str, Any]:
    """Start the cluster unless one is running; return its state once every process is ready."""
    opts = opts or UpOptions()
    try:
        opts.cluster_spec().validate()
    except ValueError as exc:
        raise ClusterError(str(exc)) from None
    existing = running_state()
    if existing:
        problem = tasks_mismatch(existing, opts.tasks, opts.task_gpus)
        if problem:
            raise ClusterError(problem)
        return existing
    if opts.prometheus:
        find_prometheus()  # raises PrometheusMissing with the package to install
    home = state_mod.home()
    home.mkdir(parents=True, exist_ok=True)
    state_mod.remove_state()
    argv = [
        sys.executable,
        "-m",
        "resilience.supervisor",
        "--nodes",
        str(opts.nodes),
        "--gpus-per-node",
        str(opts.gpus_per_node),
        "--worker-config",
        json.dumps(opts.worker_config),
        "--gateway-config",
        json.dumps(opts.gateway_config),
        "--restart-delay",
        str(opts.restart_delay),
        "--ready-timeout",
        str(opts.timeout),
    ]
    argv += [
        "--raft-replicas",
        str(opts.raft_replicas),
        "--raft-config",
        json.dumps(opts.raft_config),
        "--store",
        opts.store,
        "--tasks",
        str(opts.tasks),
        "--task-gpus",
        str(opts.task_gpus),
        "--controllers",
        str(opts.controllers),
        "--controller-config",
        json.dumps(opts.controller_config),
    ]
    if not opts.prometheus:
        argv.append("--no-prometheus")
    log_path = home / "supervisor.log"
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=str(Path(__file__).resolve().parent.parent),
        )
    deadline = time.monotonic() + opts.timeout + 5
    while time.monotonic() < deadline:
        st = state_mod.read_state()
        if st and st.get("error"):
            proc.wait(timeout=10)
            state_mod.remove_state()
            raise ClusterError(f"embedded cluster failed to start: {st['error']}")
        if st and st.get("ready") and st.get("supervisor", {}).get("pid") == proc.pid:
            return st
        if proc.poll() is not None:
            raise ClusterError(
                f"embedded cluster supervisor exited with code {proc.returncode} (see {log_path})"
            )
        time.sleep(0.05)
    _stop_supervisor(proc.pid, timeout=10)
    raise ClusterError(f"embedded cluster not ready after {opts.timeout:.0f}s (see {log_path})")


def status() -> dict[str, Any] | None:
    """The live state with each process's liveness checked from outside."""
    st = running_state()
    if not st:
        return None
    for p in st["processes"]:
        p["alive"] = bool(p.get("pid")) and state_mod.pid_alive(p["pid"])
    return st


def _stop_supervisor(pid: int, timeout: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and state_mod.pid_alive(pid):
        _reap(pid)
        time.sleep(0.05)
    if state_mod.pid_alive(pid):
        os.kill(pid, signal.SIGKILL)


def _reap(pid: int) -> None:
    """Collect the supervisor's exit status if this process happens to be its parent."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def down(timeout: float = 15.0) -> dict[str, Any]:
    """Stop everything; verify that no pid of the cluster lives on and no port stays bound."""
    st = state_mod.read_state()
    if not st:
        return {"stopped": False, "reason": "no cluster running"}
    sup_pid = st.get("supervisor", {}).get("pid")
    control = st.get("supervisor", {}).get("control_url")
    if sup_pid and state_mod.pid_alive(sup_pid):
        try:
            httpx.post(f"{control}/shutdown", timeout=1.0)
        except httpx.HTTPError:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and state_mod.pid_alive(sup_pid):
            _reap(sup_pid)
            time.sleep(0.05)
        if state_mod.pid_alive(sup_pid):
            _stop_supervisor(sup_pid, timeout=3)
    leftovers = []
    for p in st.get("processes", []):
        pid = p.get("pid")
        if pid and state_mod.pid_alive(pid) and _is_ours(pid):
            leftovers.append(p["name"])
            os.kill(pid, signal.SIGKILL)
    ports = [port for p in st.get("processes", []) for port in p.get("ports", {}).values()]
    ports += [link["listen_port"] for link in st.get("links", [])]
    deadline = time.monotonic() + 5
    busy = [port for port in ports if port_in_use(port)]
    while busy and time.monotonic() < deadline:
        time.sleep(0.1)
        busy = [port for port in busy if port_in_use(port)]
    state_mod.remove_state()
    return {"stopped": True, "killed_leftovers": leftovers, "ports_still_bound": busy}


def _is_ours(pid: int) -> bool:
    """Guard against pid reuse: only kill a process whose command line is one of ours."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return "resilience." in cmd or "prometheus" in cmd
