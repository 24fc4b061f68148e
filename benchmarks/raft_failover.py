"""Failover time of our Raft store against etcd with equal timeouts (DESIGN section 9).

Failover = from the SIGKILL of the leader to the first write acknowledged by the new regime,
as the Raft probes measure it (`probes.raft.RaftObserver`: status polls every 10 ms and one
writer that starts a fresh write as soon as a new leader is named). Each store runs as three
members on loopback; a kill is followed by a restart of the killed member and a wait for a
stable cluster (every member up, one agreed leader and term) before the next kill.

Equal settings: etcd takes `--heartbeat-interval 50 --election-timeout 250` and draws each
election timeout from 1x to 2x the value (5 to 9 ticks of 50 ms); our store gets the same
heartbeat and an election timeout drawn from [250 ms, 500 ms]. etcd counts those ticks from a
heartbeat's arrival, so its effective timeout is up to one tick shorter (200-450 ms): our store
with that range is measured too, and so is our default config (150-300 ms). Both stores fsync.
etcd 3.4 runs with its defaults otherwise (check-quorum on, pre-vote off); ours keeps pre-vote
on, which costs it one extra round trip.

Run: `python -m benchmarks.raft_failover [--kills 10] [--stores ours,etcd,...]` (stores: ours,
etcd, ours-tick-matched, ours-default).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from probes.raft.clients import make_client
from probes.raft.observer import RaftObserver
from probes.stats import quantiles
from resilience.ports import free_ports

REPO = Path(__file__).resolve().parent.parent
STOP_WAIT_S = 5.0
HEARTBEAT_MS = 50
ELECTION_MS = 250
#: Our store with etcd's timing: etcd draws each election timeout from [1x, 2x).
ETCD_LIKE_CONFIG: dict[str, Any] = {
    "heartbeat_interval_s": HEARTBEAT_MS / 1000,
    "election_timeout_min_s": ELECTION_MS / 1000,
    "election_timeout_max_s": 2 * ELECTION_MS / 1000,
}
#: etcd counts its timeout in heartbeat ticks from a heartbeat's arrival, so the tick phase
#: makes its effective timeout 1x-2x minus one tick (200-450 ms): our store with that range.
TICK_MATCHED_CONFIG: dict[str, Any] = {
    **ETCD_LIKE_CONFIG,
    "election_timeout_min_s": (ELECTION_MS - HEARTBEAT_MS) / 1000,
    "election_timeout_max_s": (2 * ELECTION_MS - HEARTBEAT_MS) / 1000,
}
SETTLE_S = 0.5  # after the cluster is stable again, before the next kill
WARMUP_S = 0.3  # the observer sees the old leader and some writes before the kill
MEASURE_TIMEOUT_S = 10.0


# -- our store as member processes ------------------------------------------------------------


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
    """`size` replicas of `python -m resilience.raft` on free loopback ports, with the same
    verbs as tests/integration/etcd_cluster.py's EtcdCluster. Members are stopped by PID."""

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
        m = self.member(name)
        if m.process is None:
            raise RuntimeError(f"{name} was never started")
        with contextlib.suppress(ProcessLookupError):
            os.kill(m.process.pid, sig)
        if sig == signal.SIGKILL:
            m.process.wait(STOP_WAIT_S)

    def stop(self) -> None:
        """SIGKILL every replica by PID (a paused one dies too) and reap it."""
        for m in self.members:
            if m.running():
                assert m.process is not None
                with contextlib.suppress(ProcessLookupError):
                    os.kill(m.process.pid, signal.SIGKILL)
        for m in self.members:
            if m.process is not None:
                m.process.wait(STOP_WAIT_S)
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


# -- the measurement ----------------------------------------------------------------------------


class Cluster(Protocol):
    """What the benchmark needs of either store's cluster helper."""

    client_urls: list[str]

    def leader(self) -> str | None: ...

    def wait_for_leader(self, timeout_s: float = 15.0) -> str: ...

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None: ...

    def start_member(self, name: str) -> None: ...


@dataclass
class Kill:
    """One leader kill as the observer saw it (seconds from the kill)."""

    victim: str
    new_leader_s: float | None
    first_write_s: float | None
    ok: bool
    problems: list[str]


