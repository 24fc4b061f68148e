"""Label and field selectors as the apiserver parses `?labelSelector=` and `?fieldSelector=`.

Label selectors take the full syntax (`a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x,y)`, `a`,
`!a`); field selectors take `=`, `==` and `!=` on the fields each resource supports, and refuse
the others with 400 like the apiserver ("field label not supported").
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from tests.fakekube.meta import bad_request

Requirement = Callable[[dict[str, str]], bool]

_SET_RE = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQ_RE = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s*(==|!=|=)\s*([A-Za-z0-9_.-]*)\s*$")
_EXISTS_RE = re.compile(r"^\s*(!?)\s*([A-Za-z0-9_./-]+)\s*$")


def _split_top_level(text: str) -> list[str]:
    """Split at commas that are not inside `( ... )`."""
    parts, depth, current = [], 0, []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p for p in parts if p.strip()]


def _requirement(text: str) -> Requirement:
    if match := _SET_RE.match(text):
        key, op, raw = match.groups()
        values = {v.strip() for v in raw.split(",") if v.strip()}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if match := _EQ_RE.match(text):
        key, op, value = match.groups()
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: key in labels and labels[key] == value
    if match := _EXISTS_RE.match(text):
        negated, key = match.groups()
        if negated:
            return lambda labels: key not in labels
        return lambda labels: key in labels
    raise bad_request(f"unable to parse requirement: {text.strip()!r}: invalid label selector")


def parse_label_selector(text: str | None) -> Callable[[dict[str, str] | None], bool]:
    """A predicate on an object's labels; an empty selector matches everything."""
    requirements = [_requirement(part) for part in _split_top_level(text or "")]

    def matches(labels: dict[str, str] | None) -> bool:
        labels = labels or {}
        return all(req(labels) for req in requirements)

    return matches


def match_labels(selector: dict[str, Any] | None, labels: dict[str, str] | None) -> bool:
    """A `metav1.LabelSelector` (matchLabels + matchExpressions) against labels."""
    if selector is None:
        return False
    labels = labels or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), set(expr.get("values") or [])
        ok = {
            "In": lambda k=key, v=values: labels.get(k) in v,
            "NotIn": lambda k=key, v=values: labels.get(k) not in v,
            "Exists": lambda k=key: k in labels,
            "DoesNotExist": lambda k=key: k not in labels,
        }.get(op)
        if ok is None or not ok():
            return False
    return True


def field_value(obj: dict[str, Any], path: str) -> str:
    """The string value of a dotted field, as field selectors compare it (missing is "")."""
    node: Any = obj
    for part in path.split("."):
        if not isinstance(node, dict):
            return ""
        node = node.get(part)
    if node is None:
        return ""
    if isinstance(node, bool):
        return "true" if node else "false"
    return str(node)


def parse_field_selector(
    text: str | None, supported: frozenset[str], plural: str
) -> Callable[[dict[str, Any]], bool]:
    """A predicate on whole objects; fields outside `supported` are refused with 400."""
    requirements = []
    for part in _split_top_level(text or ""):
        match = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(==|!=|=)\s*(.*?)\s*$", part)
        if not match:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        field, op, value = match.groups()
        if field not in supported:
            if plural in _BUILT_IN_FIELD_SELECTORS:
                raise bad_request(f"field label not supported: {field}")
            known = '", "'.join(sorted(supported))
            raise bad_request(f'"{field}" is not a known field selector: only "{known}"')
        requirements.append((field, op == "!=", value))

    def matches(obj: dict[str, Any]) -> bool:
        for field, negated, value in requirements:
            if (field_value(obj, field) == value) == negated:
                return False
        return True

    return matches


_META_FIELDS = frozenset({"metadata.name", "metadata.namespace"})
_BUILT_IN_FIELD_SELECTORS: dict[str, frozenset[str]] = {
    "pods": _META_FIELDS
    | {
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    },
    "nodes": _META_FIELDS | {"spec.unschedulable"},
    "namespaces": _META_FIELDS | {"status.phase"},
    "jobs": _META_FIELDS | {"status.successful"},
}


def supported_fields(plural: str) -> frozenset[str]:
    """Field selectors a resource accepts; custom resources only take the metadata ones."""
    return _BUILT_IN_FIELD_SELECTORS.get(plural, _META_FIELDS)
