"""Built-in objects as a cluster would hold them, and the small controllers that keep them moving:
the Job controller (Complete/Failed after a delay, TTL cleanup), the disruption controller (PDB
status, the eviction subresource's 429) and the node lifecycle controller's unschedulable taint.
"""

from __future__ import annotations

import copy
import itertools
import math
import random
import string
from typing import TYPE_CHECKING, Any

from tests.fakekube import meta
from tests.fakekube.api import Response
from tests.fakekube.meta import ApiError
from tests.fakekube.scheduler import Scheduler
from tests.fakekube.selectors import match_labels
from tests.fakekube.store import Obj, Store

if TYPE_CHECKING:
    from tests.fakekube.chaos_mesh import ChaosMeshBehaviour

UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"
JOB_UID_LABEL = "batch.kubernetes.io/controller-uid"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
OWNER_API_VERSIONS = {
    "ReplicaSet": "apps/v1",
    "StatefulSet": "apps/v1",
    "DaemonSet": "apps/v1",
    "Job": "batch/v1",
}

_pod_ips = itertools.count(2)
_node_ips = itertools.count(10)


def _suffix(length: int = 5) -> str:
    return "".join(random.choices(string.ascii_lowercase + string.digits, k=length))


def namespace_manifest(name: str, labels: dict[str, str] | None = None) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "uid": meta.new_uid(),
            "creationTimestamp": meta.now(),
            "labels": {"kubernetes.io/metadata.name": name, **(labels or {})},
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }


def node_manifest(name: str, labels: dict[str, str] | None = None) -> Obj:
    ts = meta.now()
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": meta.new_uid(),
            "creationTimestamp": ts,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                **(labels or {}),
            },
        },
        "spec": {"podCIDR": "10.244.0.0/24"},
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "kubelet is posting ready status",
                    "lastHeartbeatTime": ts,
                    "lastTransitionTime": ts,
                },
            ],
            "addresses": [
                {"type": "InternalIP", "address": f"10.0.0.{next(_node_ips)}"},
                {"type": "Hostname", "address": name},
            ],
            "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
            "allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"},
        },
    }


def owner_name(pod_name: str) -> str:
    """The controller that a pod named like `worker-7d9f8-abcde` or `store-0` belongs to."""
    return pod_name.rsplit("-", 1)[0] if "-" in pod_name else f"{pod_name}-owner"


def pod_manifest(
    namespace: str,
    name: str,
    labels: dict[str, str] | None,
    node: str | None,
    containers: list[str] | tuple[str, ...],
    owner_kind: str | None,
    host_ip: str | None = None,
) -> Obj:
    ts = meta.now()
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "uid": meta.new_uid(),
        "creationTimestamp": ts,
        "labels": dict(labels or {}),
    }
    if owner_kind:
        metadata["ownerReferences"] = [
            {
                "apiVersion": OWNER_API_VERSIONS.get(owner_kind, "apps/v1"),
                "kind": owner_kind,
                "name": owner_name(name),
                "uid": meta.new_uid(),
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    spec: dict[str, Any] = {
        "containers": [{"name": c, "image": f"registry.local/{c}:latest"} for c in containers],
        "restartPolicy": "Always",
        "schedulerName": "default-scheduler",
        "serviceAccountName": "default",
    }
    status: dict[str, Any] = {"phase": "Pending", "conditions": [], "qosClass": "BestEffort"}
    if node:
        spec["nodeName"] = node
        ip = next(_pod_ips)
        status = {
            "phase": "Running",
            "hostIP": host_ip or "10.0.0.1",
            "podIP": f"10.244.{ip // 250}.{ip % 250 + 2}",
            "startTime": ts,
            "qosClass": "BestEffort",
            "conditions": [
                {"type": t, "status": "True", "lastTransitionTime": ts}
                for t in (
                    "PodReadyToStartContainers",
                    "Initialized",
                    "Ready",
                    "ContainersReady",
                    "PodScheduled",
                )
            ],
            "containerStatuses": [
                {
                    "name": c,
                    "image": f"registry.local/{c}:latest",
                    "imageID": f"registry.local/{c}@sha256:{'0' * 64}",
                    "containerID": f"containerd://{meta.new_uid().replace('-', '')}",
                    "ready": True,
                    "started": True,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": ts}},
                }
                for c in containers
            ],
        }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec, "status": status}


def pdb_manifest(
    namespace: str,
    name: str,
    match_labels: dict[str, str],
    min_available: int | str | None,
    max_unavailable: int | str | None,
) -> Obj:
    spec: dict[str, Any] = {"selector": {"matchLabels": dict(match_labels)}}
    if min_available is not None:
        spec["minAvailable"] = min_available
    if max_unavailable is not None:
        spec["maxUnavailable"] = max_unavailable
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": meta.new_uid(),
            "creationTimestamp": meta.now(),
            "generation": 1,
        },
        "spec": spec,
    }


