"""The task migration analysis on synthetic store contents, and the probe's wait for settling."""

import pytest
from chaoslib.exceptions import ActivityFailed

from experiments import context
from experiments.ledger import FaultRecord
from probes import migration

T0 = 1000.0
LOCATIONS = {f"worker-n{n}-g{g}": (f"node-{n}", g) for n in range(3) for g in range(2)}


def place(node, *gpus):
    return {"node": node, "gpus": list(gpus)}


BEFORE = {
    "task-0": place("node-0", 0),
    "task-1": place("node-1", 0),
    "task-2": place("node-1", 1),
}


def route(worker, task):
    node, gpu = LOCATIONS[worker]
    return {
        "name": worker,
        "url": "http://x",
        "labels": {"node": node, "gpu": str(gpu), "task": task},
    }


def routes_for(after):
    return [route(f"worker-n{p['node'][5:]}-g{p['gpus'][0]}", t) for t, p in sorted(after.items())]


def node_fault(**extra):
    fault = {
        "id": "f1",
        "kind": "node-crash",
        "victims": ["raft-1", "worker-n1-g0", "worker-n1-g1"],
        "params": {"nodes": ["node-1"], "restart_after": None},
        "injected_at": T0,
        "removed_at": None,
        "details": {},
    }
    fault.update(extra)
    return fault


def migration_event(task, src, dst, detected, routed, reason="connection refused"):
    return {
        "kind": "migration",
        "task": task,
        "reason": reason,
        "from": src,
        "to": dst,
        "detected_at": detected,
        "assigned_at": detected + 0.01,
        "serving_at": None if routed is None else routed - 0.01,
        "routed_at": routed,
        "epoch": 2,
    }


def moved_cluster(routed_1=T0 + 0.9, routed_2=T0 + 1.0, after=None, routing=None, extra=()):
    after = after or {
        "task-0": place("node-0", 0),
        "task-1": place("node-2", 0),
        "task-2": place("node-2", 1),
    }
    events = [
        {"kind": "assignment", "at": T0 - 50, "epoch": 1, "before": {}, "after": BEFORE},
        {
            "kind": "detected",
            "at": T0 + 0.4,
            "worker": "worker-n1-g0",
            "node": "node-1",
            "gpu": 0,
            "reason": "connection refused",
            "xid": None,
        },
        {
            "kind": "detected",
            "at": T0 + 0.45,
            "worker": "worker-n1-g1",
            "node": "node-1",
            "gpu": 1,
            "reason": "connection refused",
            "xid": None,
        },
        {"kind": "assignment", "at": T0 + 0.46, "epoch": 2, "before": BEFORE, "after": after},
        migration_event("task-1", BEFORE["task-1"], after["task-1"], T0 + 0.4, routed_1),
        migration_event("task-2", BEFORE["task-2"], after["task-2"], T0 + 0.45, routed_2),
        *extra,
    ]
    if routing is None:
        routing = [
            route("worker-n0-g0", "task-0"),
            route("worker-n2-g0", "task-1"),
            route("worker-n2-g1", "task-2"),
            {"name": "worker-n0-g1", "url": "u", "labels": {}},
        ]
    return {
        "spec": {"tasks": [{"id": t, "gpus": 1} for t in ("task-0", "task-1", "task-2")]},
        "assignment": {
            "epoch": 2,
            "leader": "controller-0",
            "at": T0 + 0.46,
            "placements": after,
            "unplaceable": [],
        },
        "events": events,
        "routing": routing,
    }


def test_node_crash_moves_both_tasks_within_the_bound():
    r = migration.analyse(node_fault(), moved_cluster(), LOCATIONS, bound_s=1.0)
    assert r["ok"] and r["settled"] and r["check"] == "task-migration"
    assert [t["task"] for t in r["tasks"]] == ["task-1", "task-2"]
    t1 = r["tasks"][0]
    assert t1["from"] == place("node-1", 0) and t1["to"] == place("node-2", 0)
    assert t1["seconds_from_detection"] == pytest.approx(0.5)
    assert t1["seconds_from_fault"] == pytest.approx(0.9)
    assert r["detection_s"] == pytest.approx(0.4)
    assert r["max_migration_s"] == pytest.approx(0.55)
    assert r["before"] == BEFORE and r["after"]["task-1"] == place("node-2", 0)
    assert r["lost"] == [] and r["duplicated"] == []
    assert "2 of 2 task(s) on node-1 moved" in r["summary"]
    assert "none lost, none duplicated" in r["summary"]


