"""The replica-to-replica RPCs of Raft as plain frozen records, and their JSON form.

Kept apart from the transport so the node can be driven in tests by handing these records from
one node object to another, with no sockets in between.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from resilience.raft.log import Entry

__all__ = [
    "AppendRequest",
    "AppendResponse",
    "Request",
    "Response",
    "SnapshotRequest",
    "SnapshotResponse",
    "VoteRequest",
    "VoteResponse",
    "decode_request",
    "decode_response",
    "encode",
]


@dataclass(frozen=True)
class VoteRequest:
    """RequestVote; with `pre_vote` it asks "would you vote for me?" without changing any term.

    A pre-vote carries the term the candidate *would* use (its term + 1).
    """

    term: int
    candidate_id: int
    last_log_index: int
    last_log_term: int
    pre_vote: bool = False


@dataclass(frozen=True)
class VoteResponse:
    term: int
    granted: bool


@dataclass(frozen=True)
class AppendRequest:
    """AppendEntries, heartbeats included; `leader_url` tells followers where to redirect."""

    term: int
    leader_id: int
    leader_url: str
    prev_log_index: int
    prev_log_term: int
    entries: tuple[Entry, ...]
    leader_commit: int


@dataclass(frozen=True)
class AppendResponse:
    """On failure `conflict_index` is where the leader should try next (term-skipping backup)."""

    term: int
    success: bool
    match_index: int = 0
    conflict_index: int = 0


@dataclass(frozen=True)
class SnapshotRequest:
    """InstallSnapshot, whole (the store is small): for a follower behind the leader's log base."""

    term: int
    leader_id: int
    leader_url: str
    last_included_index: int
    last_included_term: int
    state: dict[str, Any] | None


@dataclass(frozen=True)
class SnapshotResponse:
    term: int
    match_index: int = 0


Request = VoteRequest | AppendRequest | SnapshotRequest
Response = VoteResponse | AppendResponse | SnapshotResponse

_KINDS: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        VoteRequest,
        VoteResponse,
        AppendRequest,
        AppendResponse,
        SnapshotRequest,
        SnapshotResponse,
    )
}


def encode(message: Request | Response) -> dict[str, Any]:
    """The JSON object for a message; entries travel as [index, term, command] triples."""
    body = dict(message.__dict__)
    if isinstance(message, AppendRequest):
        body["entries"] = [entry.to_json() for entry in message.entries]
    body["type"] = type(message).__name__
    return body


def _decode(body: dict[str, Any], allowed: tuple[type, ...]) -> Any:
    body = dict(body)
    cls = _KINDS.get(body.pop("type", ""))
    if cls not in allowed:
        raise ValueError(f"unexpected message type {cls}")
    if cls is AppendRequest:
        body["entries"] = tuple(Entry.from_json(raw) for raw in body["entries"])
    return cls(**body)


def decode_request(body: dict[str, Any]) -> Request:
    return _decode(body, (VoteRequest, AppendRequest, SnapshotRequest))


def decode_response(body: dict[str, Any]) -> Response:
    return _decode(body, (VoteResponse, AppendResponse, SnapshotResponse))
