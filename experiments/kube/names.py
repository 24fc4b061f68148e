"""The names we put on Kubernetes objects, and the ones Chaos Mesh reads; one place for all.

Every object the harness creates carries MANAGED_BY and the run id, so `inference-chaos
cleanup` finds leftovers of any run; a namespace takes faults only when it carries OPT_IN.
"""

from __future__ import annotations

GROUP = "chaos-mesh.org"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "inference-chaos"
RUN_LABEL = "inference-chaos.io/run-id"
FAULT_LABEL = "inference-chaos.io/fault-id"
OPT_IN_LABEL = "inference-chaos.io/chaos"
OPT_IN_VALUE = "enabled"

# Chaos Mesh's own annotations (api/v1alpha1 and controllers/common of Chaos Mesh 2.x)
PAUSE_ANNOTATION = "experiment.chaos-mesh.org/pause"
CLEAN_FINALIZER_ANNOTATION = "chaos-mesh.chaos-mesh.org/cleanFinalizer"
CLEAN_FINALIZER_FORCED = "forced"
RECORDS_FINALIZER = "chaos-mesh/records"

# taints we set on nodes (removed on recovery)
GPU_FAULT_TAINT = "inference-chaos.io/gpu-fault"
NODE_DOWN_TAINT = "inference-chaos.io/node-down"

# the Chaos Mesh kinds we create, with their plural (Chaos Mesh's plural equals its singular)
CHAOS_KINDS = {
    "NetworkChaos": "networkchaos",
    "PodChaos": "podchaos",
    "StressChaos": "stresschaos",
    "IOChaos": "iochaos",
    "HTTPChaos": "httpchaos",
    "TimeChaos": "timechaos",
}

# namespaces that never take faults, whatever their labels say
PROTECTED_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease", "chaos-mesh")


def run_labels(run_id: str, fault_id: str | None = None) -> dict[str, str]:
    """The labels of every object of one run (and of one fault, when given)."""
    labels = {MANAGED_BY_LABEL: MANAGED_BY, RUN_LABEL: label_value(run_id)}
    if fault_id:
        labels[FAULT_LABEL] = label_value(fault_id)
    return labels


def label_value(text: str) -> str:
    """A valid label value: at most 63 characters of [A-Za-z0-9._-], alphanumeric at both ends."""
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in text)[:63]
    return cleaned.strip("._-") or "x"