def pod_ready(pod: Obj) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def set_pod_ready(store: Store, namespace: str, name: str, ready: bool) -> None:
    """What pod-failure does to a pod: its containers stop being ready (and come back)."""
    with store.lock:
        pod = store.get("pods", namespace, name)
        if pod is None:
            return
        value = "True" if ready else "False"
        for cond in pod.get("status", {}).get("conditions", []):
            if cond["type"] in ("Ready", "ContainersReady"):
                cond["status"] = value
        for status in pod.get("status", {}).get("containerStatuses", []):
            status["ready"] = ready
        store.update("pods", pod)


def restart_container(store: Store, namespace: str, name: str, container: str) -> None:
    """What container-kill leaves behind: the kubelet restarted the container once more."""
    with store.lock:
        pod = store.get("pods", namespace, name)
        if pod is None:
            return
        for status in pod.get("status", {}).get("containerStatuses", []):
            if status["name"] == container:
                status["restartCount"] = status.get("restartCount", 0) + 1
                status["lastState"] = {
                    "terminated": {"exitCode": 137, "reason": "Error", "finishedAt": meta.now()}
                }
        store.update("pods", pod)


def kill_pod(store: Store, namespace: str, name: str, recreate: bool) -> None:
    """pod-kill: the pod is deleted; a ReplicaSet/DaemonSet makes a new one under a new name, a
    StatefulSet under the same name; a bare pod stays gone."""
    with store.lock:
        pod = store.get("pods", namespace, name)
        if pod is None:
            return
        store.delete("pods", namespace, name)
        owners = pod["metadata"].get("ownerReferences") or []
        kind = owners[0]["kind"] if owners else None
        if not recreate or kind not in ("ReplicaSet", "StatefulSet", "DaemonSet"):
            return
        new_name = name if kind == "StatefulSet" else f"{owner_name(name)}-{_suffix()}"
        node = schedule(store, pod["spec"].get("nodeName"))
        fresh = pod_manifest(
            namespace,
            new_name,
            pod["metadata"].get("labels"),
            node["metadata"]["name"] if node else None,
            [c["name"] for c in pod["spec"]["containers"]],
            None,
            node_ip(node) if node else None,
        )
        fresh["metadata"]["ownerReferences"] = copy.deepcopy(owners)
        fresh["metadata"]["generateName"] = f"{owner_name(name)}-"
        store.create("pods", fresh)


def node_ip(node: Obj) -> str | None:
    addresses = (node.get("status") or {}).get("addresses") or []
    return next((a["address"] for a in addresses if a["type"] == "InternalIP"), None)


def schedule(store: Store, preferred: str | None) -> Obj | None:
    """Where the scheduler would put a new pod without tolerations: `preferred` if it still takes
    pods, else the first node that does (not cordoned, no NoSchedule/NoExecute taint), else
    nowhere (the pod stays Pending)."""
    usable = [
        node
        for node in store.list("nodes")
        if not node["spec"].get("unschedulable")
        and not any(
            t.get("effect") in ("NoSchedule", "NoExecute") for t in node["spec"].get("taints") or []
        )
    ]
    return next((n for n in usable if n["metadata"]["name"] == preferred), None) or next(
        iter(usable), None
    )


