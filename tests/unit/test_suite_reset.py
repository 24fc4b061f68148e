"""The reset between two experiments: what it sees as left over, and what it undoes.

The cluster is faked: a state file naming live pids (this test's own) and an httpx transport
that answers as the proxy, the gateway, the supervisor and the worker would."""

from __future__ import annotations

import dataclasses
import json
import os

import httpx
import pytest

from experiments.suite_reset import cluster_problems, undo_leftovers
from resilience.worker import GpuState

SHAPE = {"nodes": 1, "gpus_per_node": 1, "tasks": 0, "task_gpus": 1}
HEALTHY = dataclasses.asdict(GpuState())


def state(held: bool = False) -> dict:
    me = os.getpid()
    return {
        "ready": True,
        "supervisor": {"pid": me, "control_url": "http://sup"},
        "gateway_url": "http://gw",
        "proxy_control_url": "http://proxy",
        "raft_endpoints": [],
        "added_nodes": [],
        "processes": [
            {
                "name": "worker-n0-g0",
                "pid": me,
                "ports": {"http": 9},
                "labels": {"role": "worker"},
                "held": held,
            }
        ],
        "links": [],
    }


class FakeCluster:
    def __init__(self, gpu: dict, proxy_faults: list, ejected: bool) -> None:
        self.gpu, self.proxy_faults, self.ejected = gpu, proxy_faults, ejected
        self.calls: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        call = f"{request.method} {request.url}"
        self.calls.append(call)
        if call == "GET http://proxy/faults":
            return httpx.Response(200, json=self.proxy_faults)
        if call == "DELETE http://proxy/faults":
            self.proxy_faults = []
            return httpx.Response(200, json={"removed": 1})
        if call == "GET http://gw/upstreams":
            return httpx.Response(
                200, json={"worker-n0-g0": {"healthy": True, "ejected": self.ejected}}
            )
        if call == "GET http://127.0.0.1:9/fault":
            return httpx.Response(200, json=self.gpu)
        if call == "DELETE http://127.0.0.1:9/fault":
            self.gpu = dict(HEALTHY)
            return httpx.Response(200, json=self.gpu)
        if call.startswith("POST http://sup/processes/"):
            return httpx.Response(200, json={"restarted": False})
        return httpx.Response(404, json={"error": call})


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("INFERENCE_CHAOS_HOME", str(tmp_path))
    return tmp_path


def write_state(home, st: dict) -> None:
    (home / "state.json").write_text(json.dumps(st))


def test_a_clean_cluster_has_no_problem(home):
    write_state(home, state())
    fake = FakeCluster(dict(HEALTHY), [], ejected=False)
    with httpx.Client(transport=httpx.MockTransport(fake)) as client:
        assert cluster_problems(SHAPE, client) == []


def test_every_kind_of_leftover_is_seen(home):
    write_state(home, state(held=True))
    (home / "faults").mkdir()
    (home / "faults" / "run-1.json").write_text(
        json.dumps(
            [
                {
                    "kind": "pod-kill",
                    "victims": ["worker-n0-g0"],
                    "params": {},
                    "selector": {},
                    "backend": "local",
                    "id": "f1",
                    "injected_at": 1.0,
                    "removed_at": None,
                }
            ]
        )
    )
    fake = FakeCluster({**HEALTHY, "slowdown": 2.0}, [{"id": "x"}], ejected=True)
    with httpx.Client(transport=httpx.MockTransport(fake)) as client:
        problems = cluster_problems(SHAPE, client)
        assert problems == [
            "fault pod-kill f1 still active in run-1.json",
            "worker-n0-g0 is held",
            "1 fault(s) in the proxy",
            "worker-n0-g0 is out of the gateway's rotation",
        ]
        assert cluster_problems(SHAPE, client, ignore={"run-1.json"})[0] == "worker-n0-g0 is held"


def test_undo_clears_proxy_faults_gpu_state_and_holds(home):
    st = state(held=True)
    fake = FakeCluster({**HEALTHY, "xid": 79, "healthy": False}, [{"id": "x"}], ejected=False)
    with httpx.Client(transport=httpx.MockTransport(fake)) as client:
        done = undo_leftovers(st, SHAPE, client, remove_nodes=False)
    assert done == [
        "proxy faults cleared",
        "worker-n0-g0 released",
        "worker-n0-g0 GPU fault state reset",
    ]
    assert "DELETE http://proxy/faults" in fake.calls
    assert "POST http://sup/processes/worker-n0-g0/release" in fake.calls
    assert fake.gpu == HEALTHY and fake.proxy_faults == []


def test_undo_leaves_a_clean_cluster_alone(home):
    fake = FakeCluster(dict(HEALTHY), [], ejected=False)
    with httpx.Client(transport=httpx.MockTransport(fake)) as client:
        assert undo_leftovers(state(), SHAPE, client, remove_nodes=True) == []
    assert not [c for c in fake.calls if not c.startswith("GET")]
