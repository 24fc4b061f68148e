"""What the checker answers: a verdict for the whole history and one per key, as plain data.

`unknown` is a first-class answer: a search cut short by the deadline, or never run because
another key already failed, proves nothing, so it can never count as `ok`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from probes.linearizability.search import Counterexample, PartitionSearch, SearchOutcome

__all__ = ["RESULTS", "KeyResult", "Verdict", "combine", "key_result"]

RESULTS = ("ok", "illegal", "unknown")


@dataclass
class KeyResult:
    """The verdict on one key's sub-history."""

    key: Any
    result: str
    operations: int
    explored: int = 0
    elapsed_s: float = 0.0
    counterexample: Counterexample | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "result": self.result,
            "operations": self.operations,
            "explored_states": self.explored,
            "elapsed_s": round(self.elapsed_s, 6),
            "reason": self.reason,
            "counterexample": self.counterexample.to_json() if self.counterexample else None,
        }


@dataclass
class Verdict:
    """ok | illegal | unknown for the whole history, with the per-key results behind it."""

    result: str
    model: str
    keys: list[KeyResult] = field(default_factory=list)
    operations: int = 0
    dropped: int = 0
    elapsed_s: float = 0.0
    parallel: bool = False
    reason: str | None = None

    @property
    def counterexample(self) -> Counterexample | None:
        """The first illegal key's counterexample, if any."""
        return next((k.counterexample for k in self.keys if k.counterexample), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "result": self.result,
            "model": self.model,
            "operations": self.operations,
            "dropped": self.dropped,
            "keys_checked": len(self.keys),
            "elapsed_s": round(self.elapsed_s, 6),
            "parallel": self.parallel,
            "reason": self.reason,
            "counterexample": self.counterexample.to_json() if self.counterexample else None,
            "keys": [k.to_json() for k in self.keys],
        }


def key_result(search: PartitionSearch, outcome: SearchOutcome) -> KeyResult:
    """The per-key record of a finished (or abandoned) search."""
    return KeyResult(
        search.key,
        outcome.result,
        outcome.operations,
        outcome.explored,
        search.elapsed_s,
        outcome.counterexample,
        outcome.reason,
    )


def _name(key: Any) -> str:
    return "the register" if key is None else f"key {key!r}"


def combine(results: list[KeyResult], model_name: str) -> Verdict:
    """illegal if any key is, else unknown if any key is, else ok."""
    illegal = [r for r in results if r.result == "illegal"]
    unknown = [r for r in results if r.result == "unknown"]
    if illegal:
        return Verdict(
            "illegal", model_name, results, reason=f"{_name(illegal[0].key)} is not linearizable"
        )
    if unknown:
        return Verdict(
            "unknown", model_name, results, reason=f"{len(unknown)} key(s): {unknown[0].reason}"
        )
    return Verdict("ok", model_name, results)