# ---- disruption controller and eviction ----------------------------------------------------


def _scaled(value: int | str, total: int) -> int:
    if isinstance(value, str) and value.endswith("%"):
        return math.ceil(int(value[:-1]) * total / 100)
    return int(value)


def pdb_status(pdb: Obj, pods: list[Obj]) -> dict[str, Any]:
    """What the disruption controller writes into a PDB's status for the pods it covers."""
    spec = pdb.get("spec") or {}
    selector = spec.get("selector")
    matched = [p for p in pods if match_labels(selector, p["metadata"].get("labels"))]
    expected = len(matched)
    healthy = sum(1 for p in matched if pod_ready(p))
    min_available = spec.get("minAvailable")
    if not isinstance(min_available, int) or isinstance(min_available, bool):
        # the real controller takes the owners' replica count, which no eviction lowers; without
        # owner objects, the most pods this budget has covered stands in for it
        expected = max(expected, int((pdb.get("status") or {}).get("expectedPods") or 0))
    if min_available is not None:
        desired = _scaled(min_available, expected)
    elif spec.get("maxUnavailable") is not None:
        desired = max(0, expected - _scaled(spec["maxUnavailable"], expected))
    else:
        desired = 0
    allowed = max(0, healthy - desired)
    generation = pdb["metadata"].get("generation", 1)
    return {
        "observedGeneration": generation,
        "disruptionsAllowed": allowed,
        "currentHealthy": healthy,
        "desiredHealthy": desired,
        "expectedPods": expected,
        "conditions": [
            {
                "type": "DisruptionAllowed",
                "status": "True" if allowed > 0 else "False",
                "reason": "SufficientPods" if allowed > 0 else "InsufficientPods",
                "message": "",
                "observedGeneration": generation,
                "lastTransitionTime": meta.now(),
            }
        ],
    }


class DisruptionController:
    """Keeps PDB status current and answers the pods/eviction subresource."""

    def __init__(self, store: Store, scheduler: Scheduler) -> None:
        self.store = store
        self.scheduler = scheduler
        self._pending: set[str] = set()
        store.add_listener(self._changed)

    def _changed(self, plural: str, kind: str, obj: Obj, old: Obj | None) -> None:
        if plural not in ("pods", "poddisruptionbudgets"):
            return
        namespace = obj["metadata"].get("namespace") or ""
        if namespace not in self._pending:
            self._pending.add(namespace)
            self.scheduler.call_later(0, lambda: self._sync(namespace))

    def _sync(self, namespace: str) -> None:
        with self.store.lock:
            self._pending.discard(namespace)
            pods = self.store.list("pods", namespace)
            for pdb in self.store.list("poddisruptionbudgets", namespace):
                status = pdb_status(pdb, pods)
                old = pdb.get("status") or {}
                if {k: v for k, v in status.items() if k != "conditions"} == {
                    k: v for k, v in old.items() if k != "conditions"
                }:
                    continue
                pdb["status"] = status
                self.store.update("poddisruptionbudgets", pdb)

    def evict(self, namespace: str | None, name: str, body: Any) -> Response:
        with self.store.lock:
            pod = self.store.get("pods", namespace, name)
            if pod is None:
                raise meta.not_found("pods", "", name)
            pods = self.store.list("pods", namespace)
            labels = pod["metadata"].get("labels")
            budgets = [
                pdb
                for pdb in self.store.list("poddisruptionbudgets", namespace)
                if match_labels((pdb.get("spec") or {}).get("selector"), labels)
            ]
            if len(budgets) > 1:
                raise ApiError(
                    500,
                    "InternalError",
                    "This pod has more than one PodDisruptionBudget, which the eviction "
                    "subresource does not support.",
                )
            if budgets:
                status = pdb_status(budgets[0], pods)
                healthy_enough = status["currentHealthy"] >= status["desiredHealthy"]
                blocked = (
                    status["disruptionsAllowed"] <= 0 if pod_ready(pod) else not (healthy_enough)
                )
                if not blocked:
                    # as the eviction API does: spend one disruption in the budget's status
                    # before the pod goes, so the next eviction sees it at once
                    status["disruptionsAllowed"] = max(0, status["disruptionsAllowed"] - 1)
                    status["disruptedPods"] = {name: meta.now()}
                    self.store.update("poddisruptionbudgets", {**budgets[0], "status": status})
                if blocked:
                    pdb_name = budgets[0]["metadata"]["name"]
                    raise meta.too_many_requests(
                        "Cannot evict pod as it would violate the pod's disruption budget.",
                        [
                            {
                                "reason": "DisruptionBudget",
                                "message": f"The disruption budget {pdb_name} needs "
                                f"{status['desiredHealthy']} healthy pods and has "
                                f"{status['currentHealthy']} currently",
                            }
                        ],
                    )
            self.store.delete("pods", namespace, name)
        return Response(
            201,
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "code": 201,
            },
        )


