"""Remediation on Kubernetes against a fake API server on loopback, through the official client.

A worker restart is the deletion of exactly its pod (its StatefulSet recreates it); RBAC
refusals, missing pods and a silent API become failed outcomes that say why; adding or removing
nodes says it is a cluster autoscaler's job. The last tests drive the controller's own restart
and add-node paths in-process (a dict plays the store) to show what it records.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from resilience.controller import EVENTS_KEY, POLICY_KEY, ClusterMap, Controller, ControllerConfig
from resilience.detector import Detection
from resilience.remediation import KubernetesRemediation, Outcome
from resilience.store_client import encode
from tests.fakekube import FakeKube

pytestmark = pytest.mark.integration
NS = "inference"
WORKERS = ("worker-n0-0", "worker-n0-1", "worker-n1-0", "worker-n1-1")


@pytest.fixture
def kube(tmp_path: Path):
    fake = FakeKube()
    fake.start()
    fake.add_node("kind-worker")
    for name in WORKERS:
        fake.add_pod(NS, name, {"role": "worker"}, node="kind-worker", owner_kind="StatefulSet")
    fake.add_pod(NS, "raft-0", {"role": "raft"}, node="kind-worker", owner_kind="StatefulSet")
    try:
        yield fake, fake.write_kubeconfig(tmp_path / "kubeconfig")
    finally:
        fake.stop()


def restart(remediation: KubernetesRemediation, worker: str) -> Outcome:
    async def go() -> Outcome:
        try:
            return await remediation.restart_worker(worker)
        finally:
            await remediation.close()

    return asyncio.run(go())


def pod_names(fake: FakeKube) -> set[str]:
    return {p["metadata"]["name"] for p in fake.objects("pods", NS)}


def deletes(fake: FakeKube) -> list[Any]:
    return [r for r in fake.requests if r.method == "DELETE"]


def test_a_restart_deletes_exactly_the_workers_pod(kube) -> None:
    fake, kubeconfig = kube
    uid = fake.get("pods", NS, "worker-n0-1")["metadata"]["uid"]
    outcome = restart(KubernetesRemediation(NS, kubeconfig), "worker-n0-1")
    assert outcome == Outcome(True)
    (request,) = deletes(fake)
    assert request.path == f"/api/v1/namespaces/{NS}/pods/worker-n0-1"
    assert request.body["preconditions"]["uid"] == uid  # the pod it read, not a newer one
    assert "gracePeriodSeconds" not in request.body  # the pod's own grace: no forced deletion
    assert pod_names(fake) == {*WORKERS, "raft-0"} - {"worker-n0-1"}


def test_rbac_refusing_the_delete_is_a_failed_outcome_that_says_so(kube) -> None:
    fake, kubeconfig = kube
    fake.deny("delete", "pods", NS)
    outcome = restart(KubernetesRemediation(NS, kubeconfig), "worker-n1-0")
    assert not outcome.ok and outcome.available
    assert "RBAC denied" in outcome.detail and "cannot delete" in outcome.detail
    assert "worker-n1-0" in pod_names(fake)


def test_a_pod_that_is_not_there_is_a_failed_outcome_that_says_so(kube) -> None:
    fake, kubeconfig = kube
    outcome = restart(KubernetesRemediation(NS, kubeconfig), "worker-n9-0")
    assert not outcome.ok
    assert "worker-n9-0" in outcome.detail and "not found" in outcome.detail
    assert deletes(fake) == []
    assert pod_names(fake) == {*WORKERS, "raft-0"}


def test_a_pod_nothing_would_recreate_is_not_deleted(kube) -> None:
    fake, kubeconfig = kube
    fake.add_pod(NS, "worker-bare", {"role": "worker"}, node="kind-worker", owner_kind=None)
    outcome = restart(KubernetesRemediation(NS, kubeconfig), "worker-bare")
    assert not outcome.ok and "no controller" in outcome.detail
    assert deletes(fake) == [] and "worker-bare" in pod_names(fake)


def test_an_api_server_that_does_not_answer_is_a_failed_outcome(tmp_path: Path) -> None:
    fake = FakeKube()
    fake.start()
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
    fake.stop()  # its port is closed: connections are refused
    started = time.monotonic()
    outcome = restart(KubernetesRemediation(NS, kubeconfig, timeout_s=1.0), "worker-n0-0")
    assert not outcome.ok and "does not answer" in outcome.detail
    assert time.monotonic() - started < 10


def test_without_credentials_a_restart_fails_and_says_why(monkeypatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    outcome = restart(KubernetesRemediation(NS), "worker-n0-0")  # in-cluster, but not in a pod
    assert not outcome.ok and "no Kubernetes credentials" in outcome.detail


def test_nodes_cannot_be_added_or_removed_and_the_api_is_not_asked(kube) -> None:
    fake, kubeconfig = kube
    remediation = KubernetesRemediation(NS, kubeconfig)
    before = len(fake.requests)
    added = asyncio.run(remediation.add_node(2))
    removed = asyncio.run(remediation.remove_node("node-4"))
    for outcome in (added, removed):
        assert not outcome.ok and not outcome.available
        assert "not available on Kubernetes" in outcome.detail
    assert len(fake.requests) == before


# -- the controller's own paths, in-process -------------------------------------------------------


class MemoryStore:
    """The three calls of AsyncStore the restart and add-node paths use, on a dict."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    async def get_raw(self, key: str) -> str | None:
        return self.data.get(key)

    async def get(self, key: str) -> Any:
        raw = self.data.get(key)
        return json.loads(raw) if raw is not None else None

    async def cas(self, key: str, expect_raw: str | None, value: Any) -> tuple[bool, str | None]:
        if self.data.get(key) != expect_raw:
            return False, self.data.get(key)
        self.data[key] = encode(value)
        return True, self.data[key]

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in json.loads(self.data.get(EVENTS_KEY, "[]")) if e["kind"] == kind]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def controller_on(remediation: KubernetesRemediation, tmp_path: Path) -> Controller:
    """A controller that knows two workers (at a closed port: draining ends at once)."""
    url = f"http://127.0.0.1:{closed_port()}"
    workers = {str(g): {"name": f"worker-n0-{g}", "url": url, "link_url": url} for g in (0, 1)}
    cluster = tmp_path / "cluster.json"
    cluster.write_text(json.dumps({"nodes": {"node-0": {"gpus": 2, "workers": workers}}}))
    config = ControllerConfig(restart_drain_s=0.2)
    controller = Controller("controller-0", config, ["http://s"], remediation, cluster, 1, 1)
    controller.cluster = ClusterMap.load(cluster)
    controller.store = MemoryStore()  # type: ignore[assignment]
    return controller


