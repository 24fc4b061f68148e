"""The Raft observer's judgement on synthetic status samples, and the recorder's bookkeeping
with a fake store (timeouts become unknown and a new process; definite errors become fail)."""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from pathlib import Path

import pytest

from probes.raft.clients import (
    Ack,
    NodeStatus,
    OperationFailed,
    OutcomeUnknown,
    StatusUnavailable,
)
from probes.raft.history import HistoryRecorder, fresh_keys
from probes.raft.judge import (
    StatusSample,
    WriteSample,
    count_leader_changes,
    judge,
    leader_timeline,
    split_brain,
    term_regressions,
)
from probes.raft.observer import RaftObserver

A, B, C = "http://a", "http://b", "http://c"
T0 = 10.0


def ok(endpoint: str, at: float, node: str, leader: str | None, term: int) -> StatusSample:
    role = None if leader is None else ("leader" if leader == node else "follower")
    return StatusSample(endpoint, at, id=node, leader=leader, term=term, role=role)


def down(endpoint: str, at: float) -> StatusSample:
    return StatusSample(endpoint, at, error="connection refused")


def steady_before() -> list[StatusSample]:
    """Three replicas, "a" leading term 2, as seen just before the fault."""
    return [ok(A, 9.9, "a", "a", 2), ok(B, 9.9, "b", "a", 2), ok(C, 9.9, "c", "a", 2)]


def etcd_failover() -> list[StatusSample]:
    """The leader dies at t0; followers lose it (etcd omits `leader`), "b" wins term 3 but, like
    etcd, first reports its old applied term 2."""
    return steady_before() + [
        down(A, 10.01),
        ok(B, 10.20, "b", None, 2),
        ok(C, 10.21, "c", None, 2),
        ok(B, 10.30, "b", "b", 2),  # elected; applied term still 2
        ok(B, 10.32, "b", "b", 3),
        ok(C, 10.33, "c", "b", 3),
    ]


def test_failover_time_is_first_new_leader_in_a_higher_term() -> None:
    verdict = judge(etcd_failover(), [], T0, failover_bound_s=1.0, applied_term=True)
    assert verdict["failover_s"] == pytest.approx(0.32)
    assert verdict["new_leader"] == {"leader": "b", "term": 3, "reported_by": B}
    assert verdict["leader_before"] == {"leader": "a", "term": 2}
    assert verdict["ok"] is True and verdict["split_brain"] == []


def test_failover_slower_than_the_bound_fails() -> None:
    verdict = judge(etcd_failover(), [], T0, failover_bound_s=0.25, applied_term=True)
    assert verdict["ok"] is False
    assert "0.320 s > 0.25 s" in verdict["problems"][0]


def test_missing_leader_during_election_is_not_a_failover() -> None:
    samples = steady_before() + [
        down(A, 10.01),
        ok(B, 10.2, "b", None, 2),
        ok(C, 10.2, "c", None, 3),
    ]
    verdict = judge(samples, [], T0, failover_bound_s=1.0, applied_term=True)
    assert verdict["failover_s"] is None
    assert verdict["ok"] is False
    assert verdict["timeline"][-1]["leader"] is None  # the leaderless gap is on the timeline


def test_same_leader_again_is_not_a_failover() -> None:
    samples = steady_before() + [
        ok(A, 10.15, "a", None, 3),  # "a" stands again (a candidate names no leader)
        ok(B, 10.2, "b", None, 3),
        ok(C, 10.2, "c", None, 3),
        ok(A, 10.3, "a", "a", 3),
    ]
    verdict = judge(samples, [], T0, failover_bound_s=1.0)
    assert verdict["failover_s"] is None
    assert verdict["leader_changes"] == 1  # a re-election after a leaderless gap still counts


def test_timeline_and_leader_changes_ignore_the_applied_term_catching_up() -> None:
    timeline = leader_timeline(etcd_failover())
    assert [(e["leader"], e["term"]) for e in timeline] == [
        ("a", 2),
        (None, 2),
        ("b", 2),
        ("b", 3),
    ]
    assert count_leader_changes(timeline) == 1


