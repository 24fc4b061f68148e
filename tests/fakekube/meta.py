"""Object metadata helpers and the apiserver's `Status` error objects.

Every error the fake answers is a `metav1.Status` shaped exactly like the real apiserver's, so the
official client raises `ApiException` with the same `status`, `reason` and JSON body it would get
from a cluster.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

FAKE_USER = "fake-user"


def now() -> str:
    """An RFC 3339 timestamp with second precision, like `metav1.Time`."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_uid() -> str:
    return str(uuid.uuid4())


class ApiError(Exception):
    """A request the apiserver refuses; `status` is the `metav1.Status` body it answers."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code = code
        self.status: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "details": details if details is not None else {},
            "code": code,
        }


def qualified(plural: str, group: str) -> str:
    """`pods` for the core group, `networkchaos.chaos-mesh.org` otherwise (apiserver wording)."""
    return f"{plural}.{group}" if group else plural


def _details(plural: str, group: str, name: str | None = None, **extra: Any) -> dict:
    details: dict[str, Any] = {}
    if name:
        details["name"] = name
    if group:
        details["group"] = group
    details["kind"] = plural
    details.update(extra)
    return details


def not_found(plural: str, group: str, name: str) -> ApiError:
    message = f'{qualified(plural, group)} "{name}" not found'
    return ApiError(404, "NotFound", message, _details(plural, group, name))


def no_such_path() -> ApiError:
    """What the apiserver answers for a group, version or resource it does not serve."""
    return ApiError(404, "NotFound", "the server could not find the requested resource")


def already_exists(plural: str, group: str, name: str) -> ApiError:
    message = f'{qualified(plural, group)} "{name}" already exists'
    return ApiError(409, "AlreadyExists", message, _details(plural, group, name))


def conflict(plural: str, group: str, name: str, why: str) -> ApiError:
    message = f'Operation cannot be fulfilled on {qualified(plural, group)} "{name}": {why}'
    return ApiError(409, "Conflict", message, _details(plural, group, name))


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def unsupported_media_type(content_type: str, accepted: list[str]) -> ApiError:
    message = (
        f"the body of the request was in an unknown format - accepted media types include: "
        f"{', '.join(accepted)}"
    )
    return ApiError(415, "UnsupportedMediaType", message, {})


def method_not_allowed(verb: str, plural: str) -> ApiError:
    message = "the server does not allow this method on the requested resource"
    return ApiError(405, "MethodNotAllowed", message, {"kind": plural})


def invalid(kind: str, group: str, name: str, problems: list[tuple[str, str]]) -> ApiError:
    """422 Invalid: `problems` are (field, message) pairs, listed in the message like the real
    apiserver does (`Kind.group "name" is invalid: [a: x, b: y]`)."""
    texts = [f"{field}: {message}" if field else message for field, message in problems]
    listed = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    message = f'{qualified(kind, group)} "{name}" is invalid: {listed}'
    causes = [
        {"reason": "FieldValueInvalid", "message": msg, "field": field} for field, msg in problems
    ]
    details = {"name": name, "group": group, "kind": kind, "causes": causes}
    if not group:
        del details["group"]
    return ApiError(422, "Invalid", message, details)


def forbidden(verb: str, plural: str, group: str, namespace: str | None, name: str | None):
    """403 like RBAC's: `pods "x" is forbidden: User "u" cannot get resource "pods" ...`."""
    base = plural.split("/")[0]
    subject = qualified(base, group) + (f' "{name}"' if name else "")
    scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    message = (
        f'{subject} is forbidden: User "{FAKE_USER}" cannot {verb} resource "{plural}" '
        f'in API group "{group}" {scope}'
    )
    return ApiError(403, "Forbidden", message, _details(base, group, name))


def too_many_requests(message: str, causes: list[dict]) -> ApiError:
    return ApiError(429, "TooManyRequests", message, {"causes": causes})


def success_status(code: int, plural: str, group: str, name: str, uid: str | None) -> dict:
    details = _details(plural, group, name)
    if uid:
        details["uid"] = uid
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
        "code": code,
    }


_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


def name_problems(name: str, max_length: int = 253) -> list[tuple[str, str]]:
    """Why `name` is not a valid object name (RFC 1123 subdomain), apiserver wording."""
    problems = []
    if len(name) > max_length:
        problems.append(
            (
                "metadata.name",
                f'Invalid value: "{name}": must be no more than {max_length} characters',
            )
        )
    if not _SUBDOMAIN.match(name):
        problems.append(
            (
                "metadata.name",
                f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower '
                "case alphanumeric characters, '-' or '.', and must start and end with an "
                "alphanumeric character",
            )
        )
    return problems


def label_problems(labels: Any) -> list[tuple[str, str]]:
    """Invalid label keys and values, as `metadata.labels` field errors."""
    if labels is None:
        return []
    if not isinstance(labels, dict):
        return [("metadata.labels", "Invalid value: must be a map of strings")]
    problems = []
    for key, value in labels.items():
        prefix, _, name = key.rpartition("/")
        if (
            (prefix and not _SUBDOMAIN.match(prefix))
            or len(name) > 63
            or not _LABEL_NAME.match(name)
        ):
            problems.append(("metadata.labels", f'Invalid value: "{key}": name part must be valid'))
        if not isinstance(value, str):
            problems.append(("metadata.labels", f'Invalid value: "{key}": value must be a string'))
        elif len(value) > 63 or (value and not _LABEL_NAME.match(value)):
            problems.append(
                (
                    "metadata.labels",
                    f'Invalid value: "{value}": a valid label must be an empty string or consist '
                    "of alphanumeric characters, '-', '_' or '.', and must start and end with an "
                    "alphanumeric character (at most 63 characters)",
                )
            )
    return problems
