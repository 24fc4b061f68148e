"""GPU and node fault actions against a recording backend: arguments, Xid table, victims."""

import pytest
from chaoslib.exceptions import ActivityFailed

from experiments import context, faults
from experiments.selectors import Candidate


class RecordingBackend:
    name = "recording"

    def __init__(self):
        self.injected = []
        self.recovered = []

    def candidates(self):
        return [
            Candidate("gateway", {"role": "gateway", "node": "node-0"}),
            Candidate("raft-1", {"role": "raft", "node": "node-1"}),
            *(
                Candidate(f"worker-n{n}-g{g}", {"role": "worker", "node": f"node-{n}"})
                for n in range(2)
                for g in range(2)
            ),
        ]

    def supports(self, kind):
        return True

    def inject(self, record):
        self.injected.append(record)
        return {}

    def recover(self, record):
        self.recovered.append(record.id)

    def describe(self, record):
        return {}


@pytest.fixture
def backend(monkeypatch, tmp_path):
    monkeypatch.setenv("INFERENCE_CHAOS_HOME", str(tmp_path / "home"))
    b = RecordingBackend()
    monkeypatch.setattr(faults, "backend_for", lambda configuration: b)
    context.start_run("unit", tmp_path / "runs")
    yield b
    context.end_run()


@pytest.mark.parametrize(
    ("xid", "gpu", "add", "recovery"),
    [
        (13, {"xid": 13, "healthy": False}, {}, "restart"),
        (31, {"xid": 31, "healthy": False}, {}, "restart"),
        (43, {"xid": 43, "hang": True}, {}, "reset"),
        (48, {"xid": 48, "healthy": False}, {"ecc_dbe_volatile": 1}, "reset"),
        (79, {"xid": 79, "healthy": False}, {}, "reset"),
        (94, {"xid": 94}, {"ecc_dbe_volatile": 1}, "reset"),
        (95, {"xid": 95, "healthy": False}, {"ecc_dbe_volatile": 1}, "reset"),
    ],
)
def test_xid_table_sets_nvidia_consequences(backend, xid, gpu, add, recovery):
    out = faults.gpu_xid(xid=str(xid))
    assert out["kind"] == "gpu-xid"
    assert out["params"] == {"xid": xid, "set": gpu, "add": add, "recovery": recovery}
    assert out["victims"][0].startswith("worker-")


@pytest.mark.parametrize("xid", [0, 12, 999, "seventy-nine", None, True])
def test_unsupported_xid_lists_the_supported_ones(backend, xid):
    with pytest.raises(ActivityFailed, match=r"supported: 13 .*, 31 .*, 43 .*, 79 .*, 95 "):
        faults.gpu_xid(xid=xid)
    assert backend.injected == [] and context.current_run().ledger.records() == []


@pytest.mark.parametrize(
    "call",
    [
        lambda: faults.gpu_xid(79, selector={}),
        lambda: faults.gpu_hang(selector={"nodes": ["node-1"]}, mode="one"),
        lambda: faults.gpu_throttle(selector={"pods": ["gateway", "worker-n0-g0"]}, mode="all"),
        lambda: faults.hbm_pressure(selector={"labelSelectors": {"role": "gateway"}}),
    ],
)
def test_only_workers_can_be_gpu_victims(backend, call):
    with pytest.raises(ActivityFailed, match="workers only"):
        call()
    assert backend.injected == [] and context.current_run().ledger.records() == []


def test_gpu_selector_defaults_to_workers_and_keeps_modes(backend):
    out = faults.gpu_hang(mode="all")
    assert out["victims"] == [f"worker-n{n}-g{g}" for n in range(2) for g in range(2)]
    assert out["params"]["set"] == {"hang": True}
    node1 = faults.gpu_throttle(
        selector={"labelSelectors": {"role": "worker"}, "nodes": ["node-1"]}, mode="all"
    )
    assert node1["victims"] == ["worker-n1-g0", "worker-n1-g1"]
    assert node1["params"]["set"] == {"slowdown": 2.0, "sm_clock_mhz": 900.0, "temperature_c": 92.0}


def test_gpu_fault_with_duration_is_removed(backend):
    out = faults.hbm_pressure(kv_capacity_factor=0.5, fb_used_mib=80000, duration="30ms")
    assert out["params"]["set"] == {"kv_capacity_factor": 0.5, "fb_used_mib": 80000.0}
    assert out["removed_at"] - out["injected_at"] >= 0.03
    assert backend.recovered == [out["id"]]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: faults.gpu_throttle(slowdown=0.5), "not faster"),
        (lambda: faults.gpu_throttle(slowdown="x"), "not a number"),
        (lambda: faults.gpu_throttle(sm_clock_mhz=0), "must be > 0"),
        (lambda: faults.hbm_pressure(kv_capacity_factor=1.5), r"\[0, 1\)"),
        (lambda: faults.hbm_pressure(fb_used_mib=-1), "must be > 0"),
        (lambda: faults.gpu_hang(duration="soon"), "cannot read"),
    ],
)
def test_bad_gpu_arguments_inject_nothing(backend, call, message):
    with pytest.raises(ActivityFailed, match=message):
        call()
    assert backend.injected == []


def test_node_crash_hits_every_process_of_the_node(backend):
    out = faults.node_crash(node="node-1")
    assert out["kind"] == "node-crash"
    assert out["victims"] == ["raft-1", "worker-n1-g0", "worker-n1-g1"]
    assert out["params"] == {"restart_after": None, "nodes": ["node-1"]}
    assert out["selector"]["nodes"] == ["node-1"]


def test_node_selector_chooses_among_node_names(backend):
    one = faults.node_pause(selector={"nodes": ["node-0", "node-1"]}, mode="one")
    assert len(one["params"]["nodes"]) == 1
    both = faults.node_isolate(selector={"nodes": ["node-0", "node-1"]}, mode="all")
    assert both["params"] == {
        "partition": "blackhole",
        "direction": "both",
        "nodes": ["node-0", "node-1"],
    }
    assert len(both["victims"]) == 6
    anywhere = faults.node_crash(mode="fixed", value=2, restart_after="1s")
    assert anywhere["params"]["nodes"] == ["node-0", "node-1"]
    assert anywhere["params"]["restart_after"] == 1.0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: faults.node_crash(node="node-7"), "matches nothing.*node-0, node-1"),
        (lambda: faults.node_pause(selector={"pods": ["gateway"]}), "only 'nodes'"),
        (lambda: faults.node_isolate(node="node-1", selector={"nodes": ["node-1"]}), "not both"),
        (lambda: faults.node_crash(node="node-1", restart_after="later"), "cannot read"),
        (lambda: faults.node_pause(mode="most"), "unknown mode"),
    ],
)
def test_bad_node_arguments_inject_nothing(backend, call, message):
    with pytest.raises(ActivityFailed, match=message):
        call()
    assert backend.injected == [] and context.current_run().ledger.records() == []


def test_preflight_knows_the_new_actions(backend):
    for name in ("gpu_xid", "gpu_hang", "gpu_throttle", "hbm_pressure"):
        assert name in faults.FAULT_ACTIONS
    for name in ("node_crash", "node_pause", "node_isolate"):
        assert name in faults.FAULT_ACTIONS
    out = faults.preflight("node_crash", {"node": "node-0"}, {})
    assert out["victims"] == ["gateway", "worker-n0-g0", "worker-n0-g1"]
    with pytest.raises(ActivityFailed, match="workers only"):
        faults.preflight("gpu_xid", {"xid": 79, "selector": {}}, {})
    assert backend.injected == []
