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
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probes.raft.clients import make_client
from probes.raft.localcluster import EtcdCluster, LocalRaftCluster, OurRaftCluster
from probes.raft.observer import RaftObserver
from probes.stats import quantiles

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


@dataclass
class Kill:
    """One leader kill as the observer saw it (seconds from the kill)."""

    victim: str
    new_leader_s: float | None
    first_write_s: float | None
    ok: bool
    problems: list[str]


def measure_kill(cluster: LocalRaftCluster, kind: str) -> Kill:
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


def run_store(label: str, kind: str, cluster: LocalRaftCluster, kills: int) -> list[Kill]:
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


def etcd_cluster(base: Path) -> EtcdCluster:
    """The tests' 3 etcd members with our heartbeat and election timeout."""
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
