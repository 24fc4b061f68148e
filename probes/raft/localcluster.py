"""Small Raft clusters on loopback, ours or etcd, for the tests and benchmarks that judge probes.

One implementation for both stores, so a test and a benchmark start the same cluster and a probe
judged against etcd (Debian `etcd-server`, 3.4, the reference Raft) and against our store
(`python -m resilience.raft`) meets the same setup. Every member gets free 127.0.0.1 ports and a
data folder of its own under `base_dir`, and is signalled and stopped by its PID (never by
name), so nothing outlives the caller.

    with OurRaftCluster(tmp_path, config={...}) as cluster:   # or EtcdCluster(tmp_path)
        cluster.client_urls        # ["http://127.0.0.1:P", ...]
        cluster.leader()           # name of the member that leads, e.g. "raft-1" / "etcd-1"
        cluster.kill("raft-1")     # SIGKILL (or SIGSTOP / SIGCONT) by PID
        cluster.start_member("raft-1")  # restart it on its data
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from resilience.ports import free_ports

__all__ = ["EtcdCluster", "EtcdMember", "LocalRaftCluster", "OurRaftCluster", "Replica"]

REPO = Path(__file__).resolve().parents[2]
ETCD = "/usr/bin/etcd"
STOP_WAIT_S = 5.0
_GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
_ETCD34_ARCHES = {"amd64", "ppc64le"}


class LocalRaftCluster(Protocol):
    """The verbs both cluster helpers share (what a benchmark needs of either store)."""

    client_urls: list[str]

    def leader(self) -> str | None: ...

    def wait_for_leader(self, timeout_s: float = 15.0) -> str: ...

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None: ...

    def start_member(self, name: str) -> None: ...

    def stop(self, graceful: bool = False) -> None: ...


def _signal(process: subprocess.Popen[bytes] | None, name: str, sig: int) -> None:
    """Send `sig` by PID; after SIGKILL reap the process so its ports are free again."""
    if process is None:
        raise RuntimeError(f"{name} was never started")
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, sig)
    if sig == signal.SIGKILL:
        process.wait(STOP_WAIT_S)


def _stop(processes: Iterable[subprocess.Popen[bytes] | None], graceful: bool) -> None:
    """SIGKILL every live process by PID (a paused one dies too), or with `graceful` SIGCONT
    (a paused process would sit on the signal) and SIGTERM first; SIGKILL any that does not
    exit in time, and reap them all."""
    started = [p for p in processes if p is not None]
    for p in started:
        if p.poll() is not None:
            continue
        with contextlib.suppress(ProcessLookupError):
            if graceful:
                os.kill(p.pid, signal.SIGCONT)
                os.kill(p.pid, signal.SIGTERM)
            else:
                os.kill(p.pid, signal.SIGKILL)
    for p in started:
        try:
            p.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(STOP_WAIT_S)


# -- our store --------------------------------------------------------------------------------


@dataclass
class Replica:
    """One member of our store: its ports, data and process."""

    id: int
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return f"raft-{self.id}"

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class OurRaftCluster:
    """`size` replicas of `python -m resilience.raft` (ids 0..size-1, named "raft-<id>");
    `config` is the replicas' `--config`. As a context manager, always stopped."""

    def __init__(self, base_dir: Path, size: int = 3, config: dict[str, Any] | None = None):
        self.base_dir = Path(base_dir)
        self.config = dict(config or {})
        ports = free_ports(2 * size)
        self.members = [
            Replica(
                id=i,
                client_port=ports[2 * i],
                peer_port=ports[2 * i + 1],
                data_dir=self.base_dir / f"raft-{i}",
                log_path=self.base_dir / f"raft-{i}.log",
            )
            for i in range(size)
        ]
        self._http = httpx.Client(trust_env=False)

    @property
    def client_urls(self) -> list[str]:
        return [m.client_url for m in self.members]

    def member(self, name: str) -> Replica:
        return next(m for m in self.members if m.name == name)

    def start_member(self, name: str) -> None:
        """Start (or restart, keeping its data) one replica."""
        m = self.member(name)
        if m.running():
            return
        peers = {str(o.id): f"http://127.0.0.1:{o.peer_port}" for o in self.members if o is not m}
        argv = [
            sys.executable, "-m", "resilience.raft", "--id", str(m.id), "--host", "127.0.0.1",
            "--client-port", str(m.client_port), "--peer-port", str(m.peer_port),
            "--peers", json.dumps(peers), "--data-dir", str(m.data_dir),
            "--config", json.dumps(self.config),
        ]  # fmt: skip
        self.base_dir.mkdir(parents=True, exist_ok=True)
        with m.log_path.open("ab") as log:
            m.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)

    def start(self, timeout_s: float = 15.0) -> OurRaftCluster:
        for m in self.members:
            self.start_member(m.name)
        self.wait_for_leader(timeout_s)
        return self

    def status(self, name: str, timeout_s: float = 0.5) -> dict[str, Any] | None:
        """The replica's `GET /status`, or None when it does not answer."""
        try:
            r = self._http.get(self.member(name).client_url + "/status", timeout=timeout_s)
            return r.json() if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    def leader(self) -> str | None:
        """Name of the replica that says it leads (the first found)."""
        for m in self.members:
            if m.running():
                s = self.status(m.name)
                if s and s.get("role") == "leader":
                    return m.name
        return None

    def wait_for_leader(self, timeout_s: float = 15.0) -> str:
        """Wait until every running replica answers, names the same leader in the same term,
        and has applied what that leader committed; returns the leader's name."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for m in self.members:
                if m.process is not None and m.process.poll() not in (None, -signal.SIGKILL):
                    raise RuntimeError(f"{m.name} exited: see {m.log_path}")
            statuses = [self.status(m.name) for m in self.members if m.running()]
            if statuses and all(statuses):
                views = {(s["leader"], s["term"]) for s in statuses}  # type: ignore[index]
                leaders = [s for s in statuses if s and s["role"] == "leader"]
                if len(views) == 1 and len(leaders) == 1:
                    commit = leaders[0]["commit_index"]
                    if all(s and s["applied_index"] >= commit for s in statuses):
                        return f"raft-{leaders[0]['id']}"
            time.sleep(0.05)
        raise TimeoutError(f"our store elected no agreed leader within {timeout_s} s")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send a signal to one replica by PID (SIGKILL, SIGSTOP, SIGCONT)."""
        _signal(self.member(name).process, name, sig)

    def stop(self, graceful: bool = False) -> None:
        """Stop every replica by PID: SIGKILL, or SIGCONT + SIGTERM first with `graceful`."""
        _stop((m.process for m in self.members), graceful)
        self._http.close()

    def pids(self) -> list[int]:
        return [m.pid for m in self.members if m.pid]

    def __enter__(self) -> OurRaftCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- etcd -------------------------------------------------------------------------------------


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
    """`size` etcd members (named "etcd-<i>") with the given Raft timeouts; as a context
    manager, always stopped."""

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
        _signal(self.member(name).process, name, sig)

    def stop(self, graceful: bool = False) -> None:
        """Stop every member by PID. SIGKILL by default: test data need no clean shutdown, and
        a graceful etcd stop can take seconds; `graceful` sends SIGCONT + SIGTERM first."""
        _stop((m.process for m in self.members), graceful)

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
