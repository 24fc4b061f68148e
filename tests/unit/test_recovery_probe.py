"""RTO from windows of client records and the tasks' return; RPO from a synthetic history."""

import json

import pytest
from chaoslib.exceptions import ActivityFailed

from experiments import context
from experiments.ledger import FaultRecord
from probes import migration, recovery

T0 = 1000.0


def records(spec):
    """[(sent_at, ok), ...] as load records."""
    return [{"id": str(i), "sent_at": t, "ok": ok} for i, (t, ok) in enumerate(spec)]


def steady(start, end, step=0.1, failing=()):
    out = []
    t = start
    while t < end - 1e-9:
        out.append((round(t, 3), not any(a <= t < b for a, b in failing)))
        t += step
    return out


# -- RTO ------------------------------------------------------------------------------------


def test_windows_count_requests_by_send_time():
    w = recovery.availability_windows(
        records([(T0 - 1, False), (T0 + 0.1, False), (T0 + 1.9, True), (T0 + 2.0, True)]),
        T0,
        2.0,
    )
    assert [(x["start"], x["good"], x["total"]) for x in w] == [(T0, 1, 2), (T0 + 2, 1, 1)]
    assert w[0]["availability"] == 0.5
    with pytest.raises(ValueError):
        recovery.availability_windows([], T0, 0)


def test_recovered_at_needs_sustained_windows_after_the_tasks():
    recs = records(steady(T0, T0 + 20, failing=[(T0, T0 + 3), (T0 + 6.5, T0 + 7)]))
    windows = recovery.availability_windows(recs, T0, 2.0)
    # the window [4, 6) is clean but [6, 8) is not: recovery is only sustained from [8, 10)
    assert recovery.recovered_at(windows, T0, 0.999, sustain_windows=3) == T0 + 10
    assert recovery.recovered_at(windows, T0, 0.999, sustain_windows=1) == T0 + 6
    # the clients cannot be back before the tasks are
    assert recovery.recovered_at(windows, T0 + 13, 0.999, sustain_windows=1) == T0 + 14
    assert recovery.recovered_at(windows, T0 + 30, 0.999) is None


def test_judge_rto_against_the_bound():
    windows = recovery.availability_windows(
        records(steady(T0, T0 + 20, failing=[(T0, T0 + 3)])), T0, 2.0
    )
    ok = recovery.judge_rto(T0, T0 + 1.2, windows, bound_s=10, target=0.999)
    assert ok["ok"] and ok["rto_s"] == pytest.approx(6.0) and ok["check"] == "rto"
    assert ok["tasks_serving_s"] == pytest.approx(1.2)
    assert "RTO 6.00 s" in ok["summary"]
    late = recovery.judge_rto(T0, T0 + 1.2, windows, bound_s=5, target=0.999)
    assert not late["ok"] and late["rto_s"] == pytest.approx(6.0)
    never = recovery.judge_rto(T0, None, windows, bound_s=100, target=0.999)
    assert not never["ok"] and never["rto_s"] is None
    assert "not every task serves again" in never["summary"]


def test_tasks_back_at_is_the_last_route_or_the_fault():
    report = {
        "settled": True,
        "fault": {"injected_at": T0},
        "tasks": [
            {"moved": True, "routed_at": T0 + 0.7},
            {"moved": True, "routed_at": T0 + 0.9},
            {"moved": False, "routed_at": None},
        ],
    }
    assert recovery.tasks_back_at(report) == T0 + 0.9
    assert recovery.tasks_back_at({**report, "tasks": []}) == T0
    assert recovery.tasks_back_at({**report, "settled": False}) is None


# -- RPO ------------------------------------------------------------------------------------


def op(kind, key, call, ret, status="ok", inp=None, out=None, process=0):
    return {
        "process": process,
        "op": kind,
        "key": key,
        "input": inp,
        "output": out,
        "call": call,
        "return": ret,
        "status": status,
    }


FAULT = 50.0


