"""node_drain and the `zone` argument of node faults: arguments, waiting, refusal, recovery.

The unit tests use a recording backend and an in-memory store; the integration test runs the
real local backend and `Store` against a small in-process KV with the store's HTTP API, with a
stand-in controller that moves the tasks off a draining node, then asks the migration probe.
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from chaoslib.exceptions import ActivityFailed

from experiments import context, faults
from experiments.backends.local import LocalBackend
from experiments.selectors import Candidate
from probes import migration
from resilience.store_client import Store

SPEC = {"tasks": [{"id": "task-0", "gpus": 1}, {"id": "task-1", "gpus": 1}]}
ON_NODE_1 = {
    "epoch": 1,
    "placements": {
        "task-0": {"node": "node-0", "gpus": [0]},
        "task-1": {"node": "node-1", "gpus": [0]},
    },
    "unplaceable": [],
}
MOVED = {
    "epoch": 2,
    "placements": {
        "task-0": {"node": "node-0", "gpus": [0]},
        "task-1": {"node": "node-0", "gpus": [1]},
    },
    "unplaceable": [],
}


def zone_of(n):
    return "zone-a" if n < 2 else "zone-b"


class RecordingBackend:
    name = "recording"

    def __init__(self):
        self.injected = []
        self.recovered = []

    def candidates(self):
        out = [Candidate("gateway", {"role": "gateway", "node": "node-0"})]
        for n in range(4):
            out.append(
                Candidate(f"raft-{n}", {"role": "raft", "node": f"node-{n}", "zone": zone_of(n)})
            )
            out.append(
                Candidate(
                    f"worker-n{n}-g0",
                    {"role": "worker", "node": f"node-{n}", "gpu": "0", "zone": zone_of(n)},
                )
            )
        return out

    def supports(self, kind):
        return True

    def inject(self, record):
        self.injected.append(record)
        return {}

    def recover(self, record):
        self.recovered.append(record.id)

    def describe(self, record):
        return {}


class MemoryStore:
    """The Store calls node_drain makes; the assignment moves after `moves_after` reads."""

    def __init__(self, data, moves_after=None):
        self.data = dict(data)
        self.moves_after = moves_after
        self.assignment_reads = 0

    def get(self, key):
        if key == "tasks.assignment":
            self.assignment_reads += 1
            if self.moves_after is not None and self.assignment_reads > self.moves_after:
                return MOVED
        return self.data.get(key)


@pytest.fixture
def backend(monkeypatch, tmp_path):
    monkeypatch.setenv("INFERENCE_CHAOS_HOME", str(tmp_path / "home"))
    b = RecordingBackend()
    monkeypatch.setattr(faults, "backend_for", lambda configuration: b)
    monkeypatch.setattr(faults, "DRAIN_POLL_S", 0.001)
    context.start_run("unit", tmp_path / "runs")
    yield b
    context.end_run()


def use_store(monkeypatch, store):
    monkeypatch.setattr(migration, "store_for", lambda configuration: store)


def test_zone_hits_every_node_of_the_zone(backend):
    out = faults.node_crash(zone="zone-b")
    assert out["params"] == {"restart_after": None, "zone": "zone-b", "nodes": ["node-2", "node-3"]}
    assert out["victims"] == ["raft-2", "raft-3", "worker-n2-g0", "worker-n3-g0"]
    paused = faults.node_pause(zone="zone-a", mode="one")  # a zone is all of it, whatever the mode
    assert paused["params"]["nodes"] == ["node-0", "node-1"]
    assert "gateway" in paused["victims"]
    assert faults.node_isolate(zone="zone-b")["params"]["partition"] == "blackhole"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: faults.node_crash(zone="zone-q"),
            r"zone 'zone-q' matches no node \(zones: zone-a, zone-b\)",
        ),
        (lambda: faults.node_pause(node="node-1", zone="zone-b"), "not both node and zone"),
        (
            lambda: faults.node_isolate(zone="zone-b", selector={"nodes": ["node-1"]}),
            "not both zone and selector",
        ),
    ],
)
def test_bad_zone_arguments_inject_nothing(backend, call, message):
    with pytest.raises(ActivityFailed, match=message):
        call()
    assert backend.injected == [] and context.current_run().ledger.records() == []


def test_node_drain_is_registered():
    assert "node_drain" in faults.FAULT_ACTIONS
    assert LocalBackend({"processes": [], "links": []}).supports("node-drain")


def test_node_drain_refuses_a_cluster_without_controllers(backend, monkeypatch):
    use_store(monkeypatch, MemoryStore({}))
    with pytest.raises(ActivityFailed, match="no tasks.spec"):
        faults.node_drain(node="node-1")
    with pytest.raises(ActivityFailed, match="runs none"):
        faults.preflight("node_drain", {"zone": "zone-b"}, {})
    assert backend.injected == [] and context.current_run().ledger.records() == []


def test_preflight_checks_drain_and_zone_arguments(backend, monkeypatch):
    use_store(monkeypatch, MemoryStore({"tasks.spec": SPEC, "tasks.assignment": ON_NODE_1}))
    out = faults.preflight("node_drain", {"zone": "zone-b", "timeout_s": "5s"}, {})
    assert out["params"] == {"timeout_s": 5.0, "zone": "zone-b", "nodes": ["node-2", "node-3"]}
    with pytest.raises(ActivityFailed, match="timeout_s: cannot read"):
        faults.preflight("node_drain", {"node": "node-1", "timeout_s": "soon"}, {})
    with pytest.raises(ActivityFailed, match="matches no node"):
        faults.preflight("node_crash", {"zone": "zone-z"}, {})
    assert backend.injected == []


def test_node_drain_returns_once_the_tasks_moved(backend, monkeypatch):
    store = MemoryStore({"tasks.spec": SPEC, "tasks.assignment": ON_NODE_1}, moves_after=3)
    use_store(monkeypatch, store)
    out = faults.node_drain(node="node-1", timeout_s=5)
    assert out["kind"] == "node-drain" and out["params"]["nodes"] == ["node-1"]
    assert store.assignment_reads == 4  # three with task-1 still on node-1, then moved
    assert out["removed_at"] is None and backend.recovered == []
    assert [r.kind for r in context.current_run().ledger.active()] == ["node-drain"]


def test_node_drain_with_duration_uncordons_after_it(backend, monkeypatch):
    use_store(monkeypatch, MemoryStore({"tasks.spec": SPEC, "tasks.assignment": MOVED}))
    out = faults.node_drain(node="node-1", duration="20ms")
    assert out["removed_at"] - out["injected_at"] >= 0.02
    assert backend.recovered == [out["id"]]


def test_node_drain_that_does_not_finish_fails_and_is_undone(backend, monkeypatch):
    use_store(monkeypatch, MemoryStore({"tasks.spec": SPEC, "tasks.assignment": ON_NODE_1}))
    started = time.monotonic()
    with pytest.raises(ActivityFailed, match=r"after 0.1s task\(s\) task-1 still on node-1"):
        faults.node_drain(node="node-1", timeout_s="100ms")
    assert time.monotonic() - started < 2
    [record] = context.current_run().ledger.records()
    assert backend.recovered == [record.id] and record.removed_at is not None
    assert "still on node-1" in record.error


def test_tasks_on_nodes():
    assert faults.tasks_on_nodes(ON_NODE_1, ["node-1"]) == ["task-1"]
    assert faults.tasks_on_nodes(ON_NODE_1, ["node-0", "node-1"]) == ["task-0", "task-1"]
    assert faults.tasks_on_nodes(None, ["node-1"]) == []


# -- integration: the local backend and Store against an HTTP KV -----------------------------


class KV:
    """A tiny KV with the store's client API: GET/PUT/DELETE /kv/{key}, POST /kv/{key}/cas."""

    def __init__(self):
        self.data = {}
        self.lock = threading.Lock()
        kv = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status, body):
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _body(self):
                length = int(self.headers.get("content-length") or 0)
                return json.loads(self.rfile.read(length) or b"{}")

            def _key(self):
                return self.path.split("/kv/", 1)[1].removesuffix("/cas")

            def do_GET(self):
                with kv.lock:
                    value = kv.data.get(self._key())
                if value is None:
                    return self._reply(404, {"error": "not found"})
                return self._reply(200, {"key": self._key(), "value": value})

            def do_PUT(self):
                body = self._body()
                with kv.lock:
                    kv.data[self._key()] = body["value"]
                self._reply(200, {"revision": 1})

            def do_DELETE(self):
                with kv.lock:
                    existed = kv.data.pop(self._key(), None) is not None
                self._reply(200, {"deleted": existed})

            def do_POST(self):
                body = self._body()
                with kv.lock:
                    current = kv.data.get(self._key())
                    ok = current == body["expect"]
                    if ok:
                        kv.data[self._key()] = body["value"]
                    value = kv.data.get(self._key())
                self._reply(200, {"succeeded": ok, "value": value})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def stand_in_controller(store: Store, stop: threading.Event) -> None:
    """Moves every task off draining nodes to node-0 GPU 1, make-before-break, with events."""
    while not stop.is_set():
        schedule = store.get("nodes.schedule") or {}
        assignment = store.get("tasks.assignment")
        draining = {n for n, e in schedule.items() if e.get("draining")}
        leaving = faults.tasks_on_nodes(assignment, sorted(draining))
        if leaving:
            detected = time.time()
            before = assignment["placements"]
            after = {**before, **{t: {"node": "node-0", "gpus": [1]} for t in leaving}}
            store.put("tasks.assignment", {**assignment, "epoch": 2, "placements": after})
            routed = time.time()
            store.put(
                "routing.upstreams",
                [
                    {
                        "name": f"worker-n{p['node'][5:]}-g{p['gpus'][0]}",
                        "url": "u",
                        "labels": {"task": t},
                    }
                    for t, p in sorted(after.items())
                ],
            )
            events = store.get("controller.events") or []
            events.append(
                {"kind": "assignment", "at": detected, "epoch": 2, "before": before, "after": after}
            )
            events += [
                {
                    "kind": "migration",
                    "task": t,
                    "reason": "drain",
                    "from": before[t],
                    "to": after[t],
                    "detected_at": detected,
                    "assigned_at": detected,
                    "serving_at": routed,
                    "routed_at": routed,
                    "epoch": 2,
                }
                for t in leaving
            ]
            store.put("controller.events", events)
        stop.wait(0.02)


