"""Fault backends: `local` (the embedded cluster) and `kubernetes` (Chaos Mesh)."""

from __future__ import annotations

from typing import Any

from experiments.backends.base import BackendError, FaultBackend

_kubernetes: dict[str, FaultBackend] = {}
CONNECTION_KEYS = (
    "kubeconfig", "kube_context", "in_cluster", "namespace", "namespaces", "force_namespaces",
    "max_pod_share", "max_node_share", "inject_timeout", "recover_timeout", "force_recover",
    "chaos_mesh_namespace", "dcgm_image",
)  # fmt: skip


def _connection_key(configuration: dict[str, Any]) -> str:
    import json

    return json.dumps(
        {k: configuration.get(k) for k in CONNECTION_KEYS}, sort_keys=True, default=str
    )


def forget_connections() -> None:
    """Drop cached Kubernetes backends (tests, and a run that changed its configuration)."""
    _kubernetes.clear()


def backend_for(configuration: dict[str, Any] | None) -> FaultBackend:
    """The backend named by the experiment's `target` configuration key (default: local)."""
    target = (configuration or {}).get("target", "local")
    if target == "local":
        from experiments.backends.local import LocalBackend

        return LocalBackend.from_running_cluster(configuration or {})
    if target == "kubernetes":
        from experiments.backends.kubernetes import KubernetesBackend

        key = _connection_key(configuration or {})
        if key not in _kubernetes:  # connect and check once per run, not once per action
            _kubernetes[key] = KubernetesBackend.from_configuration(configuration or {})
        return _kubernetes[key]
    raise BackendError(f"unknown target {target!r}; expected 'local' or 'kubernetes'")


__all__ = ["BackendError", "FaultBackend", "backend_for"]