def test_two_leaders_in_one_term_is_split_brain() -> None:
    samples = steady_before() + [ok(B, 10.3, "b", "b", 2), ok(B, 10.4, "b", "b", 2)]
    brains = split_brain(samples, applied_term=False)
    assert [(b["term"], b["leaders"]) for b in brains] == [(2, ["a", "b"])]
    verdict = judge(samples, [], T0, failover_bound_s=1.0)
    assert verdict["ok"] is False
    assert any("split brain" in p for p in verdict["problems"])


def test_applied_term_lag_is_not_split_brain_but_exact_terms_would_be() -> None:
    assert split_brain(etcd_failover(), applied_term=True) == []
    # Read as exact terms, "b" claiming term 2 while "a" led term 2 is a violation.
    assert split_brain(etcd_failover(), applied_term=False)[0]["leaders"] == ["a", "b"]


def test_a_stuck_old_leader_in_a_lower_term_is_not_split_brain() -> None:
    """A partitioned old leader may keep claiming its old term; Raft allows that."""
    samples = steady_before() + [ok(B, 10.3, "b", "b", 3), ok(A, 10.5, "a", "a", 2)]
    verdict = judge(samples, [], T0, failover_bound_s=1.0)
    assert verdict["split_brain"] == []
    assert verdict["failover_s"] == pytest.approx(0.3)
    assert verdict["ok"] is True


def test_term_regression_is_detected() -> None:
    samples = steady_before() + [ok(B, 10.2, "b", "b", 3), ok(B, 10.4, "b", "b", 1)]
    verdict = judge(samples, [], T0, failover_bound_s=1.0)
    assert verdict["terms_monotonic"] is False
    assert verdict["term_regressions"][0] | {"at": None} == {
        "endpoint": B,
        "from": 3,
        "to": 1,
        "at": None,
        "after_outage": False,
        "counted": True,
    }
    assert verdict["ok"] is False


def test_term_drop_after_a_restart_counts_only_for_exact_term_stores() -> None:
    samples = [
        ok(A, 1.0, "a", "a", 4),
        down(A, 2.0),
        ok(A, 3.0, "a", None, 2),
        ok(A, 3.5, "a", None, 3),
    ]
    etcd_like = term_regressions(samples, applied_term=True)
    assert [(r["from"], r["to"], r["counted"]) for r in etcd_like] == [(4, 2, False)]
    ours = term_regressions(samples, applied_term=False)
    assert [(r["from"], r["to"], r["counted"]) for r in ours] == [(4, 2, True), (4, 3, True)]


def test_first_write_counts_only_writes_of_the_new_regime() -> None:
    writes = [
        WriteSample(9.95, 9.96, "ok", 2),  # before the fault
        WriteSample(10.00, 10.005, "ok", 2),  # sent after t0 but taken by the old leader
        WriteSample(10.01, 10.2, "unknown", None),
        WriteSample(10.2, 10.25, "fail", None),
        WriteSample(10.3, 10.36, "ok", 3),
        WriteSample(10.31, 10.34, "ok", 3),  # returned first
    ]
    verdict = judge(
        etcd_failover(), writes, T0, failover_bound_s=1.0, write_bound_s=0.5, applied_term=True
    )
    assert verdict["first_write_s"] == pytest.approx(0.34)
    assert verdict["writes_after_fault"] == {"ok": 3, "fail": 1, "unknown": 1}
    assert verdict["ok"] is True
    late = judge(
        etcd_failover(), writes, T0, failover_bound_s=1.0, write_bound_s=0.3, applied_term=True
    )
    assert late["ok"] is False


def test_first_write_without_terms_must_start_after_the_new_leader_was_seen() -> None:
    writes = [WriteSample(10.0, 10.01, "ok"), WriteSample(10.33, 10.35, "ok")]
    verdict = judge(etcd_failover(), writes, T0, failover_bound_s=1.0, applied_term=True)
    assert verdict["first_write_s"] == pytest.approx(0.35)


def test_nothing_seen_before_the_fault_cannot_be_judged() -> None:
    with pytest.raises(ValueError, match="before the fault"):
        judge([ok(A, 11.0, "a", "a", 2)], [], T0, failover_bound_s=1.0)


def test_verdict_is_plain_json() -> None:
    verdict = judge(etcd_failover(), [WriteSample(10.4, 10.5, "ok", 3)], T0, failover_bound_s=1.0)
    assert json.loads(json.dumps(verdict)) == verdict


# -- the observer machinery with a scripted store -------------------------------------------


