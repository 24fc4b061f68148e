"""The Kubernetes backend against a fake API server on loopback, through the official client.

The fake (tests/fakekube) plays the API server and Chaos Mesh's controller: status
transitions, finalizers, 403/404/409/422 and watch streams. Every test checks what reached the
server (the recorded requests) and what is left on it afterwards: nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from chaoslib.exceptions import ActivityFailed

from experiments import context, faults
from experiments.backends import forget_connections
from experiments.kube import lifecycle
from experiments.kube.names import (
    CLEAN_FINALIZER_ANNOTATION,
    GPU_FAULT_TAINT,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    NODE_DOWN_TAINT,
    OPT_IN_LABEL,
    RUN_LABEL,
)
from tests.fakekube import FakeKube

pytestmark = pytest.mark.integration
NS = "inference"


@pytest.fixture
def kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("INFERENCE_CHAOS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    forget_connections()
    fake = FakeKube()
    fake.start()
    fake.add_namespace(NS, {OPT_IN_LABEL: "enabled"})
    fake.add_namespace("plain")
    fake.add_namespace("kube-system")
    for i, zone in enumerate(("zone-a", "zone-a", "zone-b", "zone-b")):
        fake.add_node(f"node-{i}", {"topology.kubernetes.io/zone": zone})
    for i in range(4):
        fake.add_pod(NS, f"worker-{i}", {"role": "worker"}, node=f"node-{i}")
    for i in range(3):
        fake.add_pod(NS, f"raft-{i}", {"role": "raft"}, node=f"node-{i}")
    fake.add_pod(NS, "gateway-0", {"role": "gateway"}, node="node-3")
    fake.add_pod("plain", "bystander", {"role": "worker"}, node="node-0")
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
    context.start_run("k8s test", tmp_path / "runs")
    yield (
        fake,
        {
            "target": "kubernetes",
            "kubeconfig": str(kubeconfig),
            "namespace": NS,
            "inject_timeout": "3s",
            "recover_timeout": "3s",
        },
    )
    context.end_run()
    forget_connections()
    fake.stop()


def posts(fake: FakeKube, fragment: str = "") -> list[Any]:
    return [r for r in fake.requests if r.method == "POST" and fragment in r.path]


def chaos_left(fake: FakeKube) -> list[dict[str, Any]]:
    kinds = ("podchaos", "networkchaos", "stresschaos", "iochaos", "httpchaos", "timechaos")
    return [o for plural in kinds for o in fake.objects(plural)]


def test_pod_kill_is_a_labelled_podchaos_watched_until_injected_and_removed(kube):
    fake, cfg = kube
    fake.chaos.inject_delay_s = 0.4  # injected only after our first look: we must watch
    out = faults.pod_kill(
        selector={"labelSelectors": {"role": "worker"}},
        mode="one",
        restart_after=None,
        configuration=cfg,
    )
    created = posts(fake, "/podchaos")
    assert len(created) == 1
    body = created[0].body
    assert body["spec"]["action"] == "pod-failure"  # restart_after null: the pod stays down
    assert body["spec"]["selector"]["labelSelectors"] == {"role": "worker"}
    assert body["spec"]["mode"] == "one"
    labels = body["metadata"]["labels"]
    assert labels[MANAGED_BY_LABEL] == MANAGED_BY
    assert labels[RUN_LABEL]
    assert any(r.query.get("watch") in ("true", "True", "1") for r in fake.requests)
    assert len(out["victims"]) == 1 and out["victims"][0].startswith("worker-")
    assert out["details"]["manifests"][0]["kind"] == "PodChaos"
    assert out["details"]["injected_into"]
    assert len(chaos_left(fake)) == 1
    faults.recover_all(configuration=cfg)
    assert chaos_left(fake) == []
    assert context.current_run().ledger.active() == []


def test_restarting_pod_kill_stays_a_pod_kill(kube):
    fake, cfg = kube
    faults.pod_kill(
        selector={"labelSelectors": {"role": "raft"}}, restart_after=0, configuration=cfg
    )
    assert posts(fake, "/podchaos")[0].body["spec"]["action"] == "pod-kill"
    faults.recover_all(configuration=cfg)
    assert chaos_left(fake) == []


def test_a_failed_injection_names_the_records_and_removes_the_fault(kube):
    fake, cfg = kube
    fake.chaos.fail_injection = "container runtime: no such container"
    with pytest.raises(ActivityFailed, match="no such container"):
        faults.network_delay(
            selector={"labelSelectors": {"role": "worker"}}, latency="100ms", configuration=cfg
        )
    assert chaos_left(fake) == []
    assert [r for r in fake.requests if r.method == "DELETE"]


def test_no_allinjected_by_the_deadline_is_an_error_and_the_fault_is_removed(kube):
    fake, cfg = kube
    fake.chaos.never_inject = True
    with pytest.raises(ActivityFailed, match="not AllInjected after 1s"):
        faults.stress(
            cpu_workers=1,
            selector={"labelSelectors": {"role": "gateway"}},
            configuration={**cfg, "inject_timeout": "1s"},
        )
    assert chaos_left(fake) == []


def test_a_stuck_finalizer_fails_recovery_unless_forced(kube):
    fake, cfg = kube
    fake.chaos.stuck_finalizer = True
    faults.network_loss(selector={"labelSelectors": {"role": "raft"}}, loss=50, configuration=cfg)
    with pytest.raises(ActivityFailed, match="chaos-mesh/records"):
        faults.recover_all(configuration={**cfg, "recover_timeout": "1s"})
    assert len(chaos_left(fake)) == 1  # still there, and said so
    obj = chaos_left(fake)[0]
    meta = obj["metadata"]
    forget_connections()
    forced = {**cfg, "recover_timeout": "1s", "force_recover": True}
    out = lifecycle.remove(
        _backend(forced).kube, "NetworkChaos", meta["namespace"], meta["name"], 1.0, force=True
    )
    assert out["forced"] is True
    patches = [r for r in fake.requests if r.method == "PATCH" and "/networkchaos/" in r.path]
    assert any(CLEAN_FINALIZER_ANNOTATION in str(p.body) for p in patches)
    assert chaos_left(fake) == []


def _backend(cfg: dict[str, Any]):
    from experiments.backends import backend_for

    return backend_for(cfg)


def test_pause_and_resume_through_chaos_meshs_annotation(kube):
    fake, cfg = kube
    out = faults.time_skew(
        offset="-5s", selector={"labelSelectors": {"role": "raft"}}, mode="all", configuration=cfg
    )
    paused = faults.pause_fault(out["id"], configuration=cfg)
    assert paused["details"]["paused"] is True
    obj = out["details"]["objects"][0]
    stored = fake.get("timechaos", obj["namespace"], obj["name"])
    assert stored["metadata"]["annotations"]["experiment.chaos-mesh.org/pause"] == "true"
    faults.resume_fault(out["id"], configuration=cfg)
    assert lifecycle.is_injected(fake.get("timechaos", obj["namespace"], obj["name"]))
    k = _backend(cfg).kube
    paused = lifecycle.set_paused(k, obj["kind"], obj["namespace"], obj["name"], True, 3)
    assert lifecycle.conditions(paused)["Paused"] is True
    resumed = lifecycle.set_paused(k, obj["kind"], obj["namespace"], obj["name"], False, 3)
    assert lifecycle.is_injected(resumed)
    faults.recover_all(configuration=cfg)
    assert chaos_left(fake) == []


def test_rbac_denied_is_one_line_and_nothing_is_created(kube):
    fake, cfg = kube
    fake.deny("create", "podchaos", NS)
    with pytest.raises(ActivityFailed, match="RBAC denied") as err:
        faults.pod_failure(selector={"labelSelectors": {"role": "gateway"}}, configuration=cfg)
    assert "\n" not in str(err.value)
    assert chaos_left(fake) == []


def test_selector_matching_nothing_creates_nothing(kube):
    fake, cfg = kube
    with pytest.raises(ActivityFailed, match="matches nothing"):
        faults.pod_kill(selector={"labelSelectors": {"role": "tokenizer"}}, configuration=cfg)
    assert posts(fake) == []


def test_blast_radius_refuses_too_many_pods(kube):
    fake, cfg = kube
    with pytest.raises(ActivityFailed, match="blast radius: the fault would hit 4 of 8 pods"):
        faults.pod_kill(
            selector={"labelSelectors": {"role": "worker"}},
            mode="all",
            configuration={**cfg, "max_pod_share": 0.3},
        )
    assert posts(fake) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"namespace": "plain"}, "not opted in"),
        ({"namespace": "kube-system"}, "protected"),
        ({"namespace": "missing"}, "does not exist"),
        ({"kubeconfig": "/nonexistent/kubeconfig"}, "does not exist"),
    ],
)
def test_bad_targets_are_refused_before_anything_is_created(kube, change, message):
    fake, cfg = kube
    with pytest.raises(ActivityFailed, match=message) as err:
        faults.pod_kill(
            selector={"labelSelectors": {"role": "worker"}}, configuration={**cfg, **change}
        )
    assert "\n" not in str(err.value)
    assert posts(fake) == []


def test_without_chaos_meshs_crds_the_error_says_so(kube):
    fake, cfg = kube
    fake.without_chaos_mesh()
    with pytest.raises(ActivityFailed, match="Chaos Mesh is not installed"):
        faults.pod_kill(selector={"labelSelectors": {"role": "worker"}}, configuration=cfg)
    assert posts(fake) == []


def test_partition_with_a_target_maps_onto_chaos_meshs_target(kube):
    fake, cfg = kube
    faults.network_partition(
        selector={"labelSelectors": {"role": "raft"}, "pods": {NS: ["raft-0"]}},
        mode="all",
        direction="both",
        target={"selector": {"labelSelectors": {"role": "raft"}}, "mode": "all"},
        configuration=cfg,
    )
    spec = posts(fake, "/networkchaos")[0].body["spec"]
    assert spec["action"] == "partition"
    assert spec["direction"] == "both"
    assert spec["target"]["selector"]["labelSelectors"] == {"role": "raft"}
    assert spec["target"]["mode"] == "all"
    faults.recover_all(configuration=cfg)
    assert chaos_left(fake) == []


def test_live_labels_are_pinned_to_the_pods_resolved_at_injection(kube):
    fake, cfg = kube
    zone_b = {"labelSelectors": {"zone": "zone-b", "role": "worker"}}
    faults.pod_failure(selector=zone_b, mode="all", configuration=cfg)
    spec = posts(fake, "/podchaos")[0].body["spec"]
    assert spec["selector"]["pods"] == {NS: ["worker-2", "worker-3"]}
    assert "labelSelectors" not in spec["selector"]
    faults.recover_all(configuration=cfg)


def test_drain_evicts_respecting_budgets_and_recovery_uncordons(kube):
    fake, cfg = kube
    fake.add_pdb(NS, "raft", {"role": "raft"}, min_available=3)
    with pytest.raises(ActivityFailed, match="disruption budget"):
        faults.node_drain(node="node-1", timeout_s="1s", configuration=cfg)
    node = fake.get("nodes", None, "node-1")
    assert not node["spec"].get("unschedulable")  # the failed drain was undone
    assert fake.get("pods", NS, "raft-1") is not None  # the budget held
    out = faults.node_drain(node="node-3", timeout_s="2s", configuration=cfg)
    assert sorted(out["details"]["drained"]["node-3"]["evicted"]) == [
        f"{NS}/gateway-0",
        f"{NS}/worker-3",
    ]
    assert fake.get("nodes", None, "node-3")["spec"]["unschedulable"] is True
    assert posts(fake, "/eviction")
    faults.recover_all(configuration=cfg)
    assert not fake.get("nodes", None, "node-3")["spec"].get("unschedulable")


def test_node_crash_kills_the_nodes_pods_and_taints_it_until_recovery(kube):
    fake, cfg = kube
    faults.node_crash(node="node-2", configuration=cfg)
    spec = posts(fake, "/podchaos")[0].body["spec"]
    assert spec["selector"]["nodes"] == ["node-2"] and spec["mode"] == "all"
    taints = fake.get("nodes", None, "node-2")["spec"].get("taints") or []
    assert [t["key"] for t in taints] == [NODE_DOWN_TAINT]
    faults.recover_all(configuration=cfg)
    assert not fake.get("nodes", None, "node-2")["spec"].get("taints")
    assert chaos_left(fake) == []


def test_gpu_xid79_is_a_dcgm_job_a_taint_and_a_pod_kill(kube):
    fake, cfg = kube
    victim = {"labelSelectors": {"role": "worker"}, "pods": {NS: ["worker-1"]}}
    out = faults.gpu_xid(xid=79, selector=victim, configuration=cfg)
    jobs = posts(fake, "/jobs")
    assert len(jobs) == 1
    job = jobs[0].body
    assert job["spec"]["template"]["spec"]["nodeName"] == "node-1"
    assert "230" in str(job["spec"]["template"]["spec"]["containers"])  # DCGM's XID field
    taints = fake.get("nodes", None, "node-1")["spec"].get("taints") or []
    assert [t["key"] for t in taints] == [GPU_FAULT_TAINT]
    assert posts(fake, "/podchaos")[0].body["spec"]["selector"]["pods"] == {NS: ["worker-1"]}
    assert out["details"]["emulated"]  # the journal says what was emulated
    faults.recover_all(configuration=cfg)
    assert len(posts(fake, "/jobs")) == 2  # the recovery Job put healthy values back
    assert fake.objects("jobs") == []
    assert not fake.get("nodes", None, "node-1")["spec"].get("taints")
    assert chaos_left(fake) == []


def test_pod_pause_is_refused_on_kubernetes_naming_the_alternative(kube):
    fake, cfg = kube
    with pytest.raises(ActivityFailed, match="pod_failure"):
        faults.pod_pause(selector={"labelSelectors": {"role": "worker"}}, configuration=cfg)
    assert posts(fake) == []