# ---- Job controller ------------------------------------------------------------------------


def admit_job(job: Obj, old: Obj | None) -> None:
    """The apiserver's Job validation and defaulting that a manifest can trip over."""
    md, spec = job["metadata"], job.setdefault("spec", {})
    name = md["name"]
    problems: list[tuple[str, str]] = []
    if old is None and len(name) > 63:
        problems.append(
            ("metadata.name", f'Invalid value: "{name}": must be no more than 63 characters')
        )
    template = spec.get("template") or {}
    pod_spec = template.get("spec") or {}
    containers = pod_spec.get("containers") or []
    if not containers:
        problems.append(("spec.template.spec.containers", "Required value"))
    for i, container in enumerate(containers):
        for key in ("name", "image"):
            if not container.get(key):
                problems.append((f"spec.template.spec.containers[{i}].{key}", "Required value"))
    if pod_spec.get("restartPolicy") not in ("Never", "OnFailure"):
        policy = pod_spec.get("restartPolicy", "Always")
        problems.append(
            (
                "spec.template.spec.restartPolicy",
                f'Unsupported value: "{policy}": supported values: "OnFailure", "Never"',
            )
        )
    if problems:
        raise meta.invalid("Job", "batch", name, problems)
    if old is not None:
        return
    uid = md["uid"]
    for key, value in (
        ("backoffLimit", 6),
        ("completions", 1),
        ("parallelism", 1),
        ("completionMode", "NonIndexed"),
        ("suspend", False),
        ("podReplacementPolicy", "TerminatingOrFailed"),
        ("manualSelector", None),
    ):
        if value is not None:
            spec.setdefault(key, value)
    spec.setdefault("selector", {"matchLabels": {JOB_UID_LABEL: uid}})
    template.setdefault("metadata", {}).setdefault("labels", {}).update(
        {
            JOB_UID_LABEL: uid,
            JOB_NAME_LABEL: name,
            "controller-uid": uid,
            "job-name": name,
        }
    )
    spec["template"] = template


