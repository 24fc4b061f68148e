"""A store known to be wrong must be caught: the checker is only as good as what it rejects.

Three replicas started directly (`python -m resilience.raft`). In the opt-in UNSAFE mode
(`unsafe_local_reads`, resilience/raft/unsafe.py) a replica answers GET from its own state
machine. The scenario: write v1; pause the leader (SIGSTOP); write v2 through the new leader;
resume the old leader and read from it at once, before it hears of its successor. The unsafe
store returns v1 after v2 was acknowledged: the checker must say `illegal` and name that read.
With the safe default, the same scenario must yield a linearizable history.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from probes.linearizability import Verdict, check_file, counterexample_text, verdict_text
from probes.raft.clients import OperationFailed, OutcomeUnknown, RaftStoreClient
from probes.raft.localcluster import OurRaftCluster
from resilience.state import pid_alive

pytestmark = pytest.mark.integration

KEY = "wrong-store/k"
STALE_READS = 3  # read from the old leader this many times, back to back, after resuming it


@dataclass
class Scenario:
    """The recorded history and which of its lines are reads from the resumed old leader."""

    history: Path
    old_leader_reads: list[int]  # operation ids (line numbers from 0) in the history
    records: list[dict[str, Any]]


class Recorder:
    """Appends one history record per client call, in the docs/internals.md format."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def call(
        self,
        endpoints: list[str],
        op: str,
        value: str | None,
        action: Callable[[RaftStoreClient], Awaitable[Any]],
    ) -> dict[str, Any]:
        async def run() -> dict[str, Any]:
            client = RaftStoreClient(endpoints, timeout_s=1.0)
            call, output, ret = time.monotonic(), None, None
            try:
                result = await action(client)
                status, ret = "ok", time.monotonic()
                output = result if op == "read" else None
            except OperationFailed:
                status, ret = "fail", time.monotonic()
            except OutcomeUnknown:
                status = "unknown"
            finally:
                await client.aclose()
            return {"process": len(self.records), "op": op, "key": KEY, "input": value,
                    "output": output, "call": call, "return": ret, "status": status}  # fmt: skip

        record = asyncio.run(run())
        self.records.append(record)
        return record

    def write_until_acknowledged(self, endpoints: list[str], value: str, within_s: float) -> None:
        deadline = time.monotonic() + within_s
        while self.call(endpoints, "write", value, lambda c: c.put(KEY, value))["status"] != "ok":
            assert time.monotonic() < deadline, f"write {value} not acknowledged: {self.records}"
            time.sleep(0.05)


def new_leader(cluster: OurRaftCluster, among: list[str], above_term: int, within_s: float) -> str:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        for name in among:
            s = cluster.status(name, timeout_s=0.3)
            if s and s["role"] == "leader" and s["term"] > above_term:
                return name
        time.sleep(0.02)
    raise AssertionError(f"no new leader among {among} within {within_s} s")


def stale_read_scenario(base_dir: Path, config: dict[str, Any]) -> Scenario:
    rec = Recorder()
    reads: list[int] = []
    with OurRaftCluster(base_dir, config=config) as cluster:
        old = cluster.wait_for_leader()
        old_term = cluster.status(old)["term"]  # type: ignore[index]
        everyone = cluster.client_urls
        others = [m.name for m in cluster.members if m.name != old]
        rec.write_until_acknowledged(everyone, "v1", 5.0)
        cluster.wait_for_leader()  # every replica, the old leader too, has applied v1
        cluster.kill(old, signal.SIGSTOP)
        try:
            new_leader(cluster, others, old_term, 5.0)
            rec.write_until_acknowledged([cluster.member(n).client_url for n in others], "v2", 5.0)
        finally:
            cluster.kill(old, signal.SIGCONT)
        old_url = [cluster.member(old).client_url]
        for _ in range(STALE_READS):
            reads.append(len(rec.records))
            rec.call(old_url, "read", None, lambda c: c.get(KEY))
    history = base_dir / "history.jsonl"
    history.write_text("".join(json.dumps(r) + "\n" for r in rec.records), encoding="utf-8")
    assert not [pid for pid in cluster.pids() if pid_alive(pid)], "replicas left running"
    return Scenario(history, reads, rec.records)


def check(scenario: Scenario) -> Verdict:
    return check_file(scenario.history, timeout=10.0)


def test_unsafe_local_reads_are_caught_as_not_linearizable(tmp_path: Path) -> None:
    scenario = stale_read_scenario(tmp_path, {"unsafe_local_reads": True})
    reads = [scenario.records[i] for i in scenario.old_leader_reads]
    about = f"history {scenario.history}: {scenario.records}"
    assert reads[0]["status"] == "ok" and reads[0]["output"] == "v1", f"no stale read: {about}"

    verdict = check(scenario)
    assert verdict.result == "illegal", verdict_text(verdict)
    cx = verdict.counterexample
    assert cx is not None and cx.key == KEY
    stale = {i for i in scenario.old_leader_reads if scenario.records[i]["output"] == "v1"}
    assert cx.illegal_ids() & stale, counterexample_text(cx)
    assert "read() -> v1" in counterexample_text(cx)


def test_the_safe_default_serves_the_same_scenario_linearizably(tmp_path: Path) -> None:
    scenario = stale_read_scenario(tmp_path, {})
    reads = [scenario.records[i] for i in scenario.old_leader_reads]
    assert [r["output"] for r in reads if r["status"] == "ok"] != [], scenario.records
    assert all(r["output"] == "v2" for r in reads if r["status"] == "ok"), scenario.records

    verdict = check(scenario)
    assert verdict.result == "ok", verdict_text(verdict)
