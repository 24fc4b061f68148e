"""Finding and removing what runs left on a cluster: `inference-chaos cleanup`.

Everything the harness creates carries `app.kubernetes.io/managed-by: inference-chaos` and the
run id, so leftovers are found by label alone, across every namespace: Chaos Mesh objects of
the six kinds, the GPU injection Jobs, and on nodes our taints (valued with the run id) and
cordons (annotated with it). A crashed run, a killed CI job, a laptop that went to sleep: one
command puts the cluster back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from experiments.kube import lifecycle, nodes
from experiments.kube.client import Kube, KubeError, call
from experiments.kube.names import (
    CHAOS_KINDS,
    GPU_FAULT_TAINT,
    GROUP,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    NODE_DOWN_TAINT,
    RUN_LABEL,
    VERSION,
    label_value,
)

OUR_TAINTS = (GPU_FAULT_TAINT, NODE_DOWN_TAINT)


@dataclass
class Leftovers:
    chaos: list[tuple[str, str, str]] = field(default_factory=list)  # kind, namespace, name
    jobs: list[tuple[str, str]] = field(default_factory=list)  # namespace, name
    taints: list[tuple[str, str]] = field(default_factory=list)  # node, taint key
    cordons: list[tuple[str, str]] = field(default_factory=list)  # node, owner

    def count(self) -> int:
        return len(self.chaos) + len(self.jobs) + len(self.taints) + len(self.cordons)

    def lines(self) -> list[str]:
        return (
            [f"{kind} {ns}/{name}" for kind, ns, name in self.chaos]
            + [f"Job {ns}/{name}" for ns, name in self.jobs]
            + [f"taint {key} on node {node}" for node, key in self.taints]
            + [f"cordon of node {node} ({owner})" for node, owner in self.cordons]
        )


def selector_for(run_id: str | None) -> str:
    base = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
    return base + (f",{RUN_LABEL}={label_value(run_id)}" if run_id else "")


def find(kube: Kube, run_id: str | None = None) -> Leftovers:
    """Everything of `run_id` (or of every run) still on the cluster."""
    found = Leftovers()
    labels = selector_for(run_id)
    for kind, plural in CHAOS_KINDS.items():
        listed = call(
            kube,
            f"list {plural} in every namespace",
            kube.custom.list_cluster_custom_object,
            GROUP,
            VERSION,
            plural,
            label_selector=labels,
        )
        for item in listed.get("items") or []:
            meta = item.get("metadata") or {}
            found.chaos.append((kind, meta.get("namespace", "default"), meta["name"]))
    jobs = call(
        kube, "list Jobs in every namespace", kube.batch.list_job_for_all_namespaces,
        label_selector=labels,
    )  # fmt: skip
    found.jobs = [(j.metadata.namespace, j.metadata.name) for j in jobs.items]
    wanted = label_value(run_id) if run_id else None
    for node in call(kube, "list nodes", kube.core.list_node).items:
        name = node.metadata.name
        for t in (node.spec.taints if node.spec else None) or []:
            if t.key in OUR_TAINTS and (wanted is None or t.value == wanted):
                found.taints.append((name, t.key))
        owner = (node.metadata.annotations or {}).get(nodes.CORDONED_BY)
        if owner and (wanted is None or owner.split("/")[0] == wanted):
            found.cordons.append((name, owner))
    return found


def remove(kube: Kube, leftovers: Leftovers, timeout_s: float, force: bool) -> list[str]:
    """Remove everything found; returns the problems (empty when all is gone)."""
    errors: list[str] = []

    def attempt(what: str, step: Any, *args: Any) -> None:
        try:
            step(*args)
        except KubeError as exc:
            errors.append(f"{what}: {exc}")

    for kind, ns, name in leftovers.chaos:
        attempt(f"{kind} {ns}/{name}", lifecycle.remove, kube, kind, ns, name, timeout_s, force)
    for ns, name in leftovers.jobs:
        attempt(f"Job {ns}/{name}", _delete_job, kube, ns, name)
    for node, key in leftovers.taints:
        attempt(f"taint {key} on {node}", nodes.untaint, kube, node, key)
    for node, owner in leftovers.cordons:
        attempt(f"cordon of {node}", nodes.uncordon, kube, node, owner)
    return errors


def _delete_job(kube: Kube, namespace: str, name: str) -> None:
    try:
        call(
            kube, f"delete Job {namespace}/{name}", kube.batch.delete_namespaced_job, name,
            namespace, propagation_policy="Background",
        )  # fmt: skip
    except KubeError as exc:
        if "not found" not in str(exc):
            raise