class JobController:
    """A created Job starts at once and ends after `behaviour.job_delay_s`: Complete, or Failed
    when `behaviour.jobs_fail` is set; `ttlSecondsAfterFinished` then deletes it."""

    def __init__(self, store: Store, scheduler: Scheduler, behaviour: ChaosMeshBehaviour) -> None:
        self.store = store
        self.scheduler = scheduler
        self.behaviour = behaviour
        store.add_listener(self._changed)

    def _changed(self, plural: str, kind: str, obj: Obj, old: Obj | None) -> None:
        if plural != "jobs" or kind != "ADDED":
            return
        ns, name, uid = (
            obj["metadata"].get("namespace"),
            obj["metadata"]["name"],
            obj["metadata"]["uid"],
        )
        self.scheduler.call_later(0, lambda: self._start(ns, name, uid))
        self.scheduler.call_later(self.behaviour.job_delay_s, lambda: self._finish(ns, name, uid))

    def _job(self, ns: str, name: str, uid: str) -> Obj | None:
        job = self.store.get("jobs", ns, name)
        return job if job is not None and job["metadata"]["uid"] == uid else None

    def _start(self, ns: str, name: str, uid: str) -> None:
        with self.store.lock:
            job = self._job(ns, name, uid)
            if job is None or job.get("status", {}).get("startTime"):
                return
            job["status"] = {
                "startTime": meta.now(),
                "active": 1,
                "ready": 0,
                "terminating": 0,
                "uncountedTerminatedPods": {},
            }
            self.store.update("jobs", job)

    def _finish(self, ns: str, name: str, uid: str) -> None:
        with self.store.lock:
            job = self._job(ns, name, uid)
            if job is None:
                return
            ts = meta.now()
            status = job.setdefault("status", {})
            status.pop("active", None)
            status.update(ready=0, terminating=0)
            failure = self.behaviour.jobs_fail
            if failure:
                message = (
                    failure
                    if isinstance(failure, str)
                    else ("Job has reached the specified backoff limit")
                )
                status["failed"] = int(job["spec"].get("backoffLimit", 6)) + 1
                status["conditions"] = [
                    {
                        "type": t,
                        "status": "True",
                        "reason": "BackoffLimitExceeded",
                        "message": message,
                        "lastProbeTime": ts,
                        "lastTransitionTime": ts,
                    }
                    for t in ("FailureTarget", "Failed")
                ]
            else:
                status["succeeded"] = 1
                status["completionTime"] = ts
                status["conditions"] = [
                    {
                        "type": t,
                        "status": "True",
                        "reason": "CompletionsReached",
                        "message": "Reached expected number of succeeded pods",
                        "lastProbeTime": ts,
                        "lastTransitionTime": ts,
                    }
                    for t in ("SuccessCriteriaMet", "Complete")
                ]
            self.store.update("jobs", job)
            ttl = job["spec"].get("ttlSecondsAfterFinished")
        if ttl is not None:
            self.scheduler.call_later(float(ttl), lambda: self._expire(ns, name, uid))

    def _expire(self, ns: str, name: str, uid: str) -> None:
        with self.store.lock:
            if self._job(ns, name, uid) is not None:
                self.store.delete("jobs", ns, name)


# ---- node lifecycle ------------------------------------------------------------------------


class NodeTaintController:
    """Mirrors `spec.unschedulable` as the `node.kubernetes.io/unschedulable:NoSchedule` taint,
    as the node lifecycle controller does after a cordon."""

    def __init__(self, store: Store, scheduler: Scheduler) -> None:
        self.store = store
        self.scheduler = scheduler
        store.add_listener(self._changed)

    def _changed(self, plural: str, kind: str, obj: Obj, old: Obj | None) -> None:
        if plural == "nodes" and kind != "DELETED":
            name = obj["metadata"]["name"]
            self.scheduler.call_later(0, lambda: self._sync(name))

    def _sync(self, name: str) -> None:
        with self.store.lock:
            node = self.store.get("nodes", None, name)
            if node is None:
                return
            spec = node.setdefault("spec", {})
            taints = spec.get("taints") or []
            has = any(t.get("key") == UNSCHEDULABLE_TAINT for t in taints)
            want = bool(spec.get("unschedulable"))
            if has == want:
                return
            if want:
                taints = [
                    *taints,
                    {"key": UNSCHEDULABLE_TAINT, "effect": "NoSchedule", "timeAdded": meta.now()},
                ]
            else:
                taints = [t for t in taints if t.get("key") != UNSCHEDULABLE_TAINT]
            if taints:
                spec["taints"] = taints
            else:
                spec.pop("taints", None)
            self.store.update("nodes", node)
