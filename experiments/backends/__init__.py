"""Fault backends: `local` (the embedded cluster) and, later, `kubernetes` (Chaos Mesh)."""

from __future__ import annotations

from typing import Any

from experiments.backends.base import BackendError, FaultBackend


def backend_for(configuration: dict[str, Any] | None) -> FaultBackend:
    """The backend named by the experiment's `target` configuration key (default: local)."""
    target = (configuration or {}).get("target", "local")
    if target == "local":
        from experiments.backends.local import LocalBackend

        return LocalBackend.from_running_cluster(configuration or {})
    if target == "kubernetes":
        raise BackendError("target 'kubernetes' is not available in this version; use 'local'")
    raise BackendError(f"unknown target {target!r}; expected 'local' or 'kubernetes'")


__all__ = ["BackendError", "FaultBackend", "backend_for"]
