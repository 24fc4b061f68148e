"""A real etcd cluster on loopback, for tests and benchmarks that judge Raft probes against it.

etcd (Debian `etcd-server`, 3.4) is the reference Raft: probes that pass against it and
against our store measure the same thing. Every member gets free 127.0.0.1 ports and a data
folder of its own, and is stopped by its PID (never by name), so nothing outlives the test.

    with EtcdCluster(tmp_path, heartbeat_ms=50, election_ms=250) as cluster:
        cluster.client_urls        # ["http://127.0.0.1:P", ...]
        cluster.leader()           # name of the member that leads, e.g. "etcd-1"
        cluster.kill("etcd-1")     # SIGKILL
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from resilience.ports import free_ports

ETCD = "/usr/bin/etcd"
STOP_WAIT_S = 5.0
_GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
_ETCD34_ARCHES = {"amd64", "ppc64le"}


@dataclass
class EtcdMember:
    name: str
    client_url: str
    peer_url: str
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class EtcdCluster:
    """`size` etcd members with the given Raft timeouts; as a context manager, always stopped."""

    def __init__(
        self,
        base_dir: Path,
        size: int = 3,
        heartbeat_ms: int = 50,
        election_ms: int = 250,
        etcd: str = ETCD,
    ) -> None:
        self.base_dir = Path(base_dir)
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.etcd = etcd
        self.token = f"chaos-{uuid.uuid4().hex[:8]}"  # keeps two test clusters from merging
        ports = free_ports(2 * size)
        self.members = [
            EtcdMember(
                name=f"etcd-{i}",
                client_url=f"http://127.0.0.1:{ports[2 * i]}",
                peer_url=f"http://127.0.0.1:{ports[2 * i + 1]}",
                data_dir=self.base_dir / f"etcd-{i}" / "data",
                log_path=self.base_dir / f"etcd-{i}" / "etcd.log",
            )
            for i in range(size)
        ]

    @property
    def client_urls(self) -> list[str]:
        return [m.client_url for m in self.members]

    def member(self, name: str) -> EtcdMember:
        return next(m for m in self.members if m.name == name)

    def _command(self, m: EtcdMember) -> list[str]:
        initial = ",".join(f"{x.name}={x.peer_url}" for x in self.members)
        state = "existing" if (m.data_dir / "member").exists() else "new"
        return [
            self.etcd,
            "--name", m.name,
            "--data-dir", str(m.data_dir),
            "--listen-client-urls", m.client_url,
            "--advertise-client-urls", m.client_url,
            "--listen-peer-urls", m.peer_url,
            "--initial-advertise-peer-urls", m.peer_url,
            "--initial-cluster", initial,
            "--initial-cluster-state", state,
            "--initial-cluster-token", self.token,
            "--heartbeat-interval", str(self.heartbeat_ms),
            "--election-timeout", str(self.election_ms),
            "--logger", "zap",
        ]  # fmt: skip

    def start_member(self, name: str) -> None:
        """Start (or restart, keeping its data) one member."""
        m = self.member(name)
        if m.running():
            return
        m.data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        arch = _GO_ARCH.get(platform.machine(), platform.machine())
        if arch not in _ETCD34_ARCHES:  # etcd 3.4 refuses to start there unless told
            env.setdefault("ETCD_UNSUPPORTED_ARCH", arch)
        with m.log_path.open("ab") as log:
            m.process = subprocess.Popen(
                self._command(m), stdout=log, stderr=subprocess.STDOUT, env=env
            )

    def start(self, timeout_s: float = 15.0) -> EtcdCluster:
        for m in self.members:
            self.start_member(m.name)
        self.wait_for_leader(timeout_s)
        return self

    def status(self, name: str, timeout_s: float = 0.5) -> dict[str, Any] | None:
        """The member's /v3/maintenance/status answer, or None when it does not answer."""
        try:
            r = httpx.post(
                self.member(name).client_url + "/v3/maintenance/status",
                json={},
                timeout=timeout_s,
                trust_env=False,
            )
            r.raise_for_status()
            return r.json()
        except (httpx.HTTPError, ValueError):
            return None

    def leader(self) -> str | None:
        """Name of the member that says it leads (its own id is the leader it reports)."""
        for m in self.members:
            if not m.running():
                continue
            s = self.status(m.name)
            if s and s.get("leader") and s["leader"] == s.get("header", {}).get("member_id"):
                return m.name
        return None

    def wait_for_leader(self, timeout_s: float = 15.0) -> str:
        """Wait until a leader is elected and every running member answers with it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for m in self.members:
                if m.process is not None and m.process.poll() is not None and m.pid:
                    if m.process.returncode not in (-signal.SIGKILL, -signal.SIGTERM):
                        raise RuntimeError(f"{m.name} exited: see {m.log_path}")
            statuses = [self.status(m.name) for m in self.members if m.running()]
            leaders = {s.get("leader") for s in statuses if s}
            if statuses and all(statuses) and len(leaders) == 1 and None not in leaders:
                name = self.leader()
                if name:
                    return name
            time.sleep(0.05)
        raise TimeoutError(f"etcd elected no leader within {timeout_s} s (logs in {self.base_dir})")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send a signal to one member by PID (SIGKILL to crash it, SIGSTOP to pause it)."""
        m = self.member(name)
        if m.process is None:
            raise RuntimeError(f"{name} was never started")
        with contextlib.suppress(ProcessLookupError):
            os.kill(m.process.pid, sig)
        if sig == signal.SIGKILL:
            m.process.wait(STOP_WAIT_S)

    def stop(self, graceful: bool = False) -> None:
        """Stop every member by PID. SIGKILL by default: test data need no clean shutdown, and
        a graceful etcd stop can take seconds. `graceful` sends SIGCONT (a paused member would
        sit on the signal) and SIGTERM first, then SIGKILL for any that does not exit in time."""
        for m in self.members:
            if m.process is None or m.process.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                if graceful:
                    os.kill(m.process.pid, signal.SIGCONT)
                    os.kill(m.process.pid, signal.SIGTERM)
                else:
                    os.kill(m.process.pid, signal.SIGKILL)
        for m in self.members:
            if m.process is None:
                continue
            try:
                m.process.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                m.process.kill()
                m.process.wait(STOP_WAIT_S)

    def pids(self) -> list[int]:
        return [m.pid for m in self.members if m.pid]

    def __enter__(self) -> EtcdCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
