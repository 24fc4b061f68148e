"""Jepsen-style nemesis against the embedded cluster's metadata store (3 replicas).

Each round records a client history (reads, writes and CAS on a few fresh keys) while one
fault, drawn with a seeded RNG, hits the store: the leader or a follower killed (restarted
after ~1 s by the supervisor), the leader paused (SIGSTOP, resumed after ~1 s), or the leader
or a follower cut off from the other replicas (blackhole, both directions, on the replica
links of the fault proxy). After healing and a stable cluster, one final read per key joins
the history; the linearizability checker must then find it linearizable, which also proves
that no acknowledged write was lost (a final read that misses an acknowledged write, or
returns a value it superseded, has no legal place in the history).

The seed comes from RAFT_NEMESIS_SEED, else a random one; every failure message names it.
`benchmarks.raft_soak` runs the same rounds for minutes.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from chaoslib.exceptions import ActivityFailed

from experiments import context, faults
from probes.linearizability import Verdict, check_file, verdict_text
from probes.raft.clients import OperationFailed, OutcomeUnknown, RaftStoreClient
from probes.raft.history import HistoryRecorder, fresh_keys
from tests.integration.cluster_fixtures import running_cluster

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("RAFT_NEMESIS_SEED") or random.SystemRandom().randrange(2**32))
FAULTS = ("kill-leader", "kill-follower", "pause-leader", "partition-leader", "partition-follower")
ROUNDS = 5
LEADER = {"labelSelectors": {"role": "raft", "raft-role": "leader"}}
SELECT_ATTEMPTS = 3
FINAL_READ_PROCESS = 1_000_000  # process ids of the final reads: above any recorder's


@dataclass(frozen=True)
class RoundPlan:
    """The shape of a round: its phases (seconds), its clients and keys, the checker's time."""

    before_s: float = 0.8  # recording before the fault
    fault_s: float = 1.0  # the fault is held this long (kill: restart after this)
    after_s: float = 0.8  # recording once the cluster is stable again
    stable_timeout_s: float = 15.0
    op_timeout_s: float = 0.5
    clients: int = 4
    keys: int = 3
    think_s: float = 0.01
    check_timeout_s: float = 30.0


@dataclass
class RoundResult:
    """What one round did and what the checker said."""

    round: int
    fault: str
    victims: list[str]
    history: Path
    summary: dict[str, Any]
    finals: dict[str, str | None]
    verdict: Verdict
    missing_writes: list[str] = field(default_factory=list)
    healed_s: float = 0.0
    term_before: int = 0  # the leader's term before the fault and once healed
    term_after: int = 0

    def describe(self, seed: int) -> str:
        return (
            f"seed={seed} round={self.round} fault={self.fault} victims={self.victims} "
            f"terms={self.term_before}->{self.term_after} "
            f"history={self.history} counts={self.summary['counts']} "
            f"verdict={self.verdict.result}: {verdict_text(self.verdict)}"
        )


def schedule(seed: int, rounds: int) -> list[str]:
    """The faults of `rounds` rounds: each fault once per pass, in a seeded order."""
    rng = random.Random(seed)
    plan: list[str] = []
    while len(plan) < rounds:
        plan += rng.sample(FAULTS, len(FAULTS))
    return plan[:rounds]


# -- the store, seen from outside ---------------------------------------------------------------


def statuses(endpoints: list[str], timeout_s: float = 0.3) -> list[dict[str, Any] | None]:
    out: list[dict[str, Any] | None] = []
    with httpx.Client(trust_env=False, timeout=timeout_s) as http:
        for url in endpoints:
            try:
                r = http.get(url + "/status")
                out.append(r.json() if r.status_code == 200 else None)
            except (httpx.HTTPError, ValueError):
                out.append(None)
    return out