def test_a_slow_migration_fails_the_bound():
    r = migration.analyse(node_fault(), moved_cluster(routed_2=T0 + 2.0), LOCATIONS, bound_s=1.0)
    assert not r["ok"] and r["slow"] == ["task-2"]
    assert r["max_migration_s"] == pytest.approx(1.55)
    assert "not routed within the bound: task-2" in r["summary"]


def test_a_task_not_yet_routed_is_unsettled_and_slow():
    r = migration.analyse(node_fault(), moved_cluster(routed_2=None), LOCATIONS)
    assert not r["settled"] and not r["ok"]
    assert r["tasks"][1]["routed_at"] is None and r["tasks"][1]["seconds_from_detection"] is None


def test_an_unplaceable_task_is_lost():
    after = {"task-0": place("node-0", 0), "task-1": place("node-2", 0)}
    cluster = moved_cluster(after={**after, "task-2": place("node-2", 1)})
    cluster["assignment"]["placements"] = after
    cluster["assignment"]["unplaceable"] = ["task-2"]
    r = migration.analyse(node_fault(), cluster, LOCATIONS)
    assert r["lost"] == ["task-2"] and not r["ok"] and not r["settled"]
    assert "lost: task-2" in r["summary"]


def test_two_tasks_on_one_gpu_and_a_stale_route_are_duplicates():
    after = {
        "task-0": place("node-0", 0),
        "task-1": place("node-2", 0),
        "task-2": place("node-2", 0),
    }
    routing = [
        route("worker-n0-g0", "task-0"),
        route("worker-n2-g0", "task-1"),
        route("worker-n1-g0", "task-1"),  # the old place still routed: served twice
        route("worker-n2-g0", "task-2"),
    ]
    r = migration.analyse(node_fault(), moved_cluster(after=after, routing=routing), LOCATIONS)
    assert not r["ok"]
    reasons = {(d["reason"], tuple(d.get("tasks") or [d.get("task")])) for d in r["duplicated"]}
    assert ("shared GPU", ("task-1", "task-2")) in reasons
    assert ("routed outside its placement", ("task-1",)) in reasons


def test_before_comes_from_the_first_event_when_none_precedes_the_fault():
    cluster = moved_cluster()
    cluster["events"] = cluster["events"][1:]  # the pre-fault assignment event rolled off
    r = migration.analyse(node_fault(), cluster, LOCATIONS)
    assert r["before"] == BEFORE and r["before_source"] == "first assignment event's before"
    assert r["ok"]


def test_a_task_left_on_an_active_failed_node_is_stranded():
    stuck = {
        "task-0": place("node-0", 0),
        "task-1": place("node-1", 0),
        "task-2": place("node-2", 1),
    }
    cluster = moved_cluster(after=stuck, routing=routes_for(stuck))
    cluster["events"] = [e for e in cluster["events"] if e.get("task") != "task-1"]
    r = migration.analyse(node_fault(), cluster, LOCATIONS)
    assert r["stranded"] == ["task-1"] and not r["settled"] and not r["ok"]
    # once the fault is gone, a task that simply stayed put is not a failure
    healed = migration.analyse(node_fault(removed_at=T0 + 0.2), cluster, LOCATIONS)
    assert healed["stranded"] == [] and healed["ok"]
    assert [t["moved"] for t in healed["tasks"]] == [False, True]


def test_a_gpu_fault_only_concerns_the_tasks_on_that_gpu():
    fault = {
        "id": "g1",
        "kind": "gpu-xid",
        "victims": ["worker-n1-g1"],
        "params": {"xid": 79},
        "injected_at": T0,
        "removed_at": None,
    }
    after = {
        "task-0": place("node-0", 0),
        "task-1": place("node-1", 0),
        "task-2": place("node-2", 1),
    }
    cluster = moved_cluster(after=after, routing=routes_for(after))
    cluster["events"] = [e for e in cluster["events"] if e.get("task") != "task-1"]
    r = migration.analyse(fault, cluster, LOCATIONS)
    assert [t["task"] for t in r["tasks"]] == ["task-2"]
    assert r["detection_s"] == pytest.approx(0.45)  # the detection of worker-n1-g1, not n1-g0
    assert r["ok"]


