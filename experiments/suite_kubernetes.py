"""The nightly suite against a Kubernetes cluster: the user's cluster, never started or stopped.

Experiments tagged `kubernetes` run (the catalogue files that also run there), each told the
target and how to reach it through `--var` (kubeconfig, context, namespace, gateway_url,
prometheus_url...). Between two experiments the reset is a search for leftovers by our labels
(Chaos Mesh objects, Jobs, taints, cordons); what an experiment left is removed and counted
against it, as the embedded cluster's reset does.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from experiments.suite_catalogue import SuiteError
from experiments.suite_reset import ResetOutcome

KUBERNETES_TAG = "kubernetes"
# configuration keys that say where and how: passed to every experiment, declared or not
TARGET_KEYS = (
    "kubeconfig", "kube_context", "in_cluster", "namespace", "namespaces", "force_namespaces",
    "max_pod_share", "max_node_share", "inject_timeout", "recover_timeout", "force_recover",
    "chaos_mesh_namespace", "dcgm_image", "gateway_url", "prometheus_url",
)  # fmt: skip


def split_overrides(overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the target's keys plus `target: kubernetes`, the rest for declared keys only)."""
    target = {k: v for k, v in overrides.items() if k in TARGET_KEYS}
    rest = {k: v for k, v in overrides.items() if k not in TARGET_KEYS and k != "target"}
    return {**target, "target": "kubernetes"}, rest


def connect_checked(target_vars: Mapping[str, Any]) -> Any:
    """The backend for the night, checked once (credentials, Chaos Mesh, namespaces)."""
    from experiments.backends import BackendError, backend_for

    try:
        return backend_for(dict(target_vars))
    except BackendError as exc:
        raise SuiteError(str(exc)) from None


def reset(backend: Any, deadline_s: float) -> ResetOutcome:
    """Remove what the last experiment left on the cluster; ok when nothing stays."""
    from experiments.kube import cleanup
    from experiments.kube.client import KubeError

    started = time.monotonic()
    try:
        found = cleanup.find(backend.kube)
    except KubeError as exc:
        return ResetOutcome(False, time.monotonic() - started, [], [str(exc)])
    if not found.count():
        return ResetOutcome(True, time.monotonic() - started)
    errors = cleanup.remove(backend.kube, found, deadline_s, force=False)
    return ResetOutcome(not errors, time.monotonic() - started, found.lines(), errors)


def describe(backend: Any) -> str:
    return f"context {backend.kube.context}, namespaces {', '.join(backend.settings.namespaces)}"