@pytest.mark.integration
def test_drain_through_the_store_moves_tasks_and_recovery_uncordons(monkeypatch, tmp_path):
    monkeypatch.setenv("INFERENCE_CHAOS_HOME", str(tmp_path / "home"))
    with KV() as kv:
        store = Store([kv.url])
        store.put("tasks.spec", SPEC)
        store.put("tasks.assignment", ON_NODE_1)
        store.put(
            "controller.events",
            [
                {
                    "kind": "assignment",
                    "at": time.time() - 5,
                    "before": {},
                    "after": ON_NODE_1["placements"],
                }
            ],
        )
        store.put(
            "nodes.schedule", {"node-3": {"cordoned": True, "draining": False, "reason": "xid 79"}}
        )
        state = {
            "raft_endpoints": [kv.url],
            "links": [],
            "processes": [
                {
                    "name": f"worker-n{n}-g{g}",
                    "labels": {
                        "role": "worker",
                        "node": f"node-{n}",
                        "gpu": str(g),
                        "zone": zone_of(n),
                    },
                    "ports": {"http": 1},
                }
                for n in range(2)
                for g in range(2)
            ],
        }
        backend = LocalBackend(state)
        monkeypatch.setattr(faults, "backend_for", lambda configuration: backend)
        configuration = {"raft_endpoints": [kv.url]}
        context.start_run("drain", tmp_path / "runs")
        stop = threading.Event()
        controller = threading.Thread(target=stand_in_controller, args=(store, stop), daemon=True)
        controller.start()
        try:
            out = faults.node_drain(node="node-1", timeout_s=5, configuration=configuration)
            schedule = store.get("nodes.schedule")
            assert schedule["node-1"]["cordoned"] and schedule["node-1"]["draining"]
            assert schedule["node-1"]["reason"] == f"drain (fault {out['id']})"
            assert out["details"]["started_at"] <= out["injected_at"]
            assert faults.tasks_on_nodes(store.get("tasks.assignment"), ["node-1"]) == []

            report = migration.migration_report(
                bound_s=1.0, settle_s=2.0, configuration=configuration
            )
            assert report["ok"], report["summary"]
            assert [t["task"] for t in report["tasks"]] == ["task-1"]
            assert report["tasks"][0]["from"] == {"node": "node-1", "gpus": [0]}
            assert report["tasks"][0]["to"] == {"node": "node-0", "gpus": [1]}
            assert report["lost"] == [] and report["duplicated"] == []

            faults.recover(out["id"], configuration=configuration)
            # our cordon is gone; the controller's own (an Xid on node-3) stays
            assert set(store.get("nodes.schedule")) == {"node-3"}
        finally:
            stop.set()
            controller.join(5)
            context.end_run()