class ScriptedStore:
    """Answers status as a script says; one endpoint can be made to hang like a paused process."""

    applied_term = False

    def __init__(self, endpoints: list[str]) -> None:
        self.endpoints = endpoints
        self.leader = "a"
        self.term = 2
        self.hung: set[str] = set()
        self.writes = 0

    async def status(self, endpoint: str, timeout_s: float | None = None) -> NodeStatus:
        node = endpoint.removeprefix("http://")
        if endpoint in self.hung:
            try:
                async with asyncio.timeout(timeout_s):
                    await asyncio.sleep(3600)
            except TimeoutError as exc:
                raise StatusUnavailable(f"timed out waiting for {endpoint}") from exc
        role = "leader" if node == self.leader else "follower"
        return NodeStatus(endpoint, node, self.leader, self.term, role)

    async def put(self, key: str, value: str, timeout_s: float | None = None) -> Ack:
        if self.leader == "a" and A in self.hung:
            await asyncio.sleep(timeout_s or 0)
            raise OutcomeUnknown("timed out")
        self.writes += 1
        return Ack(endpoint=f"http://{self.leader}", term=self.term)

    def hint_leader(self, endpoint: str) -> None:
        pass

    async def aclose(self) -> None:
        pass


def test_observer_keeps_polling_others_while_one_endpoint_hangs() -> None:
    store = ScriptedStore([A, B, C])
    observer = RaftObserver(store, poll_interval_s=0.005, status_timeout_s=0.3, write_timeout_s=0.1)
    observer.start()
    try:
        time.sleep(0.1)
        store.hung.add(A)  # the leader is paused
        t0 = observer.mark_fault()
        before = observer.polls()
        time.sleep(0.15)
        store.leader, store.term = "b", 3
        assert observer.wait_for(lambda: observer.report(1.0)["first_write_s"] is not None, 2.0)
        after = observer.polls()
    finally:
        observer.stop()
    # Within 0.15 s, polls of the healthy replicas went on at a few ms each; the hung one
    # answered at most once (its own 0.3 s timeout).
    assert after[B] - before[B] >= 10 and after[C] - before[C] >= 10
    assert after[A] - before[A] <= 1
    verdict = observer.report(1.0, write_bound_s=1.0)
    assert 0.15 <= verdict["failover_s"] < 1.0
    assert (
        verdict["first_write_s"] is not None
        and verdict["first_write_s"] >= verdict["failover_s"] - 0.01
    )
    assert verdict["ok"] is True and verdict["t0"] == t0
    assert not observer.running


# -- the recorder's bookkeeping with a fake store -------------------------------------------


class FakeStore:
    """A correct in-memory register per key that times out every 7th call, refuses every 5th."""

    applied_term = False
    endpoints = ["http://fake"]

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.calls = 0

    async def _behave(self, timeout_s: float | None) -> None:
        self.calls += 1
        if self.calls % 7 == 0:  # hangs, and gives up at its deadline like a real client
            await asyncio.sleep(timeout_s or 0)
            raise OutcomeUnknown("timed out")
        if self.calls % 5 == 0:
            raise OperationFailed("HTTP 400: no")
        await asyncio.sleep(0.001)

    async def get(self, key: str, timeout_s: float | None = None) -> str | None:
        await self._behave(timeout_s)
        return self.data.get(key)

    async def put(self, key: str, value: str, timeout_s: float | None = None) -> Ack:
        await self._behave(timeout_s)
        self.data[key] = value
        return Ack(endpoint="http://fake")

    async def cas(
        self, key: str, expect: str | None, value: str, timeout_s: float | None = None
    ) -> bool:
        await self._behave(timeout_s)
        if self.data.get(key) != expect:
            return False
        self.data[key] = value
        return True

    async def delete(self, key: str, timeout_s: float | None = None) -> bool:
        await self._behave(timeout_s)
        return self.data.pop(key, None) is not None

    def hint_leader(self, endpoint: str) -> None:
        pass

    async def aclose(self) -> None:
        pass


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[HistoryRecorder, dict]:
    """One 0.6 s recording, shared by the bookkeeping tests below (they only read it)."""
    recorder = HistoryRecorder(
        FakeStore(),
        tmp_path_factory.mktemp("history") / "history.jsonl",
        keys=fresh_keys(2),
        clients=3,
        op_timeout_s=0.05,
        mix={"read": 0.4, "write": 0.3, "cas": 0.2, "delete": 0.1},
        seed=7,
    )
    recorder.start()
    time.sleep(0.6)
    summary = recorder.stop()
    return recorder, summary