def measure_kill(cluster: Cluster, kind: str) -> Kill:
    """SIGKILL the leader and time the new leader and the first acknowledged write; then
    restart the victim and wait for a stable cluster."""
    victim = cluster.wait_for_leader()
    observer = RaftObserver(make_client(kind, cluster.client_urls, 0.5))
    observer.start()
    try:
        time.sleep(WARMUP_S)
        observer.mark_fault()
        cluster.kill(victim)

        def measured() -> bool:
            """Both seen: a write is only known to be the new regime's once the new leader
            is (a write the old leader acknowledged just after t0 must not count)."""
            try:
                verdict = observer.report(1.0)
            except ValueError:
                return False
            return verdict["failover_s"] is not None and verdict["first_write_s"] is not None

        observer.wait_for(measured, MEASURE_TIMEOUT_S)
        verdict = observer.report(failover_bound_s=MEASURE_TIMEOUT_S)
    finally:
        observer.stop()
        cluster.start_member(victim)
    cluster.wait_for_leader(30.0)
    time.sleep(SETTLE_S)
    return Kill(
        victim,
        verdict["failover_s"],
        verdict["first_write_s"],
        bool(verdict["ok"]),
        list(verdict["problems"]),
    )


def run_store(label: str, kind: str, cluster: Cluster, kills: int) -> list[Kill]:
    results = []
    for n in range(kills):
        k = measure_kill(cluster, kind)
        results.append(k)
        shown = "none" if k.first_write_s is None else f"{k.first_write_s * 1000:.0f} ms"
        leader = "none" if k.new_leader_s is None else f"{k.new_leader_s * 1000:.0f} ms"
        extra = "" if k.ok else f"  problems: {'; '.join(k.problems)}"
        print(
            f"  {label} kill {n + 1:2d}: {k.victim:7s} new leader {leader:>7s}, "
            f"first write {shown:>7s}{extra}",
            flush=True,
        )
    return results


def summary(kills: list[Kill]) -> dict[str, Any]:
    """Median and p99 of the failover (to first acknowledged write) and of the new leader."""
    writes = [k.first_write_s for k in kills if k.first_write_s is not None]
    leaders = [k.new_leader_s for k in kills if k.new_leader_s is not None]
    out: dict[str, Any] = {"kills": len(kills), "measured": len(writes)}
    if writes:
        out["median_s"], out["p99_s"] = quantiles(writes, [0.5, 0.99])
    if leaders:
        out["leader_median_s"], out["leader_p99_s"] = quantiles(leaders, [0.5, 0.99])
    out["problems"] = sum(1 for k in kills if not k.ok)
    return out


def etcd_cluster(base: Path) -> Any:
    """tests/integration/etcd_cluster.py's 3 members with our heartbeat and election timeout."""
    from tests.integration.etcd_cluster import EtcdCluster  # the helper the tests use

    return EtcdCluster(base, heartbeat_ms=HEARTBEAT_MS, election_ms=ELECTION_MS)


LABELS = {
    "ours-default": "ours (default 150-300 ms)",
    "ours-tick-matched": "ours (200-450 ms, as ticks)",
}


def _fmt(s: dict[str, Any]) -> str:
    if "median_s" not in s:
        return f"no failover measured ({s['kills']} kills)"
    return (
        f"median {s['median_s'] * 1000:.0f} ms, p99 {s['p99_s'] * 1000:.0f} ms "
        f"(new leader: median {s['leader_median_s'] * 1000:.0f} ms) over {s['measured']} kills"
        + (f", {s['problems']} with problems" if s["problems"] else "")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.raft_failover", description=__doc__)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--stores", default="ours,etcd,ours-tick-matched,ours-default")
    args = parser.parse_args(argv)
    stores = [s for s in args.stores.split(",") if s]
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="raft-failover-") as tmp:
        for store in stores:
            base = Path(tmp) / store
            if store == "ours":
                cluster: Any = OurRaftCluster(base, config=ETCD_LIKE_CONFIG)
                kind = "ours"
            elif store == "ours-tick-matched":
                cluster, kind = OurRaftCluster(base, config=TICK_MATCHED_CONFIG), "ours"
            elif store == "ours-default":
                cluster, kind = OurRaftCluster(base), "ours"
            elif store == "etcd":
                if not Path("/usr/bin/etcd").exists():
                    print("etcd: /usr/bin/etcd missing (Debian package etcd-server); skipped")
                    continue
                cluster, kind = etcd_cluster(base), "etcd"
            else:
                parser.error(f"unknown store {store!r}")
            print(f"== {store}: {args.kills} leader kills", flush=True)
            with cluster:
                results[store] = summary(run_store(store, kind, cluster, args.kills))
    print()
    print(f"failover (SIGKILL of the leader -> first acknowledged write), heartbeat "
          f"{HEARTBEAT_MS} ms, election timeout {ELECTION_MS}-{2 * ELECTION_MS} ms:")  # fmt: skip
    for store, s in results.items():
        print(f"  {LABELS.get(store, store):28s} {_fmt(s)}")
    ours, etcd = results.get("ours", {}), results.get("etcd", {})
    if "median_s" in ours and "median_s" in etcd:
        print(
            f"  ratio ours/etcd: median {ours['median_s'] / etcd['median_s']:.2f}, "
            f"p99 {ours['p99_s'] / etcd['p99_s']:.2f}"
        )
    return 0 if all("median_s" in s for s in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
