"""Node faults that are Kubernetes' own verbs, not Chaos Mesh's: cordon, taint, drain.

A drain is what `kubectl drain` does: cordon the node, then evict its pods through the
Eviction API, which refuses (429) an eviction that would break a PodDisruptionBudget; we retry
until the deadline, as kubectl does, and then fail naming the pods the budgets still protect.
Only pods of the namespaces the run may touch are evicted; DaemonSet and mirror pods stay (they
would come straight back). Every change is marked on the node (an annotation naming the fault)
so that recovery undoes ours only and `cleanup` finds it after a crash.
"""

from __future__ import annotations

import time
from typing import Any

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError as Urllib3Error

from experiments.kube.client import Kube, KubeError, call, explain, status_message

CORDONED_BY = "inference-chaos.io/cordoned-by"
EVICT_RETRY_S = 0.5
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"


def node(kube: Kube, name: str) -> Any:
    return call(kube, f"get node {name}", kube.core.read_node, name)


def _patch(kube: Kube, name: str, body: dict[str, Any], doing: str) -> None:
    call(
        kube,
        doing,
        kube.core.patch_node,
        name,
        body,
        _content_type="application/merge-patch+json",
    )


def cordon(kube: Kube, name: str, owner: str) -> bool:
    """Mark the node unschedulable; False when it already was (then recovery leaves it so)."""
    current = node(kube, name)
    if current.spec and current.spec.unschedulable:
        return False
    body = {"spec": {"unschedulable": True}, "metadata": {"annotations": {CORDONED_BY: owner}}}
    _patch(kube, name, body, f"cordon node {name}")
    return True


def uncordon(kube: Kube, name: str, owner: str | None = None) -> None:
    """Undo our cordon; a cordon by someone else (another annotation owner) stays."""
    current = node(kube, name)
    annotations = (current.metadata.annotations or {}) if current.metadata else {}
    if owner is not None and annotations.get(CORDONED_BY) not in (owner, None):
        return
    body = {"spec": {"unschedulable": None}, "metadata": {"annotations": {CORDONED_BY: None}}}
    _patch(kube, name, body, f"uncordon node {name}")


def taint(kube: Kube, name: str, new: dict[str, str]) -> None:
    """Add (or replace) a taint by key."""
    current = node(kube, name)
    taints = [
        t.to_dict() if hasattr(t, "to_dict") else dict(t)
        for t in ((current.spec.taints if current.spec else None) or [])
    ]
    kept = [_clean(t) for t in taints if t.get("key") != new["key"]]
    _patch(kube, name, {"spec": {"taints": [*kept, new]}}, f"taint node {name} {new['key']}")


def untaint(kube: Kube, name: str, key: str) -> None:
    current = node(kube, name)
    taints = [
        t.to_dict() if hasattr(t, "to_dict") else dict(t)
        for t in ((current.spec.taints if current.spec else None) or [])
    ]
    if not any(t.get("key") == key for t in taints):
        return
    kept = [_clean(t) for t in taints if t.get("key") != key]
    _patch(kube, name, {"spec": {"taints": kept}}, f"remove taint {key} from node {name}")


def _clean(t: dict[str, Any]) -> dict[str, Any]:
    """A taint in the API's camelCase, without empty fields."""
    out = {"key": t.get("key"), "effect": t.get("effect")}
    if t.get("value") is not None:
        out["value"] = t["value"]
    added = t.get("time_added") or t.get("timeAdded")
    if added is not None:
        out["timeAdded"] = added if isinstance(added, str) else added.isoformat()
    return out


def pods_on(kube: Kube, name: str, namespaces: list[str]) -> list[Any]:
    """Pods of `namespaces` bound to the node, without DaemonSet and mirror pods."""
    out = []
    for ns in namespaces:
        listed = call(
            kube,
            f"list pods on node {name} in {ns}",
            kube.core.list_namespaced_pod,
            ns,
            field_selector=f"spec.nodeName={name}",
        )
        for pod in listed.items:
            owners = pod.metadata.owner_references or []
            if any(o.kind == "DaemonSet" for o in owners):
                continue
            if MIRROR_ANNOTATION in (pod.metadata.annotations or {}):
                continue
            out.append(pod)
    return out


def drain(kube: Kube, name: str, namespaces: list[str], timeout_s: float) -> dict[str, Any]:
    """Evict every pod of `namespaces` from the (cordoned) node and wait until they are gone;
    KubeError at the deadline names the pods still there and why."""
    deadline = time.monotonic() + timeout_s
    started = time.monotonic()
    evicted: list[str] = []
    blocked: dict[str, str] = {}
    pending = {
        f"{p.metadata.namespace}/{p.metadata.name}": p for p in pods_on(kube, name, namespaces)
    }
    while pending:
        for key, pod in list(pending.items()):
            reason = _evict(kube, pod)
            if reason is None:
                evicted.append(key)
                blocked.pop(key, None)
                del pending[key]
            else:
                blocked[key] = reason
        if not pending:
            break
        if time.monotonic() > deadline:
            why = "; ".join(f"{k}: {v}" for k, v in sorted(blocked.items()))
            raise KubeError(f"drain of node {name}: after {timeout_s:g}s not evicted: {why}")
        time.sleep(EVICT_RETRY_S)
    while True:  # evicted pods terminate (graceful shutdown); the drain ends when they are gone
        left = {
            f"{p.metadata.namespace}/{p.metadata.name}" for p in pods_on(kube, name, namespaces)
        }
        still = sorted(left & set(evicted))
        if not still:
            break
        if time.monotonic() > deadline:
            raise KubeError(
                f"drain of node {name}: evicted pods still terminating after {timeout_s:g}s: "
                + ", ".join(still)
            )
        time.sleep(EVICT_RETRY_S)
    return {"evicted": sorted(evicted), "took_s": round(time.monotonic() - started, 3)}


def _evict(kube: Kube, pod: Any) -> str | None:
    """None when the eviction was accepted (or the pod is gone), else why it was refused."""
    name, namespace = pod.metadata.name, pod.metadata.namespace
    body = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": name, "namespace": namespace},
    }
    try:
        kube.core.create_namespaced_pod_eviction(name, namespace, body, _request_timeout=10)
        return None
    except ApiException as exc:
        if exc.status == 404:
            return None
        if exc.status == 429:  # a PodDisruptionBudget says not now
            return status_message(exc)
        raise explain(exc, kube, f"evict pod {namespace}/{name}") from None
    except (Urllib3Error, OSError) as exc:
        raise explain(exc, kube, f"evict pod {namespace}/{name}") from None
