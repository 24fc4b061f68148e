"""The fake apiserver spoken to only through the official `kubernetes` client, as the Kubernetes
backend will speak to it: selectors, Status errors, RBAC, watches, the emulated Chaos Mesh
lifecycle (inject, pause, finalizers), eviction against PDBs, Jobs, discovery."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from experiments.kube.names import (
    CHAOS_KINDS,
    CLEAN_FINALIZER_ANNOTATION,
    GROUP,
    PAUSE_ANNOTATION,
    RECORDS_FINALIZER,
    VERSION,
)
from tests.fakekube import FakeKube

pytestmark = pytest.mark.integration

NS = "serving"


@pytest.fixture
def fake() -> Iterator[FakeKube]:
    kube = FakeKube()
    kube.start()
    kube.add_node("gpu-node-1", {"nvidia.com/gpu.present": "true"})
    kube.add_node("gpu-node-2", {"nvidia.com/gpu.present": "true"})
    kube.add_namespace(NS, {"inference-chaos.io/chaos": "enabled"})
    kube.add_pod(NS, "decode-7d9f8-aaaaa", {"app": "vllm", "role": "decode"}, node="gpu-node-1")
    kube.add_pod(NS, "decode-7d9f8-bbbbb", {"app": "vllm", "role": "decode"}, node="gpu-node-2")
    kube.add_pod(
        NS,
        "prefill-5c6b7-ccccc",
        {"app": "vllm", "role": "prefill"},
        node="gpu-node-1",
        containers=["engine", "sidecar"],
    )
    kube.add_pod(
        "other", "gateway-0", {"app": "gateway"}, node="gpu-node-2", owner_kind="StatefulSet"
    )
    yield kube
    kube.stop()


@pytest.fixture
def api(fake: FakeKube, tmp_path: Path) -> Iterator[client.ApiClient]:
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
    api_client = config.new_client_from_config(config_file=str(kubeconfig))
    yield api_client
    api_client.close()


def chaos_manifest(name: str, kind: str = "NetworkChaos", **spec: Any) -> dict[str, Any]:
    """A manifest of `kind`; keyword arguments override the spec (None drops a field)."""
    body = {
        "action": "delay",
        "mode": "all",
        "selector": {"labelSelectors": {"app": "vllm", "role": "decode"}},
        "delay": {"latency": "100ms"},
    }
    body.update(spec)
    body = {k: v for k, v in body.items() if v is not None}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": kind,
        "metadata": {"name": name, "labels": {"inference-chaos.io/run-id": "run-1"}},
        "spec": body,
    }


def conditions(obj: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in (obj.get("status") or {}).get("conditions") or []}


def wait_for(read: Callable[[], Any], accept: Callable[[Any], bool], timeout_s: float = 3.0):
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if accept(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached; last value: {value!r}")
        time.sleep(0.02)


def error_of(call: Callable[[], Any]) -> tuple[int, dict[str, Any]]:
    with pytest.raises(ApiException) as info:
        call()
    return info.value.status, json.loads(info.value.body)


def test_list_pods_with_label_and_field_selectors(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)

    def names(result: client.V1PodList) -> list[str]:
        return [p.metadata.name for p in result.items]

    decode = core.list_namespaced_pod(NS, label_selector="app=vllm,role=decode")
    assert names(decode) == ["decode-7d9f8-aaaaa", "decode-7d9f8-bbbbb"]
    assert names(core.list_namespaced_pod(NS, label_selector="role!=decode")) == [
        "prefill-5c6b7-ccccc"
    ]
    in_set = core.list_pod_for_all_namespaces(label_selector="app in (gateway, nothing)")
    assert names(in_set) == ["gateway-0"]
    on_node = core.list_pod_for_all_namespaces(field_selector="spec.nodeName=gpu-node-1")
    assert names(on_node) == ["decode-7d9f8-aaaaa", "prefill-5c6b7-ccccc"]
    by_name = core.list_namespaced_pod(NS, field_selector="metadata.name=decode-7d9f8-bbbbb")
    assert names(by_name) == ["decode-7d9f8-bbbbb"]
    deleted = core.delete_namespaced_pod("gateway-0", "other")
    assert deleted.metadata.name == "gateway-0"
    assert names(core.list_namespaced_pod("other")) == []
    pod = core.read_namespaced_pod("prefill-5c6b7-ccccc", NS)
    assert pod.spec.node_name == "gpu-node-1" and pod.status.phase == "Running"
    assert [c.name for c in pod.spec.containers] == ["engine", "sidecar"]
    assert pod.metadata.owner_references[0].kind == "ReplicaSet"
    code, status = error_of(lambda: core.list_namespaced_pod(NS, field_selector="spec.bogus=x"))
    assert code == 400 and status["reason"] == "BadRequest"
    nodes = client.CoreV1Api(api).list_node(label_selector="nvidia.com/gpu.present=true")
    assert [n.metadata.name for n in nodes.items] == ["gpu-node-1", "gpu-node-2"]
    namespaces = core.list_namespace(label_selector="inference-chaos.io/chaos=enabled")
    assert [n.metadata.name for n in namespaces.items] == [NS]


def test_chaos_is_watched_until_all_injected(fake: FakeKube, api: client.ApiClient) -> None:
    custom = client.CustomObjectsApi(api)
    listed = custom.list_namespaced_custom_object(GROUP, VERSION, NS, "networkchaos")
    start_rv = listed["metadata"]["resourceVersion"]
    created = custom.create_namespaced_custom_object(
        GROUP, VERSION, NS, "networkchaos", chaos_manifest("delay-decode")
    )
    assert created["metadata"]["uid"] and "status" not in created
    # the webhook defaults an empty selector.namespaces to the object's namespace
    assert created["spec"]["selector"]["namespaces"] == [NS]

    events, versions = [], []
    stream = watch.Watch()
    for event in stream.stream(
        custom.list_namespaced_custom_object,
        GROUP,
        VERSION,
        NS,
        "networkchaos",
        resource_version=start_rv,
        label_selector="inference-chaos.io/run-id=run-1",
        timeout_seconds=5,
    ):
        obj = event["object"]
        events.append(event["type"])
        versions.append(int(obj["metadata"]["resourceVersion"]))
        state = conditions(obj)
        if state.get("Selected") == "True" and state.get("AllInjected") == "True":
            stream.stop()
    assert events[0] == "ADDED" and set(events[1:]) == {"MODIFIED"}
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    assert obj["metadata"]["finalizers"] == [RECORDS_FINALIZER]
    assert obj["status"]["experiment"]["desiredPhase"] == "Run"
    records = obj["status"]["experiment"]["containerRecords"]
    assert [r["id"] for r in records] == [f"{NS}/decode-7d9f8-aaaaa", f"{NS}/decode-7d9f8-bbbbb"]
    for record in records:
        assert (record["phase"], record["selectorKey"]) == ("Injected", ".")
        assert (record["injectedCount"], record["recoveredCount"]) == (1, 0)
        assert [(e["type"], e["operation"]) for e in record["events"]] == [("Succeeded", "Apply")]
    assert conditions(obj) == {
        "Selected": "True",
        "AllInjected": "True",
        "AllRecovered": "False",
        "Paused": "False",
    }
    # container kinds record ns/pod/container; cluster-wide list sees both objects
    custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        NS,
        "stresschaos",
        chaos_manifest(
            "cpu",
            "StressChaos",
            mode="one",
            containerNames=["engine"],
            selector={"labelSelectors": {"role": "prefill"}},
            stressors={"cpu": {"workers": 1}},
            action=None,
            delay=None,
        ),
    )
    stress = wait_for(
        lambda: custom.get_namespaced_custom_object(GROUP, VERSION, NS, "stresschaos", "cpu"),
        lambda o: (
            conditions(o).get("AllInjected") == "True" and conditions(o)["Selected"] == "True"
        ),
    )
    ids = [r["id"] for r in stress["status"]["experiment"]["containerRecords"]]
    assert ids == [f"{NS}/prefill-5c6b7-ccccc/engine"]
    every = custom.list_cluster_custom_object(GROUP, VERSION, "networkchaos")
    assert [i["metadata"]["name"] for i in every["items"]] == ["delay-decode"]
    assert every["items"][0]["kind"] == "NetworkChaos"


def test_status_errors_409_422_404(api: client.ApiClient) -> None:
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        NS,
        "podchaos",
        chaos_manifest("kill", "PodChaos", action="pod-failure", duration="30s", delay=None),
    )
    code, status = error_of(
        lambda: custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            NS,
            "podchaos",
            chaos_manifest("kill", "PodChaos", action="pod-failure", delay=None),
        )
    )
    assert code == 409
    assert status["kind"] == "Status" and status["apiVersion"] == "v1"
    assert (status["status"], status["reason"], status["code"]) == ("Failure", "AlreadyExists", 409)
    assert status["message"] == 'podchaos.chaos-mesh.org "kill" already exists'
    assert status["details"] == {"name": "kill", "group": GROUP, "kind": "podchaos"}

    bad = chaos_manifest("bad", mode="sometimes", action="slow")
    del bad["spec"]["selector"]
    code, status = error_of(
        lambda: custom.create_namespaced_custom_object(GROUP, VERSION, NS, "networkchaos", bad)
    )
    assert code == 422 and status["reason"] == "Invalid"
    assert status["message"].startswith('NetworkChaos.chaos-mesh.org "bad" is invalid: [')
    for field in ("spec.mode", "spec.action", "spec.selector"):
        assert field in status["message"]
    assert {c["field"] for c in status["details"]["causes"]} == {
        "spec.mode",
        "spec.action",
        "spec.selector",
    }
    # unknown fields pass (and are kept): the apiserver is not strict unless asked
    unknown = chaos_manifest("lenient", notAField=True)
    custom.create_namespaced_custom_object(GROUP, VERSION, NS, "networkchaos", unknown)
    stored = custom.get_namespaced_custom_object(GROUP, VERSION, NS, "networkchaos", "lenient")
    assert stored["spec"]["notAField"] is True
    # a server-side dry run validates without storing
    custom.create_namespaced_custom_object(
        GROUP, VERSION, NS, "networkchaos", chaos_manifest("dry"), dry_run="All"
    )
    code, _ = error_of(
        lambda: custom.get_namespaced_custom_object(GROUP, VERSION, NS, "networkchaos", "dry")
    )
    assert code == 404

    for call in (
        lambda: custom.get_namespaced_custom_object(GROUP, VERSION, NS, "networkchaos", "ghost"),
        lambda: custom.delete_namespaced_custom_object(GROUP, VERSION, NS, "networkchaos", "ghost"),
        lambda: custom.patch_namespaced_custom_object(
            GROUP, VERSION, NS, "networkchaos", "ghost", {"metadata": {"labels": {}}}
        ),
    ):
        code, status = error_of(call)
        assert (code, status["reason"]) == (404, "NotFound")
        assert status["message"] == 'networkchaos.chaos-mesh.org "ghost" not found'
    code, status = error_of(lambda: client.CoreV1Api(api).read_namespaced_pod("ghost", NS))
    assert (code, status["message"]) == (404, 'pods "ghost" not found')
    code, status = error_of(
        lambda: custom.create_namespaced_custom_object(
            GROUP, VERSION, "no-such-ns", "networkchaos", chaos_manifest("x")
        )
    )
    assert (code, status["message"]) == (404, 'namespaces "no-such-ns" not found')


def test_rbac_denial_is_403(fake: FakeKube, api: client.ApiClient) -> None:
    fake.deny("create", "networkchaos", namespace=NS)
    fake.deny("list", "nodes")
    fake.deny("create", "pods/eviction")
    custom = client.CustomObjectsApi(api)
    code, status = error_of(
        lambda: custom.create_namespaced_custom_object(
            GROUP, VERSION, NS, "networkchaos", chaos_manifest("denied")
        )
    )
    assert (code, status["reason"]) == (403, "Forbidden")
    assert status["message"] == (
        'networkchaos.chaos-mesh.org is forbidden: User "fake-user" cannot create resource '
        f'"networkchaos" in API group "chaos-mesh.org" in the namespace "{NS}"'
    )
    fake.add_namespace("elsewhere")
    custom.create_namespaced_custom_object(
        GROUP, VERSION, "elsewhere", "networkchaos", chaos_manifest("allowed")
    )
    core = client.CoreV1Api(api)
    code, status = error_of(core.list_node)
    assert code == 403 and status["message"].endswith("at the cluster scope")
    assert core.read_node("gpu-node-1").metadata.name == "gpu-node-1"  # get is still allowed
    eviction = client.V1Eviction(
        metadata=client.V1ObjectMeta(name="decode-7d9f8-aaaaa", namespace=NS)
    )
    code, status = error_of(
        lambda: core.create_namespaced_pod_eviction("decode-7d9f8-aaaaa", NS, eviction)
    )
    assert code == 403 and 'resource "pods/eviction"' in status["message"]
    assert fake.get("pods", NS, "decode-7d9f8-aaaaa") is not None


def test_pause_and_resume(api: client.ApiClient) -> None:
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(
        GROUP, VERSION, NS, "networkchaos", chaos_manifest("pausable")
    )

    def read() -> dict:
        return custom.get_namespaced_custom_object(GROUP, VERSION, NS, "networkchaos", "pausable")

    wait_for(
        read,
        lambda o: (
            conditions(o).get("Selected") == "True" and conditions(o)["AllInjected"] == "True"
        ),
    )
    custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        NS,
        "networkchaos",
        "pausable",
        {"metadata": {"annotations": {PAUSE_ANNOTATION: "true"}}},
    )
    paused = wait_for(read, lambda o: conditions(o).get("AllRecovered") == "True")
    assert conditions(paused) == {
        "Selected": "True",
        "AllInjected": "False",
        "AllRecovered": "True",
        "Paused": "True",
    }
    assert paused["status"]["experiment"]["desiredPhase"] == "Stop"
    records = paused["status"]["experiment"]["containerRecords"]
    assert {r["phase"] for r in records} == {"Not Injected"}
    assert {r["recoveredCount"] for r in records} == {1}
    custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        NS,
        "networkchaos",
        "pausable",
        {"metadata": {"annotations": {PAUSE_ANNOTATION: None}}},
    )
    resumed = wait_for(read, lambda o: conditions(o).get("AllInjected") == "True")
    assert conditions(resumed)["Paused"] == "False"
    assert resumed["status"]["experiment"]["desiredPhase"] == "Run"
    assert {r["injectedCount"] for r in resumed["status"]["experiment"]["containerRecords"]} == {2}


def test_delete_waits_for_the_records_finalizer(fake: FakeKube, api: client.ApiClient) -> None:
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(
        GROUP, VERSION, NS, "networkchaos", chaos_manifest("finalized")
    )
    wait_for(
        lambda: fake.get("networkchaos", NS, "finalized"),
        lambda o: conditions(o).get("Selected") == "True",
    )
    rv = custom.get_namespaced_custom_object(GROUP, VERSION, NS, "networkchaos", "finalized")[
        "metadata"
    ]["resourceVersion"]
    answer = custom.delete_namespaced_custom_object(GROUP, VERSION, NS, "networkchaos", "finalized")
    assert answer["metadata"]["deletionTimestamp"]  # still there, being deleted
    seen = []
    for event in watch.Watch().stream(
        custom.list_cluster_custom_object,
        GROUP,
        VERSION,
        "networkchaos",
        field_selector="metadata.name=finalized",
        resource_version=rv,
        timeout_seconds=3,
    ):
        seen.append((event["type"], conditions(event["object"]).get("AllRecovered")))
        if event["type"] == "DELETED":
            final = event["object"]
            break
    assert seen[-1] == ("DELETED", "True")
    assert ("MODIFIED", "False") in seen  # the deletionTimestamp, before recovery
    assert final["metadata"]["finalizers"] == []
    records = final["status"]["experiment"]["containerRecords"]
    assert {(r["phase"], r["recoveredCount"]) for r in records} == {("Not Injected", 1)}
    assert final["status"]["experiment"]["desiredPhase"] == "Stop"
    assert fake.get("networkchaos", NS, "finalized") is None


def test_stuck_finalizer_until_forced(fake: FakeKube, api: client.ApiClient) -> None:
    custom = client.CustomObjectsApi(api)
    fake.chaos.stuck_finalizer = True
    custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        NS,
        "iochaos",
        chaos_manifest("stuck", "IOChaos", action="latency", delay="10ms", volumePath="/data"),
    )
    wait_for(
        lambda: fake.get("iochaos", NS, "stuck"),
        lambda o: (
            conditions(o).get("AllInjected") == "True" and conditions(o)["Selected"] == "True"
        ),
    )
    custom.delete_namespaced_custom_object(GROUP, VERSION, NS, "iochaos", "stuck")
    time.sleep(0.4)
    stuck = custom.get_namespaced_custom_object(GROUP, VERSION, NS, "iochaos", "stuck")
    assert stuck["metadata"]["deletionTimestamp"]
    assert stuck["metadata"]["finalizers"] == [RECORDS_FINALIZER]
    record = stuck["status"]["experiment"]["containerRecords"][0]
    assert record["phase"] == "Injected" and record["events"][-1]["type"] == "Failed"
    custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        NS,
        "iochaos",
        "stuck",
        {"metadata": {"annotations": {CLEAN_FINALIZER_ANNOTATION: "forced"}}},
    )
    wait_for(lambda: fake.get("iochaos", NS, "stuck"), lambda o: o is None)
    code, _ = error_of(
        lambda: custom.get_namespaced_custom_object(GROUP, VERSION, NS, "iochaos", "stuck")
    )
    assert code == 404


def test_emptying_finalizers_of_a_deleting_object_removes_it(
    fake: FakeKube, api: client.ApiClient
) -> None:
    custom = client.CustomObjectsApi(api)
    fake.chaos.stuck_finalizer = True
    custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        NS,
        "timechaos",
        chaos_manifest("clock", "TimeChaos", timeOffset="-10m", action=None, delay=None),
    )
    wait_for(
        lambda: fake.get("timechaos", NS, "clock"),
        lambda o: conditions(o).get("Selected") == "True",
    )
    custom.delete_namespaced_custom_object(GROUP, VERSION, NS, "timechaos", "clock")
    code, status = error_of(
        lambda: custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            NS,
            "timechaos",
            "clock",
            {"metadata": {"finalizers": [RECORDS_FINALIZER, "extra"]}},
        )
    )
    assert code == 422 and "no new finalizers" in status["message"]
    remove = [{"op": "remove", "path": "/metadata/finalizers"}]
    # CustomObjectsApi sends merge-patch unless told otherwise: a list body is then refused
    code, _ = error_of(
        lambda: custom.patch_namespaced_custom_object(
            GROUP, VERSION, NS, "timechaos", "clock", remove
        )
    )
    assert code == 400
    # as a JSON patch it removes the finalizer list, and the deleting object goes away
    custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        NS,
        "timechaos",
        "clock",
        remove,
        _content_type="application/json-patch+json",
    )
    assert fake.get("timechaos", NS, "clock") is None
    kinds = [r.content_type for r in fake.requests if r.method == "PATCH"]
    assert kinds == [
        "application/merge-patch+json",
        "application/merge-patch+json",
        "application/json-patch+json",
    ]


def test_injection_failure_no_target_and_no_controller(
    fake: FakeKube, api: client.ApiClient
) -> None:
    custom = client.CustomObjectsApi(api)
    fake.chaos.fail_injection = "failed to apply chaos: tc not found"
    custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        NS,
        "httpchaos",
        chaos_manifest(
            "broken", "HTTPChaos", target="Request", port=8000, abort=True, action=None, delay=None
        ),
    )
    failed = wait_for(
        lambda: fake.get("httpchaos", NS, "broken"),
        lambda o: conditions(o).get("Selected") == "True",
    )
    assert conditions(failed)["AllInjected"] == "False"
    for record in failed["status"]["experiment"]["containerRecords"]:
        assert record["phase"] == "Not Injected" and record["injectedCount"] == 0
        assert record["events"][-1] == {
            "type": "Failed",
            "operation": "Apply",
            "timestamp": record["events"][-1]["timestamp"],
            "message": "failed to apply chaos: tc not found",
        }
    fake.chaos.fail_injection = None  # the controller retries with backoff and then succeeds
    wait_for(
        lambda: fake.get("httpchaos", NS, "broken"),
        lambda o: conditions(o).get("AllInjected") == "True",
    )

    custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        NS,
        "networkchaos",
        chaos_manifest("nobody", selector={"labelSelectors": {"app": "absent"}}),
    )
    time.sleep(0.2)
    nobody = custom.get_namespaced_custom_object(GROUP, VERSION, NS, "networkchaos", "nobody")
    # as on a real cluster: nothing selected, AllInjected is vacuously True
    assert conditions(nobody)["Selected"] == "False"
    assert "containerRecords" not in nobody["status"]["experiment"]

    fake.chaos.never_inject = True
    custom.create_namespaced_custom_object(
        GROUP, VERSION, NS, "networkchaos", chaos_manifest("ignored")
    )
    time.sleep(0.2)
    ignored = custom.get_namespaced_custom_object(GROUP, VERSION, NS, "networkchaos", "ignored")
    assert "status" not in ignored and "finalizers" not in ignored["metadata"]


def test_eviction_respects_pod_disruption_budgets(fake: FakeKube, api: client.ApiClient) -> None:
    core, policy = client.CoreV1Api(api), client.PolicyV1Api(api)
    fake.add_pdb(NS, "decode-pdb", {"role": "decode"}, min_available=2)
    pdb = wait_for(
        lambda: policy.read_namespaced_pod_disruption_budget("decode-pdb", NS),
        lambda p: p.status is not None,
    )
    assert (pdb.status.current_healthy, pdb.status.disruptions_allowed) == (2, 0)

    def evict(name: str) -> None:
        body = client.V1Eviction(metadata=client.V1ObjectMeta(name=name, namespace=NS))
        core.create_namespaced_pod_eviction(name, NS, body)

    code, status = error_of(lambda: evict("decode-7d9f8-aaaaa"))
    assert (code, status["reason"]) == (429, "TooManyRequests")
    assert status["message"] == "Cannot evict pod as it would violate the pod's disruption budget."
    assert status["details"]["causes"][0]["reason"] == "DisruptionBudget"
    assert fake.get("pods", NS, "decode-7d9f8-aaaaa") is not None

    evict("prefill-5c6b7-ccccc")  # no budget covers it
    assert fake.get("pods", NS, "prefill-5c6b7-ccccc") is None
    created = policy.create_namespaced_pod_disruption_budget(
        "other",
        client.V1PodDisruptionBudget(
            metadata=client.V1ObjectMeta(name="gateway-pdb"),
            spec=client.V1PodDisruptionBudgetSpec(
                max_unavailable=1, selector=client.V1LabelSelector(match_labels={"app": "gateway"})
            ),
        ),
    )
    assert created.metadata.uid
    fake.add_pod("other", "gateway-1", {"app": "gateway"}, node="gpu-node-1")

    def evict_other(name: str) -> None:
        body = client.V1Eviction(metadata=client.V1ObjectMeta(name=name))
        core.create_namespaced_pod_eviction(name, "other", body)

    evict_other("gateway-0")  # maxUnavailable 1 of 2: one may go
    code, status = error_of(lambda: evict_other("gateway-1"))  # not a second one
    assert (code, status["reason"]) == (429, "TooManyRequests")
    budgets = policy.list_pod_disruption_budget_for_all_namespaces().items
    assert [(b.metadata.namespace, b.metadata.name) for b in budgets] == [
        ("other", "gateway-pdb"),
        (NS, "decode-pdb"),
    ]
    code, status = error_of(lambda: evict("no-such-pod"))
    assert (code, status["reason"]) == (404, "NotFound")


def test_jobs_complete_fail_and_are_validated(fake: FakeKube, api: client.ApiClient) -> None:
    batch = client.BatchV1Api(api)
    fake.chaos.job_delay_s = 0.1

    def job(name: str, restart_policy: str = "Never") -> client.V1Job:
        return client.V1Job(
            metadata=client.V1ObjectMeta(name=name, labels={"inference-chaos.io/run-id": "r"}),
            spec=client.V1JobSpec(
                template=client.V1PodTemplateSpec(
                    spec=client.V1PodSpec(
                        restart_policy=restart_policy,
                        node_name="gpu-node-1",
                        containers=[
                            client.V1Container(
                                name="dcgmi",
                                image="nvcr.io/nvidia/dcgm:3",
                                command=["dcgmi", "test", "--inject"],
                            )
                        ],
                    )
                )
            ),
        )

    batch.create_namespaced_job(NS, job("xid-inject"))
    done = wait_for(
        lambda: batch.read_namespaced_job("xid-inject", NS), lambda j: j.status.succeeded == 1
    )
    assert {c.type for c in done.status.conditions} >= {"Complete"}
    assert done.spec.backoff_limit == 6 and done.status.completion_time is not None

    fake.chaos.jobs_fail = True
    batch.create_namespaced_job(NS, job("xid-broken"))
    failed = wait_for(
        lambda: batch.read_namespaced_job("xid-broken", NS),
        lambda j: any(c.type == "Failed" for c in j.status.conditions or []),
    )
    assert failed.status.succeeded is None

    code, status = error_of(lambda: batch.create_namespaced_job(NS, job("bad", "Always")))
    assert code == 422 and "spec.template.spec.restartPolicy" in status["message"]
    listed = batch.list_namespaced_job(NS, label_selector="inference-chaos.io/run-id=r")
    assert [j.metadata.name for j in listed.items] == ["xid-broken", "xid-inject"]
    batch.delete_namespaced_job("xid-inject", NS, propagation_policy="Background")
    assert fake.get("jobs", NS, "xid-inject") is None
    deletes = [r for r in fake.requests if r.method == "DELETE"]
    assert deletes[-1].query["propagationPolicy"] == "Background"


def test_node_cordon_and_taints(fake: FakeKube, api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    core.patch_node(
        "gpu-node-1",
        {
            "spec": {
                "taints": [
                    {
                        "key": "inference-chaos.io/gpu-fault",
                        "value": "xid-79",
                        "effect": "NoSchedule",
                    }
                ]
            }
        },
    )
    core.patch_node("gpu-node-1", {"spec": {"unschedulable": True}})
    node = wait_for(lambda: core.read_node("gpu-node-1"), lambda n: len(n.spec.taints or []) == 2)
    assert node.spec.unschedulable is True
    assert {t.key for t in node.spec.taints} == {
        "inference-chaos.io/gpu-fault",
        "node.kubernetes.io/unschedulable",
    }
    # strategic merge on a Node replaces the whole taint list (no merge key), as on a cluster
    core.patch_node(
        "gpu-node-1",
        {
            "spec": {
                "unschedulable": None,
                "taints": [
                    t
                    for t in fake.get("nodes", None, "gpu-node-1")["spec"]["taints"]
                    if t["key"] != "inference-chaos.io/gpu-fault"
                ],
            }
        },
    )
    node = wait_for(lambda: core.read_node("gpu-node-1"), lambda n: not n.spec.taints)
    assert node.spec.unschedulable is None
    smp = [r.content_type for r in fake.requests if r.method == "PATCH"]
    assert set(smp) == {"application/strategic-merge-patch+json"}
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(GROUP, VERSION, NS, "networkchaos", chaos_manifest("p"))
    code, status = error_of(
        lambda: custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            NS,
            "networkchaos",
            "p",
            {"metadata": {"labels": {"x": "y"}}},
            _content_type="application/strategic-merge-patch+json",
        )
    )
    assert (code, status["reason"]) == (415, "UnsupportedMediaType")


def test_discovery_and_404_without_chaos_mesh(fake: FakeKube, api: client.ApiClient) -> None:
    custom = client.CustomObjectsApi(api)
    resources = custom.get_api_resources(GROUP, VERSION)
    kinds = {r.kind for r in resources.resources}
    assert kinds == set(CHAOS_KINDS)
    groups = {g.name for g in client.ApisApi(api).get_api_versions().groups}
    assert {"batch", "policy", GROUP} <= groups
    core_names = {r.name for r in client.CoreV1Api(api).get_api_resources().resources}
    assert {"pods", "pods/eviction", "nodes", "namespaces"} <= core_names
    crd = client.ApiextensionsV1Api(api).read_custom_resource_definition("podchaos.chaos-mesh.org")
    assert crd.spec.names.kind == "PodChaos"

    fake.without_chaos_mesh()
    groups = {g.name for g in client.ApisApi(api).get_api_versions().groups}
    assert GROUP not in groups
    for call in (
        lambda: custom.get_api_resources(GROUP, VERSION),
        lambda: custom.list_namespaced_custom_object(GROUP, VERSION, NS, "networkchaos"),
        lambda: custom.create_namespaced_custom_object(
            GROUP, VERSION, NS, "networkchaos", chaos_manifest("x")
        ),
        lambda: client.ApiextensionsV1Api(api).read_custom_resource_definition(
            "podchaos.chaos-mesh.org"
        ),
    ):
        code, status = error_of(call)
        assert (code, status["reason"]) == (404, "NotFound")


def test_stop_ends_watches_and_frees_the_port(api: client.ApiClient, fake: FakeKube) -> None:
    port = int(fake.base_url.rsplit(":", 1)[1])
    custom = client.CustomObjectsApi(api)
    ended = threading.Event()

    def watch_forever() -> None:
        try:
            for _ in watch.Watch().stream(
                custom.list_cluster_custom_object, GROUP, VERSION, "podchaos", timeout_seconds=30
            ):
                pass
        except Exception:  # the connection is cut: that ends the watch too
            pass
        ended.set()

    thread = threading.Thread(target=watch_forever, daemon=True)
    thread.start()
    wait_for(lambda: any(r.query.get("watch") == "true" for r in fake.requests), bool)
    began = time.monotonic()
    fake.stop()
    assert ended.wait(3), "the watch outlived stop()"
    assert time.monotonic() - began < 3
    thread.join(3)
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass
    with socket.socket() as probe:  # and the port can be served again
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))


def test_pod_kill_replaces_pods_and_duration_ends_a_fault(
    fake: FakeKube, api: client.ApiClient
) -> None:
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    core.patch_node("gpu-node-1", {"spec": {"unschedulable": True}})  # the victim's node
    start_rv = core.list_namespaced_pod(NS).metadata.resource_version
    custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        NS,
        "podchaos",
        chaos_manifest(
            "kill-prefill",
            "PodChaos",
            action="pod-kill",
            mode="one",
            delay=None,
            selector={"labelSelectors": {"role": "prefill"}},
        ),
    )
    seen = []
    for event in watch.Watch().stream(
        core.list_namespaced_pod,
        NS,
        label_selector="role=prefill",
        resource_version=start_rv,
        timeout_seconds=3,
    ):
        seen.append((event["type"], event["object"].metadata.name))
        if event["type"] == "ADDED":
            replacement = event["object"]
            break
    assert seen[0] == ("DELETED", "prefill-5c6b7-ccccc")
    assert seen[-1][0] == "ADDED" and seen[-1][1].startswith("prefill-5c6b7-")
    assert seen[-1][1] != "prefill-5c6b7-ccccc"
    assert replacement.spec.node_name == "gpu-node-2"  # the scheduler avoids the cordoned node
    assert replacement.metadata.owner_references[0].kind == "ReplicaSet"
    killed = custom.get_namespaced_custom_object(GROUP, VERSION, NS, "podchaos", "kill-prefill")
    assert killed["status"]["experiment"]["desiredPhase"] == "Run"  # one-shot

    custom.create_namespaced_custom_object(
        GROUP, VERSION, NS, "networkchaos", chaos_manifest("short", duration="300ms")
    )
    began = time.monotonic()
    ended = wait_for(
        lambda: custom.get_namespaced_custom_object(GROUP, VERSION, NS, "networkchaos", "short"),
        lambda o: (
            o.get("status", {}).get("experiment", {}).get("desiredPhase") == "Stop"
            and conditions(o).get("AllRecovered") == "True"
        ),
    )
    assert 0.25 < time.monotonic() - began < 2
    assert conditions(ended)["Selected"] == "True" and conditions(ended)["Paused"] == "False"
