"""What every fault backend does: list candidates, inject, recover, describe.

Like a Jepsen nemesis, a backend is a handful of verbs and nothing more; the fault actions
above it choose victims, keep the ledger and never learn which backend runs.
"""

from __future__ import annotations

from typing import Any, Protocol

from experiments.ledger import FaultRecord
from experiments.selectors import Candidate, Selector


class BackendError(RuntimeError):
    """A fault could not be injected or removed; the message says what and where."""


class FaultBackend(Protocol):
    name: str

    def candidates(self) -> list[Candidate]:
        """Everything a selector may pick from."""

    def supports(self, kind: str) -> bool:
        """True when this backend can inject faults of this kind."""

    def why_unsupported(self, kind: str) -> str:
        """Why a kind is not supported and what to use instead ('' when nothing to add)."""

    def admit(self, record: FaultRecord, selector: Selector) -> dict[str, Any]:
        """Safety checks before injection (namespaces, blast radius); raises BackendError.
        Returns what the fault would create (`{"manifests": [...]}` on Kubernetes), for the
        dry run and the journal."""

    def inject(self, record: FaultRecord) -> dict[str, Any]:
        """Make the fault real on `record.victims`; return details needed to undo it."""

    def recover(self, record: FaultRecord) -> None:
        """Undo the fault; safe to call twice."""

    def describe(self, record: FaultRecord) -> dict[str, Any]:
        """What the fault looks like from the backend's side (for journal and report)."""