def test_every_acknowledged_write_visible_is_rpo_zero():
    ops = [
        op("write", "k", 10, 11, inp="a"),
        op("write", "k", 20, 21, inp="b"),
        op("cas", "k", 30, 31, inp={"expect": "b", "value": "c"}, out=True),
        op("cas", "k", 32, 33, inp={"expect": "x", "value": "zz"}, out=False),
        op("read", "k", 60, 61, out="c"),
        op("read", "j", 60, 61, out=None),  # never written: nothing to prove there
    ]
    found = recovery.find_lost_writes(ops, FAULT)
    assert found["lost_writes"] == [] and found["rpo_s"] == 0
    assert found["acknowledged_before_fault"] == 3 and found["verified_keys"] == ["k"]


def test_a_stale_read_after_the_fault_is_lost_data():
    ops = [
        op("write", "k", 10, 11, inp="a"),
        op("write", "k", 20, 21, inp="b"),
        op("write", "k", 40, 41, inp="c"),
        op("read", "k", 45, 46, out="c"),  # before the fault: not the question
        op("read", "k", 60, 61, out="a"),
    ]
    found = recovery.find_lost_writes(ops, FAULT)
    [lost] = found["lost_writes"]
    assert lost["key"] == "k" and lost["read_value"] == "a" and lost["expected"] == ["c"]
    assert [w["value"] for w in lost["lost"]] == ["b", "c"]
    assert found["rpo_s"] == pytest.approx(FAULT - 21)


def test_an_absent_read_loses_every_acknowledged_write():
    ops = [op("write", "k", 10, 11, inp="a"), op("read", "k", 60, 61, out=None)]
    found = recovery.find_lost_writes(ops, FAULT)
    assert found["rpo_s"] == pytest.approx(FAULT - 11)
    # ...unless it was a delete that was acknowledged last
    ops.insert(1, op("delete", "k", 20, 21))
    assert recovery.find_lost_writes(ops, FAULT)["lost_writes"] == []


def test_later_or_unacknowledged_writes_explain_a_new_value():
    ops = [
        op("write", "k", 10, 11, inp="a"),
        op("write", "k", 48, None, status="unknown", inp="maybe"),  # may land any time
        op("write", "k", 55, 56, inp="after"),
        op("write", "k", 57, 58, status="fail", inp="never"),
        op("read", "k", 60, 61, out="maybe"),
        op("read", "k", 62, 63, out="after"),
    ]
    assert recovery.find_lost_writes(ops, FAULT)["lost_writes"] == []
    failed = [*ops, op("read", "k", 64, 65, out="never")]
    assert recovery.find_lost_writes(failed, FAULT)["lost_writes"][0]["read_value"] == "never"
    # a write that began only after the read ended cannot explain it
    early = [op("write", "k", 10, 11, inp="a"), op("read", "k", 60, 61, out="x")]
    early.append(op("write", "k", 70, 71, inp="x"))
    assert len(recovery.find_lost_writes(early, FAULT)["lost_writes"]) == 1


def test_concurrent_last_writes_are_both_acceptable():
    ops = [
        op("write", "k", 10, 20, inp="a", process=0),
        op("write", "k", 12, 18, inp="b", process=1),
        op("read", "k", 60, 61, out="a"),
        op("read", "j", 60, 61, out="b"),
    ]
    assert recovery.find_lost_writes(ops, FAULT)["lost_writes"] == []
    ops[2] = op("read", "k", 60, 61, out="b")
    assert recovery.find_lost_writes(ops, FAULT)["lost_writes"] == []


def test_keys_never_read_after_the_fault_are_unverified():
    ops = [op("write", "k", 10, 11, inp="a"), op("write", "j", 10, 11, inp="b")]
    ops.append(op("read", "j", 60, 61, out="b"))
    found = recovery.find_lost_writes(ops, FAULT)
    assert found["unverified_keys"] == ["k"] and found["verified_keys"] == ["j"]


# -- the probes, on files and a run ----------------------------------------------------------


@pytest.fixture
def run(monkeypatch, tmp_path):
    monkeypatch.setenv("INFERENCE_CHAOS_HOME", str(tmp_path / "home"))
    r = context.start_run("unit", tmp_path / "runs")
    record = FaultRecord(
        kind="node-crash",
        victims=["worker-n1-g0"],
        params={"nodes": ["node-1"]},
        selector={},
        backend="test",
    )
    r.ledger.add(record)
    r.ledger.mark_injected(record, {})
    record.injected_at = T0
    yield r
    context.end_run()