def wait_stable(endpoints: list[str], timeout_s: float) -> dict[str, Any]:
    """Every replica answers, all name one leader in one term, and all have applied what it
    committed; returns the leader's status. AssertionError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    seen: list[dict[str, Any] | None] = []
    while time.monotonic() < deadline:
        seen = statuses(endpoints)
        if all(seen):
            views = {(s["leader"], s["term"]) for s in seen if s}
            leaders = [s for s in seen if s and s["role"] == "leader"]
            if len(views) == 1 and len(leaders) == 1:
                commit = leaders[0]["commit_index"]
                if all(s and s["applied_index"] >= commit for s in seen):
                    return leaders[0]
        time.sleep(0.05)
    raise AssertionError(f"store not stable within {timeout_s} s: {seen}")


def raft_names(state: dict[str, Any]) -> list[str]:
    return [p["name"] for p in state["processes"] if p["labels"].get("role") == "raft"]


def follower(state: dict[str, Any], rng: random.Random) -> str:
    """A follower chosen with the round's RNG (a selector's own choice is not seeded)."""
    names = raft_names(state)
    views = statuses(state["raft_endpoints"], timeout_s=1.0)
    followers = [n for n, s in zip(names, views, strict=True) if s and s["role"] == "follower"]
    assert followers, f"no follower to hit: {views}"
    return rng.choice(sorted(followers))


# -- the nemesis ------------------------------------------------------------------------------


def inject(fault: str, state: dict[str, Any], rng: random.Random, hold_s: float) -> list[str]:
    """Hold `fault` for about `hold_s` seconds and remove it; returns the victims.

    The backend reads `raft-role` live with a short timeout; a leader too busy to answer it
    in time is "unreachable" and the selector matches nothing, so that one case is retried.
    """
    attempt = 1
    while True:
        try:
            return _inject_once(fault, state, rng, hold_s)
        except ActivityFailed as exc:
            if "matches nothing" not in str(exc) or attempt >= SELECT_ATTEMPTS:
                raise
            attempt += 1
            time.sleep(0.2)


def _inject_once(fault: str, state: dict[str, Any], rng: random.Random, hold_s: float) -> list[str]:
    if fault.endswith("-leader"):
        selector = LEADER
    else:
        selector = {"pods": [follower(state, rng)]}
    if fault.startswith("kill-"):
        record = faults.pod_kill(selector=selector, mode="one", restart_after=hold_s)
        time.sleep(hold_s)
        faults.recover(record["id"])  # restart now if the supervisor has not yet
    elif fault == "pause-leader":
        record = faults.pod_pause(selector=selector, mode="one", duration=hold_s)
    elif fault.startswith("partition-"):
        record = faults.network_partition(
            selector=selector, mode="one", action="blackhole", direction="both", duration=hold_s
        )
    else:
        raise ValueError(f"unknown fault {fault!r}; expected one of {FAULTS}")
    return list(record["victims"])


async def _final_reads(endpoints: list[str], keys: list[str], timeout_s: float) -> list[dict]:
    """One linearizable read per key, retried until it succeeds, as history records."""
    client = RaftStoreClient(endpoints, timeout_s=1.0)
    records = []
    try:
        for i, key in enumerate(keys):
            deadline = time.monotonic() + timeout_s
            while True:
                call = time.monotonic()
                try:
                    value = await client.get(key, 1.0)
                except (OperationFailed, OutcomeUnknown) as exc:
                    if time.monotonic() > deadline:
                        raise AssertionError(
                            f"no final read of {key} within {timeout_s} s"
                        ) from exc
                    await asyncio.sleep(0.05)
                    continue
                records.append(
                    {"process": FINAL_READ_PROCESS + i, "op": "read", "key": key, "input": None,
                     "output": value, "call": call, "return": time.monotonic(), "status": "ok"}
                )  # fmt: skip
                break
    finally:
        await client.aclose()
    return records


def missing_writes(history: Path, finals: dict[str, str | None]) -> list[str]:
    """Plain check beside the checker: each final value was written by some write that was
    acknowledged or may have taken effect, and a key with an acknowledged write is present."""
    written: dict[str, set[str]] = {}
    acked: dict[str, bool] = {}
    for line in history.read_text(encoding="utf-8").splitlines():
        op = json.loads(line)
        if op["op"] not in ("write", "cas") or op["status"] == "fail":
            continue
        value = op["input"] if op["op"] == "write" else op["input"]["value"]
        written.setdefault(op["key"], set()).add(value)
        took = op["status"] == "ok" and (op["op"] == "write" or op["output"] is True)
        acked[op["key"]] = acked.get(op["key"], False) or took
    problems = []
    for key, value in finals.items():
        if value is None and acked.get(key):
            problems.append(f"{key}: absent after healing, though a write to it was acknowledged")
        elif value is not None and value not in written.get(key, set()):
            problems.append(f"{key}: final value {value!r} was never written")
    return problems


def run_round(
    state: dict[str, Any],
    round_no: int,
    fault: str,
    rng: random.Random,
    out_dir: Path,
    plan: RoundPlan | None = None,
) -> RoundResult:
    """Record a history across one fault, heal, read every key once more, and check."""
    plan = plan or RoundPlan()
    endpoints = list(state["raft_endpoints"])
    before = wait_stable(endpoints, plan.stable_timeout_s)
    keys = fresh_keys(plan.keys, prefix=f"nemesis-r{round_no}")
    recorder = HistoryRecorder(
        RaftStoreClient(endpoints, timeout_s=plan.op_timeout_s),
        out_dir / f"round-{round_no}-{fault}.jsonl",
        keys=keys,
        clients=plan.clients,
        op_timeout_s=plan.op_timeout_s,
        think_s=plan.think_s,
        seed=rng.randrange(2**32),
        meta={"store": "ours", "fault": fault, "round": round_no},
    ).start()
    try:
        time.sleep(plan.before_s)
        victims = inject(fault, state, rng, plan.fault_s)
        healed_at = time.monotonic()
        after = wait_stable(endpoints, plan.stable_timeout_s)
        healed_s = time.monotonic() - healed_at
        time.sleep(plan.after_s)
    finally:
        summary = recorder.stop()
    finals = asyncio.run(_final_reads(endpoints, keys, plan.stable_timeout_s))
    with recorder.path.open("a", encoding="utf-8") as f:
        for record in finals:
            f.write(json.dumps(record) + "\n")
    final_values = {r["key"]: r["output"] for r in finals}
    verdict = check_file(recorder.path, timeout=plan.check_timeout_s)
    return RoundResult(
        round_no,
        fault,
        victims,
        recorder.path,
        summary,
        final_values,
        verdict,
        missing_writes(recorder.path, final_values),
        healed_s,
        before["term"],
        after["term"],
    )


# -- the test ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("nemesis-home")
    with running_cluster(home, nodes=1, gpus=1, prometheus=False, restart_delay=0.2) as state:
        yield state


@pytest.mark.parametrize("round_no", range(ROUNDS))
def test_history_stays_linearizable_under_a_random_fault(
    cluster: dict[str, Any], round_no: int, tmp_path: Path
) -> None:
    fault = schedule(SEED, ROUNDS)[round_no]
    rng = random.Random(f"{SEED}-{round_no}")
    context.start_run(f"nemesis-{round_no}", tmp_path)
    try:
        result = run_round(cluster, round_no, fault, rng, tmp_path)
    except Exception as exc:  # name the seed whatever broke: the round can be replayed
        raise AssertionError(f"seed={SEED} round={round_no} fault={fault}: {exc}") from exc
    finally:
        try:
            faults.recover_all(configuration={})
        finally:
            context.end_run()
    about = result.describe(SEED)
    ok_ops = result.summary["counts"]["ok"]
    assert result.victims, about
    if fault.endswith("-leader"):  # the nemesis really deposed the leader
        assert result.term_after > result.term_before, about
    assert ok_ops > 20, f"too few operations succeeded to judge anything: {about}"
    assert result.verdict.result == "ok", about
    assert result.missing_writes == [], f"{result.missing_writes}; {about}"
    assert len(result.finals) == RoundPlan().keys, about