def drive(controller: Controller, *steps: Any) -> None:
    async def go() -> None:
        controller.session = aiohttp.ClientSession()
        try:
            for step in steps:
                await step()
        finally:
            await controller.remediation.close()
            await controller.session.close()

    asyncio.run(go())


def app_xid(worker: str) -> Detection:
    return Detection(worker, time.time(), "app_fault", "xid 13 (application)", 13)


def test_the_controllers_restart_deletes_the_pod_and_records_it(kube, tmp_path: Path) -> None:
    fake, kubeconfig = kube
    controller = controller_on(KubernetesRemediation(NS, kubeconfig), tmp_path)
    drive(controller, lambda: controller._restart(app_xid("worker-n0-0")))
    (event,) = controller.store.events("remediation")
    assert event["action"] == "restart" and event["worker"] == "worker-n0-0"
    assert event["ok"] is True and event["detail"] is None
    assert "worker-n0-0" not in pod_names(fake) and "worker-n0-1" in pod_names(fake)
    assert "worker-n0-0" not in controller.restarting


def test_the_controller_records_a_refused_restart_as_failed(kube, tmp_path: Path) -> None:
    fake, kubeconfig = kube
    fake.deny("delete", "pods", NS)
    controller = controller_on(KubernetesRemediation(NS, kubeconfig), tmp_path)
    drive(controller, lambda: controller._restart(app_xid("worker-n0-1")))
    (event,) = controller.store.events("remediation")
    assert event["ok"] is False and "RBAC denied" in event["detail"]
    assert "worker-n0-1" in pod_names(fake)


def test_the_controller_asks_for_a_node_once_and_records_why_not(kube, tmp_path: Path) -> None:
    fake, kubeconfig = kube
    controller = controller_on(KubernetesRemediation(NS, kubeconfig), tmp_path)
    controller.store.data[POLICY_KEY] = encode({"target_qps_per_replica": 1.0})

    async def ask() -> None:
        await controller._maybe_add_node([])

    drive(controller, ask, ask, ask)  # reconcile calls it every round while tasks do not fit
    (event,) = controller.store.events("scale")
    assert event["action"] == "add-node" and event["ok"] is False
    assert event["available"] is False
    assert "cluster autoscaler adds nodes" in event["detail"]