def write_history(folder, ops, offset):
    path = folder / "raft-history.jsonl"
    path.write_text("".join(json.dumps(o) + "\n" for o in ops))
    (folder / "raft-history.meta.json").write_text(json.dumps({"wall_offset_s": offset}))
    return path


def test_data_loss_finds_the_latest_history_and_aligns_clocks(run, tmp_path):
    offset = T0 - FAULT  # the history's clock reads FAULT at the fault
    folder = tmp_path / "rundir"
    folder.mkdir()
    write_history(
        folder, [op("write", "k", 10, 11, inp="a"), op("read", "k", 60, 61, out="a")], offset
    )
    out = recovery.data_loss(configuration={"run_dir": str(folder)})
    assert out["ok"] and out["check"] == "rpo" and out["rpo_s"] == 0
    assert out["acknowledged_before_fault"] == 1
    lossy = [op("write", "k", 10, 11, inp="a"), op("read", "k", 60, 61, out=None)]
    path = write_history(folder, lossy, offset)
    out = recovery.data_loss(history_path=str(path))
    assert not out["ok"] and out["rpo_s"] == pytest.approx(39.0)
    assert out["lost_writes"][0]["oldest_lost_at"] == pytest.approx(T0 - 39.0)
    assert "RPO 39.000 s" in out["summary"]


def test_data_loss_cannot_prove_anything_without_reads(run, tmp_path, monkeypatch):
    from probes.raft import actions as raft_actions

    monkeypatch.setattr(raft_actions, "_temp_dir", None)  # no recorder of another test
    path = write_history(tmp_path, [op("write", "k", 10, 11, inp="a")], T0 - FAULT)
    with pytest.raises(ActivityFailed, match="no successful read after the fault"):
        recovery.data_loss(history_path=str(path))
    with pytest.raises(ActivityFailed, match="no recorded history"):
        recovery.data_loss(configuration={"run_dir": str(tmp_path / "empty")})


class FakeStore:
    def __init__(self, data):
        self.data = data

    def get(self, key):
        return self.data.get(key)


def test_recovery_time_from_records_and_the_store(run, tmp_path, monkeypatch):
    placed = {"task-0": {"node": "node-0", "gpus": [0]}}
    events = [
        {"kind": "assignment", "at": T0 - 10, "before": {}, "after": placed},
        {
            "kind": "migration",
            "task": "task-0",
            "from": {"node": "node-1", "gpus": [0]},
            "to": placed["task-0"],
            "detected_at": T0 + 0.5,
            "assigned_at": T0 + 0.6,
            "serving_at": T0 + 0.8,
            "routed_at": T0 + 0.9,
        },
    ]
    events[0]["after"] = {"task-0": {"node": "node-1", "gpus": [0]}}
    store = FakeStore(
        {
            "tasks.spec": {"tasks": [{"id": "task-0", "gpus": 1}]},
            "tasks.assignment": {"epoch": 2, "placements": placed},
            "controller.events": events,
            "routing.upstreams": [
                {"name": "worker-n0-g0", "labels": {"node": "node-0", "gpu": "0", "task": "task-0"}}
            ],
        }
    )
    monkeypatch.setattr(recovery, "store_for", lambda configuration: store)
    path = tmp_path / "records.jsonl"
    recs = records(steady(T0 - 5, T0 + 12, failing=[(T0, T0 + 2.5)]))
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = recovery.recovery_time(
        bound_s=10, window_s=2.0, configuration={"records_path": str(path)}
    )
    assert out["ok"] and out["rto_s"] == pytest.approx(6.0) and out["tasks_serving_s"] == 0.9
    assert out["migration_summary"].startswith("1 of 1 task(s) on node-1 moved")
    assert migration.fault_started_at(run.faults()[0]) == T0
    with pytest.raises(ActivityFailed, match="availability_target"):
        recovery.recovery_time(availability_target=1.5)
