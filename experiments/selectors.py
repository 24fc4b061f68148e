"""Choosing victims the way Chaos Mesh does: a selector narrows the candidates, a mode picks.

The same selector drives both backends: locally the candidates are the embedded cluster's
processes with pod-like labels, on Kubernetes they are pods. Keys follow Chaos Mesh's
`spec.selector` (`namespaces`, `labelSelectors`, `nodes`, `pods`) plus `mode` and `value`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

MODES = ("one", "all", "fixed", "fixed-percent", "random-max-percent")
SELECTOR_KEYS = {"namespaces", "labelSelectors", "nodes", "pods", "nodeSelectors"}


class SelectorError(ValueError):
    """A selector that is malformed or matches nothing: never a silent no-op."""


@dataclass(frozen=True)
class Candidate:
    """Something a fault can hit: a process locally, a pod on Kubernetes."""

    name: str
    labels: dict[str, str] = field(default_factory=dict)
    namespace: str = "default"

    @property
    def node(self) -> str | None:
        return self.labels.get("node")


@dataclass
class Selector:
    namespaces: list[str] = field(default_factory=list)
    label_selectors: dict[str, str] = field(default_factory=dict)
    nodes: list[str] = field(default_factory=list)
    pods: list[str] = field(default_factory=list)
    mode: str = "one"
    value: str | None = None

    @classmethod
    def from_spec(
        cls, selector: dict[str, Any] | None, mode: str = "one", value: Any = None
    ) -> Selector:
        """Build from the YAML shape; unknown keys and bad modes are errors."""
        selector = selector or {}
        if not isinstance(selector, dict):
            raise SelectorError(f"selector must be a mapping, got {type(selector).__name__}")
        unknown = set(selector) - SELECTOR_KEYS
        if unknown:
            raise SelectorError(
                f"unknown selector key(s) {sorted(unknown)}; expected {sorted(SELECTOR_KEYS)}"
            )
        labels = dict(selector.get("labelSelectors") or {})
        labels.update(selector.get("nodeSelectors") or {})
        pods = selector.get("pods") or []
        if isinstance(pods, dict):  # Chaos Mesh: {namespace: [names]}
            pods = [name for names in pods.values() for name in names]
        sel = cls(
            namespaces=list(selector.get("namespaces") or []),
            label_selectors={str(k): str(v) for k, v in labels.items()},
            nodes=list(selector.get("nodes") or []),
            pods=list(pods),
            mode=mode,
            value=None if value is None else str(value),
        )
        sel.validate()
        return sel

    def validate(self) -> None:
        if self.mode not in MODES:
            raise SelectorError(f"unknown mode {self.mode!r}; expected one of {', '.join(MODES)}")
        if self.mode in ("fixed", "fixed-percent", "random-max-percent"):
            if self.value is None:
                raise SelectorError(f"mode {self.mode!r} needs a value")
            try:
                number = float(self.value)
            except ValueError:
                raise SelectorError(f"value {self.value!r} is not a number") from None
            if self.mode == "fixed" and (number < 1 or number != int(number)):
                raise SelectorError(f"mode 'fixed' needs a whole number >= 1, got {self.value}")
            if self.mode != "fixed" and not 0 < number <= 100:
                raise SelectorError(
                    f"mode {self.mode!r} needs a percent in (0, 100], got {self.value}"
                )

    def to_spec(self) -> dict[str, Any]:
        """Chaos Mesh's shape, for the journal and the Kubernetes backend."""
        spec: dict[str, Any] = {}
        if self.namespaces:
            spec["namespaces"] = self.namespaces
        if self.label_selectors:
            spec["labelSelectors"] = self.label_selectors
        if self.nodes:
            spec["nodes"] = self.nodes
        if self.pods:
            spec["pods"] = self.pods
        return spec

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in sorted(self.label_selectors.items())]
        parts += [f"node in {self.nodes}"] if self.nodes else []
        parts += [f"name in {self.pods}"] if self.pods else []
        parts += [f"namespace in {self.namespaces}"] if self.namespaces else []
        where = ", ".join(parts) or "everything"
        value = f" {self.value}" if self.value is not None else ""
        return f"{where} (mode {self.mode}{value})"

    def matches(self, c: Candidate) -> bool:
        if self.namespaces and c.namespace not in self.namespaces:
            return False
        if any(c.labels.get(k) != v for k, v in self.label_selectors.items()):
            return False
        if self.nodes and c.node not in self.nodes:
            return False
        return not (self.pods and c.name not in self.pods)

    def count(self, matched: int, rng: random.Random) -> int:
        """How many of `matched` candidates the mode picks (at least one)."""
        if self.mode == "one":
            return 1
        if self.mode == "all":
            return matched
        number = float(self.value or 0)
        if self.mode == "fixed":
            return min(int(number), matched)
        limit = max(1, math.floor(matched * number / 100))
        if self.mode == "fixed-percent":
            return min(limit, matched)
        return rng.randint(1, min(limit, matched))  # random-max-percent

    def select(
        self, candidates: list[Candidate], rng: random.Random | None = None
    ) -> list[Candidate]:
        """The victims: the matching candidates, narrowed by the mode. Never empty."""
        rng = rng or random.Random()
        matched = [c for c in candidates if self.matches(c)]
        if not matched:
            raise SelectorError(f"selector matches nothing: {self.describe()}")
        picked = rng.sample(matched, self.count(len(matched), rng))
        return sorted(picked, key=lambda c: c.name)