def test_a_drain_counts_from_when_the_cordon_was_written():
    fault = node_fault(kind="node-drain", injected_at=T0 + 0.3, details={"started_at": T0})
    assert migration.fault_started_at(fault) == T0
    r = migration.analyse(fault, moved_cluster(), LOCATIONS)
    assert r["fault"]["injected_at"] == T0 and r["ok"]


def test_worker_location_from_labels_or_name():
    assert migration.worker_location("w", {"node": "node-3", "gpu": "1"}) == ("node-3", 1)
    assert migration.worker_location("worker-n12-g3") == ("node-12", 3)
    assert migration.worker_location("raft-1") is None


def test_serving_state_names_tasks_without_a_route():
    cluster = moved_cluster(
        routing=[route("worker-n0-g0", "task-0"), route("worker-n2-g0", "task-1")]
    )
    s = migration.serving_state(cluster)
    assert not s["ok"] and s["not_routed"] == ["task-2"] and s["serving"] == 2 and s["desired"] == 3
    assert migration.serving_state(moved_cluster())["ok"]


class ScriptedStore:
    """Hands out a sequence of store contents, one per full read of the controllers' keys."""

    def __init__(self, snapshots):
        self.snapshots = list(snapshots)
        self.reads = 0

    def get(self, key):
        index = min(self.reads // 4, len(self.snapshots) - 1)
        self.reads += 1
        snapshot = self.snapshots[index]
        return {
            "tasks.spec": snapshot["spec"],
            "tasks.assignment": snapshot["assignment"],
            "controller.events": snapshot["events"],
            "routing.upstreams": snapshot["routing"],
        }[key]


@pytest.fixture
def run(monkeypatch, tmp_path):
    monkeypatch.setenv("INFERENCE_CHAOS_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(migration, "POLL_S", 0.001)
    r = context.start_run("unit", tmp_path / "runs")
    yield r
    context.end_run()


def add_fault(run, **fields):
    record = FaultRecord(
        kind="node-crash",
        victims=["worker-n1-g0", "worker-n1-g1"],
        params={"nodes": ["node-1"]},
        selector={},
        backend="test",
    )
    run.ledger.add(record)
    run.ledger.mark_injected(record, {})
    for k, v in fields.items():
        setattr(record, k, v)
    return record


def test_the_probe_waits_until_the_controller_settled(run, monkeypatch):
    add_fault(run, injected_at=T0)
    pending = moved_cluster(routed_2=None)
    store = ScriptedStore([pending, pending, moved_cluster()])
    monkeypatch.setattr(migration, "store_for", lambda configuration: store)
    r = migration.migration_report(bound_s=1.0, settle_s=5.0)
    assert r["ok"] and r["settled"] and store.reads >= 12


def test_the_probe_reports_unsettled_after_its_deadline(run, monkeypatch):
    add_fault(run, injected_at=T0)
    store = ScriptedStore([moved_cluster(routed_2=None)])
    monkeypatch.setattr(migration, "store_for", lambda configuration: store)
    r = migration.migration_report(settle_s=0.05)
    assert not r["ok"] and not r["settled"] and "not settled" in r["summary"]


def test_the_probe_needs_a_fault_and_controllers(run, monkeypatch):
    with pytest.raises(ActivityFailed, match="no fault"):
        migration.migration_report()
    add_fault(run, injected_at=T0)
    with pytest.raises(ActivityFailed, match="no fault with id 'nope'"):
        migration.migration_report(fault_id="nope")
    empty = {"spec": None, "assignment": None, "events": [], "routing": None}
    monkeypatch.setattr(migration, "store_for", lambda configuration: ScriptedStore([empty]))
    with pytest.raises(ActivityFailed, match="no controllers"):
        migration.migration_report(settle_s=0)


# -- autoscaling (experiments.scaling reads the same keys; its tests live here) ----------------


class MemoryStore:
    def __init__(self, data=None):
        self.data = dict(data or {})

    def get(self, key):
        return self.data.get(key)

    def put(self, key, value):
        self.data[key] = value

    def delete(self, key):
        self.data.pop(key, None)


def test_enable_and_disable_the_autoscaler(monkeypatch):
    from experiments import scaling

    store = MemoryStore()
    monkeypatch.setattr(scaling, "store_for", lambda configuration: store)
    out = scaling.enable_autoscaler(12, min_replicas="2", max_replicas=8, scale_in_cooldown_s=20)
    policy = store.data["autoscale.policy"]
    assert out["policy"] == policy
    assert policy["target_qps_per_replica"] == 12.0 and policy["min_replicas"] == 2
    assert policy["scale_in_cooldown_s"] == 20.0 and policy["forecast_horizon_s"] == 10.0
    assert policy["target_utilisation"] == 0.8  # the rest of AutoscaleConfig, defaults included
    assert scaling.disable_autoscaler()["deleted"] is True
    assert "autoscale.policy" not in store.data
    assert scaling.disable_autoscaler()["deleted"] is False


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"target_qps_per_replica": 0}, "target_qps_per_replica must be positive"),
        ({"target_qps_per_replica": "lots"}, "is not a number"),
        ({"target_qps_per_replica": 5, "min_replicas": 4, "max_replicas": 2}, "min_replicas"),
        ({"target_qps_per_replica": 5, "min_replicas": 1.5}, "not a whole number"),
        ({"target_qps_per_replica": 5, "scale_in_cooldown_s": -1}, "must not be negative"),
    ],
)
def test_a_bad_policy_is_one_line_and_writes_nothing(monkeypatch, arguments, message):
    from experiments import scaling

    store = MemoryStore()
    monkeypatch.setattr(scaling, "store_for", lambda configuration: store)
    with pytest.raises(ActivityFailed, match=message) as caught:
        scaling.enable_autoscaler(**arguments)
    assert "\n" not in str(caught.value) and store.data == {}


