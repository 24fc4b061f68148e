"""What a run on Kubernetes is configured with, read once from the experiment's configuration.

configuration:
  target: kubernetes
  namespace: inference            # or namespaces: [a, b]; where candidates live
  kubeconfig: ~/.kube/config      # else $KUBECONFIG; in_cluster: true inside a pod
  kube_context: kind-chaos
  max_pod_share: 0.5              # blast radius: refuse a fault on more of the pods
  max_node_share: 0.5             # ... or of the nodes
  force_namespaces: false         # allow namespaces that are protected or not opted in
  inject_timeout: 30s             # until AllInjected
  recover_timeout: 60s            # until the object is gone
  force_recover: false            # clear a stuck finalizer at the recover deadline
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from experiments.kube.client import KubeError

DEFAULT_DCGM_IMAGE = "nvcr.io/nvidia/cloud-native/dcgm:4.2.3-1-ubuntu22.04"


def _seconds(value: Any, key: str) -> float:
    from chaoslib.exceptions import ActivityFailed

    from experiments.faults import parse_seconds

    try:
        return parse_seconds(value, key)
    except ActivityFailed as exc:
        raise KubeError(f"configuration {exc}") from None


def _share(value: Any, key: str) -> float:
    try:
        share = float(value)
    except (TypeError, ValueError):
        raise KubeError(f"configuration {key}: {value!r} is not a number") from None
    if not 0 < share <= 1:
        raise KubeError(f"configuration {key}: a share in (0, 1], got {value!r}")
    return share


def _flag(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes"):
        return True
    if str(value).lower() in ("false", "0", "no", ""):
        return False
    raise KubeError(f"configuration {key}: expected true or false, got {value!r}")


@dataclass(frozen=True)
class KubeSettings:
    namespaces: list[str] = field(default_factory=lambda: ["default"])
    max_pod_share: float = 0.5
    max_node_share: float = 0.5
    force_namespaces: bool = False
    inject_timeout_s: float = 30.0
    recover_timeout_s: float = 60.0
    force_recover: bool = False
    chaos_mesh_namespace: str = "chaos-mesh"
    dcgm_image: str = DEFAULT_DCGM_IMAGE

    @classmethod
    def from_configuration(cls, configuration: dict[str, Any]) -> KubeSettings:
        c = configuration
        namespaces = c.get("namespaces") or c.get("namespace") or "default"
        if isinstance(namespaces, str):
            namespaces = [n.strip() for n in namespaces.split(",") if n.strip()]
        if not isinstance(namespaces, list) or not all(isinstance(n, str) for n in namespaces):
            raise KubeError(f"configuration namespaces: expected names, got {namespaces!r}")
        return cls(
            namespaces=list(namespaces),
            max_pod_share=_share(c.get("max_pod_share", 0.5), "max_pod_share"),
            max_node_share=_share(c.get("max_node_share", 0.5), "max_node_share"),
            force_namespaces=_flag(c.get("force_namespaces", False), "force_namespaces"),
            inject_timeout_s=_seconds(c.get("inject_timeout", 30), "inject_timeout"),
            recover_timeout_s=_seconds(c.get("recover_timeout", 60), "recover_timeout"),
            force_recover=_flag(c.get("force_recover", False), "force_recover"),
            chaos_mesh_namespace=str(c.get("chaos_mesh_namespace") or "chaos-mesh"),
            dcgm_image=str(c.get("dcgm_image") or DEFAULT_DCGM_IMAGE),
        )