def test_timeouts_are_unknown_pending_and_end_their_process(recorded) -> None:
    recorder, summary = recorded
    ops = recorder.operations()
    unknown = [o for o in ops if o.status == "unknown"]
    assert unknown and all(o.ret is None for o in unknown)
    by_process = defaultdict(list)
    for o in ops:
        by_process[o.process].append(o)
    for process, own in by_process.items():
        own.sort(key=lambda o: o.call)
        # one operation at a time per process, and an unknown one is its process's last
        for earlier, later in zip(own, own[1:], strict=False):
            assert earlier.ret is not None and earlier.ret <= later.call, process
        assert all(o.status != "unknown" for o in own[:-1]), process
    # every client that timed out carried on under a new process id
    assert summary["processes"] >= len(unknown)
    assert summary["counts"]["unknown"] == len(unknown)


def test_definite_errors_are_fail_with_a_return_time(recorded) -> None:
    recorder, summary = recorded
    failed = [o for o in recorder.operations() if o.status == "fail"]
    assert failed and summary["counts"]["fail"] == len(failed)
    assert all(o.ret is not None and o.ret >= o.call and o.output is None for o in failed)


def test_written_values_are_unique_and_name_their_process(recorded) -> None:
    recorder, _ = recorded
    values = [
        o.input if o.op == "write" else o.input["value"]
        for o in recorder.operations()
        if o.op in ("write", "cas")
    ]
    assert len(values) == len(set(values)) > 10
    for o in recorder.operations():
        if o.op == "write":
            assert o.input.startswith(f"{o.process}-")


def test_reads_see_only_values_that_were_written(recorded) -> None:
    recorder, _ = recorded
    ops = recorder.operations()
    written = {o.input for o in ops if o.op == "write"} | {
        o.input["value"] for o in ops if o.op == "cas"
    }
    reads = [o for o in ops if o.op == "read" and o.status == "ok"]
    assert reads
    assert all(o.output is None or o.output in written for o in reads)


def test_history_file_is_json_lines_in_the_contract_format(recorded) -> None:
    recorder, summary = recorded
    lines = Path(summary["path"]).read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == summary["operations"] == len(recorder.operations())
    keys = {"process", "op", "key", "input", "output", "call", "return", "status"}
    for r in records:
        assert set(r) == keys
        assert r["op"] in ("read", "write", "cas", "delete")
        assert r["status"] in ("ok", "fail", "unknown")
        assert (r["return"] is None) == (r["status"] == "unknown")
        if r["op"] == "cas" and r["status"] == "ok":
            assert isinstance(r["output"], bool)
            assert set(r["input"]) == {"expect", "value"}
    meta = json.loads(Path(summary["meta_path"]).read_text())
    assert meta["clock"] == "time.monotonic"
    assert abs(meta["wall_offset_s"] + time.monotonic() - time.time()) < 1.0
    assert meta["keys"] == summary["keys"]


def test_recorder_rejects_a_mix_it_cannot_run(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mix"):
        HistoryRecorder(FakeStore(), tmp_path / "h.jsonl", keys=["k"], mix={"scan": 1.0})


# -- how our store's answers map to outcomes -------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (200, {"revision": 3}, None),
        (400, {"error": "bad value"}, OperationFailed),
        (307, {"error": "not leader", "leader": 2}, OperationFailed),  # redirected too often
        (503, {"error": "no leader"}, OperationFailed),
        (503, {"error": "not committed", "outcome": "failed"}, OperationFailed),
        (503, {"error": "timeout", "outcome": "unknown"}, OutcomeUnknown),
        (502, None, OutcomeUnknown),
    ],
)
def test_our_store_answers_map_to_fail_or_unknown(status, body, outcome) -> None:
    from probes.raft.clients import RaftStoreClient, _Response

    response = _Response("http://a/kv/k", status, "" if body is None else json.dumps(body), {})
    if outcome is None:
        RaftStoreClient._raise_for(response)
    else:
        with pytest.raises(outcome):
            RaftStoreClient._raise_for(response)