def test_scaled_out_reads_scale_events_against_the_load_peak():
    from experiments import scaling

    events = [
        {"kind": "scale", "at": T0 - 100, "from": 1, "to": 5, "reason": "an earlier run"},
        {"kind": "scale", "at": T0 + 1, "action": "add-node", "node": "node-4"},
        {"kind": "scale", "at": T0 + 5, "from": 1, "to": 2, "reason": "scale-out: forecast"},
        {"kind": "scale", "at": T0 + 8, "from": 2, "to": 4, "reason": "scale-out: demand"},
        {"kind": "migration", "task": "task-3", "at": T0 + 9},
    ]
    r = scaling.judge_scale_out(events, 4, since=T0, peak_at=T0 + 10)
    assert r["ok"] and r["check"] == "scaled-out" and r["reached_at"] == T0 + 8
    assert r["seconds_before_peak"] == 2.0 and r["replicas_at_start"] == 1
    assert "2.0 s before the load's peak" in r["summary"]
    assert [e["to"] for e in r["scale_events"]] == [2, 4]
    short = scaling.judge_scale_out(events, 5, since=T0, peak_at=None)
    assert not short["ok"] and short["max_replicas_seen"] == 4
    already = scaling.judge_scale_out([], 2, since=T0, peak_at=None, desired_now=3)
    assert not already["ok"] and "already 3 replicas" in already["summary"]


def test_load_peak_is_the_busiest_span():
    from experiments import scaling

    sends = [T0 + i * 0.5 for i in range(10)] + [T0 + 12 + i * 0.05 for i in range(40)]
    assert scaling.load_peak(sends, bin_s=5.0) == pytest.approx(T0 + 12.5)
    assert scaling.load_peak([]) is None


def test_replicas_counts_desired_placed_and_serving(monkeypatch):
    from experiments import scaling

    cluster = moved_cluster(routing=[route("worker-n0-g0", "task-0")])
    store = ScriptedStore([cluster])
    monkeypatch.setattr(scaling, "store_for", lambda configuration: store)
    out = scaling.replicas()
    assert (out["desired"], out["placed"], out["serving"]) == (3, 3, 1)


def test_a_task_may_stay_where_the_fault_is_remediated_in_place():
    stuck = {
        "task-0": place("node-0", 0),
        "task-1": place("node-1", 0),
        "task-2": place("node-1", 1),
    }
    cluster = moved_cluster(after=stuck, routing=routes_for(stuck))
    cluster["events"] = cluster["events"][:1]
    app_xid = {
        "id": "x13",
        "kind": "gpu-xid",
        "victims": ["worker-n1-g0"],
        "params": {"xid": 13, "set": {"xid": 13, "healthy": False}, "recovery": "restart"},
        "injected_at": T0,
        "removed_at": None,
    }
    r = migration.analyse(app_xid, cluster, LOCATIONS)
    assert r["ok"] and r["stranded"] == [] and r["tasks"][0]["moved"] is False
    off_the_bus = {**app_xid, "params": {"xid": 79, "set": {"healthy": False}, "recovery": "reset"}}
    assert migration.analyse(off_the_bus, cluster, LOCATIONS)["stranded"] == ["task-1"]
