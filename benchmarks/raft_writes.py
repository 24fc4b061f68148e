"""Acknowledged writes per second of our Raft store: 3 replicas, fsync on, 1/4/16 clients.

Each client puts to a key of its own, one write at a time, through the probes' client (which
follows redirects to the leader), for a fixed time after a short warm-up; only writes the
store acknowledged count. etcd (3 members, same client library, same 50/250 ms timeouts) is
measured the same way as a reference, so the ratio says something about our store rather
than about this machine or the Python client, which shares the 2 cores with the servers.

Run: `python -m benchmarks.raft_writes [--clients 1,4,16] [--seconds 5] [--stores ours,etcd]`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.raft_failover import ETCD_LIKE_CONFIG, OurRaftCluster, etcd_cluster
from probes.raft.clients import OperationFailed, OutcomeUnknown, make_client

WARMUP_S = 0.5
OP_TIMEOUT_S = 2.0


async def write_rate(kind: str, endpoints: list[str], clients: int, seconds: float) -> dict:
    """Acknowledged writes/s with `clients` concurrent writers, and the failures seen."""
    client = make_client(kind, endpoints, OP_TIMEOUT_S)
    counts = {"ok": 0, "fail": 0, "unknown": 0}
    latencies: list[float] = []
    measuring = False
    stop = asyncio.Event()

    async def writer(n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            began = time.perf_counter()
            try:
                await client.put(f"bench-writes-{n}", str(i), OP_TIMEOUT_S)
                outcome = "ok"
            except OperationFailed:
                outcome = "fail"
            except OutcomeUnknown:
                outcome = "unknown"
            if measuring:
                counts[outcome] += 1
                if outcome == "ok":
                    latencies.append(time.perf_counter() - began)

    tasks = [asyncio.create_task(writer(n)) for n in range(clients)]
    try:
        await asyncio.sleep(WARMUP_S)
        measuring, started = True, time.perf_counter()
        await asyncio.sleep(seconds)
        measuring, elapsed = False, time.perf_counter() - started
        stop.set()
        await asyncio.wait(tasks, timeout=OP_TIMEOUT_S + 1)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.aclose()
    latencies.sort()
    return {
        "clients": clients,
        "writes_per_s": counts["ok"] / elapsed,
        "counts": counts,
        "median_ms": 1000 * latencies[len(latencies) // 2] if latencies else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.raft_writes", description=__doc__)
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--stores", default="ours,etcd")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.clients.split(",") if c]
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="raft-writes-") as tmp:
        for store in [s for s in args.stores.split(",") if s]:
            base = Path(tmp) / store
            if store == "ours":
                cluster: Any = OurRaftCluster(base, config={**ETCD_LIKE_CONFIG, "fsync": True})
            elif store == "etcd":
                if not Path("/usr/bin/etcd").exists():
                    print("etcd: /usr/bin/etcd missing (Debian package etcd-server); skipped")
                    continue
                cluster = etcd_cluster(base)
            else:
                parser.error(f"unknown store {store!r}")
            with cluster:
                for clients in levels:
                    r = asyncio.run(write_rate(store, cluster.client_urls, clients, args.seconds))
                    results.setdefault(store, []).append(r)
                    median = "-" if r["median_ms"] is None else f"{r['median_ms']:.1f} ms"
                    print(
                        f"  {store:5s} {clients:3d} clients: {r['writes_per_s']:7.0f} writes/s "
                        f"(median latency {median}; failed {r['counts']['fail']}, "
                        f"unknown {r['counts']['unknown']})",
                        flush=True,
                    )
    ours, etcd = results.get("ours", []), results.get("etcd", [])
    if ours and etcd:
        print("ratio ours/etcd (writes/s): " + ", ".join(
            f"{o['clients']} clients {o['writes_per_s'] / e['writes_per_s']:.2f}"
            for o, e in zip(ours, etcd, strict=True) if e["writes_per_s"]
        ))  # fmt: skip
    return 0 if all(r["counts"]["ok"] for rs in results.values() for r in rs) else 1


if __name__ == "__main__":
    sys.exit(main())
