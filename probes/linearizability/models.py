"""Sequential specifications: what a single correct copy of the object would answer.

As in Porcupine's `model.go`, a model is a handful of pure functions: an initial state, a
`step` that says whether an operation with its observed output is legal in a state (and the
state after it), and a `partition` that splits a history into independent sub-histories
(one per key: linearizability is compositional, so each key can be checked alone).
Porcupine also needs `Equal`; our states are immutable hashable values (None, str, int), so
`==` and `hash` serve, and the checker memoises them in a set.

A pending operation (timed out, outcome unknown) has no output to check: `step` accepts it
in any state and applies its effect, so the search may place it anywhere after its call, or
last of all, where its effect no longer matters (that is how it "never took effect").

Functions are module-level so a Model pickles by reference into the checker's worker pool.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from probes.linearizability.history import Operation

__all__ = ["MODEL_NAMES", "UNKNOWN", "Model", "kv_model", "make_model", "register_model"]

State = Hashable
Input = tuple[Any, ...]
StepFn = Callable[[State, Input, Any], tuple[bool, State]]
EncodeFn = Callable[[Operation], tuple[Input, Any]]
ObservesFn = Callable[[Input, Any], bool]
PartitionFn = Callable[[Sequence[Operation]], dict[Any, list[Operation]]]

READS = frozenset({"read", "get"})
WRITES = frozenset({"write", "put"})
REGISTER_KINDS = READS | WRITES | {"cas", "delete"}
KV_KINDS = REGISTER_KINDS | {"append"}


class Outcome(Enum):
    """The output of an operation whose outcome is unknown (an enum so it pickles as itself)."""

    UNKNOWN = "unknown"


UNKNOWN = Outcome.UNKNOWN


@dataclass(frozen=True)
class Model:
    """A sequential specification the checker searches against.

    `encode` turns an Operation into the model's (input, output), once per operation, as
    Porcupine's parsers build its inputs and outputs; `step(state, input, output)` is then
    all the search calls, a few million times on a hard history. `observes(input, output)`
    is True for operations that change nothing wherever they are legal (a read): the search
    may then linearize them as soon as they fit and skip the alternatives.
    """

    name: str
    init: State
    encode: EncodeFn
    step: StepFn
    partition: PartitionFn
    kinds: frozenset[str]
    observes: ObservesFn

    def constrains(self, op: Operation) -> bool:
        """False for operations that can change nothing and whose output is unknown."""
        return not (op.pending and op.op in READS)

    def validate(self, operations: Sequence[Operation]) -> None:
        """ValueError on an operation this model cannot take (before any search)."""
        for op in operations:
            if op.op not in self.kinds:
                known = ", ".join(sorted(self.kinds))
                raise ValueError(
                    f"model {self.name} has no operation {op.op!r} (#{op.id}); it knows {known}"
                )
            self.encode(op)

    def apply(self, state: State, op: Operation) -> tuple[bool, State]:
        """Step one Operation: for reports and tests, not the search's inner loop."""
        inp, out = self.encode(op)
        return self.step(state, inp, out)


_READ, _WRITE, _CAS, _DELETE, _APPEND = range(5)


def encode_register_op(op: Operation) -> tuple[Input, Any]:
    """read -> (READ,), write v -> (WRITE, v), cas -> (CAS, expect, value), delete, append."""
    kind, known = op.op, not op.pending
    if kind in READS:
        return (_READ,), (frozen(op.output) if known else UNKNOWN)
    if kind in WRITES:
        return (_WRITE, frozen(op.input)), None
    if kind == "cas":
        expect, value = _cas_args(op)
        return (_CAS, frozen(expect), frozen(value)), (bool(op.output) if known else UNKNOWN)
    if kind == "delete":
        deleted = op.output if known and isinstance(op.output, bool) else UNKNOWN
        return (_DELETE,), deleted
    if kind == "append":
        return (_APPEND, "" if op.input is None else str(op.input)), None
    raise ValueError(f"#{op.id}: no operation {kind!r} in this model")


def register_step(state: State, inp: Input, out: Any) -> tuple[bool, State]:
    """read / write / cas / delete / append on one register; None is absent (Jepsen's nil).

    This is Porcupine's etcd model: a read of nil matches only the never-written (or deleted)
    register, a cas succeeds exactly when the register holds `expect`, and a cas reported as
    failed is legal only when it does not. An UNKNOWN output is legal in any state.
    """
    kind = inp[0]
    if kind == _READ:
        return (out is UNKNOWN or out == state), state
    if kind == _WRITE:
        return True, inp[1]
    if kind == _CAS:
        if inp[1] == state:
            return out is not False, inp[2]
        return out is not True, state
    if kind == _DELETE:
        return (out is UNKNOWN or out == (state is not None)), None
    return True, ("" if state is None else state) + inp[1]  # append


def register_observes(inp: Input, out: Any) -> bool:
    """True for operations that change nothing wherever they are legal: a read with a known
    result, a cas known to have failed, a delete that found nothing."""
    kind = inp[0]
    if kind == _READ:
        return out is not UNKNOWN
    if kind == _CAS:
        return out is False
    return kind == _DELETE and out is False


def frozen(value: Any) -> Hashable:
    """JSON values as hashable states: lists become tuples, objects sorted item tuples."""
    if isinstance(value, list):
        return tuple(frozen(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, frozen(v)) for k, v in value.items()))
    return value


def _cas_args(op: Operation) -> tuple[Any, Any]:
    value = op.input
    if isinstance(value, dict) and "value" in value:
        return value.get("expect"), value["value"]
    if isinstance(value, list | tuple) and len(value) == 2:
        return value[0], value[1]  # a pair, as Jepsen writes it
    raise ValueError(f"#{op.id}: cas input must be {{expect, value}} or a pair, not {value!r}")


def single_partition(operations: Sequence[Operation]) -> dict[Any, list[Operation]]:
    """The whole history is one register: refuse histories over several keys."""
    keys = {op.key for op in operations} - {None}
    if len(keys) > 1:
        raise ValueError(
            f"the register model checks one register but the history has {len(keys)} keys; "
            "use the kv model"
        )
    return {next(iter(keys), None): list(operations)}


def partition_by_key(operations: Sequence[Operation]) -> dict[Any, list[Operation]]:
    """One sub-history per key, in first-seen order."""
    parts: dict[Any, list[Operation]] = {}
    for op in operations:
        parts.setdefault(op.key, []).append(op)
    return parts


def register_model(initial: State = None) -> Model:
    """One register (Porcupine's etcd model); the initial state is unset (None)."""
    return Model(
        "register",
        initial,
        encode_register_op,
        register_step,
        single_partition,
        REGISTER_KINDS,
        register_observes,
    )


def kv_model(initial: State = None) -> Model:
    """A map of independent registers with append; Porcupine's kv files start from ""."""
    return Model(
        "kv",
        initial,
        encode_register_op,
        register_step,
        partition_by_key,
        KV_KINDS,
        register_observes,
    )


MODEL_NAMES = ("register", "kv")


def make_model(name: str, initial: State = None) -> Model:
    """The model called `name`, starting every key at `initial`."""
    if name == "register":
        return register_model(initial)
    if name == "kv":
        return kv_model(initial)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
