"""The Operation record and the three history formats we read.

An operation is plain data, as in Porcupine and Jepsen: who did what to which key, what it
returned, and the interval [call, return] in which it took effect. `return` is None when the
client never heard back: such an operation stays pending to the end of the history.

Formats, detected from the first non-blank line:

- `jsonl`: ours, one JSON object per line (docs/internals.md, "Histories").
- `jepsen`: Knossos/Jepsen etcd logs (`INFO  jepsen.util - 3  :invoke  :cas  [1 4]`), one
  register; time is the line number.
- `porcupine-kv`: Porcupine's kv test files, EDN maps such as
  `{:process 0, :type :invoke, :f :get, :key "5", :value nil}`; time is the line number.

In the two Jepsen-style formats an `:invoke` is completed by the next `:ok`/`:fail`/`:info`
line of the same process.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "FORMATS",
    "History",
    "Operation",
    "STATUSES",
    "load_history",
    "parse_history",
]

STATUSES = ("ok", "fail", "unknown")
FORMATS = ("jsonl", "jepsen", "porcupine-kv")


@dataclass(frozen=True, slots=True)
class Operation:
    """One client operation; `ret` is the return time (`return` is a Python keyword)."""

    id: int
    process: int
    op: str
    key: str | None
    input: Any
    output: Any
    call: float
    ret: float | None
    status: str = "ok"

    @property
    def pending(self) -> bool:
        """True when the outcome is not known: it may take effect at any time after its call."""
        return self.status == "unknown" or self.ret is None

    @property
    def end(self) -> float:
        """The return time, +infinity for a pending operation (it never has to precede anything)."""
        return math.inf if self.pending else float(self.ret)  # type: ignore[arg-type]

    def label(self) -> str:
        """`write(3)`, `cas(1->4) -> false`, `read() -> 3`, `read() -> ?` for pending."""
        if self.op == "cas" and isinstance(self.input, dict):
            args = f"{_show(self.input.get('expect'))}->{_show(self.input.get('value'))}"
        elif self.input is None:
            args = ""
        else:
            args = _show(self.input)
        text = f"{self.op}({args})"
        if self.pending:
            return f"{text} -> ?"
        if self.output is not None or self.op in ("read", "get"):
            text += f" -> {_show(self.output)}"
        return text

    def describe(self) -> str:
        """The label with who and when, as a counterexample line names an operation."""
        ret = "never" if self.ret is None else f"{self.ret:g}"
        status = "" if self.status == "ok" else f" ({self.status})"
        return f"#{self.id} process {self.process}: {self.label()} [{self.call:g}, {ret}]{status}"

    def to_json(self) -> dict[str, Any]:
        """The record in our JSON-lines shape (plus its id)."""
        return {
            "id": self.id,
            "process": self.process,
            "op": self.op,
            "key": self.key,
            "input": self.input,
            "output": self.output,
            "call": self.call,
            "return": self.ret,
            "status": self.status,
        }


def _show(value: Any) -> str:
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value) if value == "" or " " in value else value
    return json.dumps(value, sort_keys=True, default=str)


@dataclass(frozen=True)
class History:
    """Parsed operations plus what the format says about how to check them."""

    source: str
    format: str
    operations: list[Operation] = field(repr=False)
    default_model: str
    initial_value: Any = None  # Porcupine's kv store answers "" for a key never written


def load_history(path: str | Path) -> History:
    """Read and parse a history file; ValueError naming the file (and line) when it is bad."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read: {exc}") from None
    return parse_history(text, source=str(path))


def parse_history(text: str, source: str = "<history>") -> History:
    """Detect the format from the first non-blank line and parse the whole text."""
    lines = text.splitlines()
    first = next((line.strip() for line in lines if line.strip()), None)
    if first is None:
        raise ValueError(f"{source}: empty history (no operations)")
    if first.startswith("{:"):
        ops = _parse_porcupine_kv(lines, source)
        history = History(source, "porcupine-kv", ops, "kv", initial_value="")
    elif first.startswith("{"):
        history = History(source, "jsonl", _parse_jsonl(lines, source), "kv")
    elif _JEPSEN_LINE.match(first):
        history = History(source, "jepsen", _parse_jepsen(lines, source), "register")
    else:
        lineno = next(i for i, line in enumerate(lines, 1) if line.strip())
        raise ValueError(
            f"{source}:{lineno}: unrecognised history format (expected JSON lines, "
            f"a Jepsen etcd log or Porcupine kv maps): {first[:60]!r}"
        )
    if not history.operations:
        raise ValueError(f"{source}: empty history (no operations)")
    return history


# --- ours: JSON lines -------------------------------------------------------------------------

_JSONL_REQUIRED = ("process", "op", "call", "status")


def _parse_jsonl(lines: list[str], source: str) -> list[Operation]:
    ops: list[Operation] = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{source}:{lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not JSON: {exc.msg}") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: expected a JSON object")
        missing = [name for name in _JSONL_REQUIRED if name not in rec]
        if missing:
            raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")
        process, call, ret, status = rec["process"], rec["call"], rec.get("return"), rec["status"]
        if not isinstance(process, int) or isinstance(process, bool):
            raise ValueError(f"{where}: process must be an integer, not {process!r}")
        if not isinstance(rec["op"], str):
            raise ValueError(f"{where}: op must be a string, not {rec['op']!r}")
        if not _is_number(call) or (ret is not None and not _is_number(ret)):
            raise ValueError(f"{where}: call/return must be numbers (return may be null)")
        if ret is not None and ret < call:
            raise ValueError(f"{where}: returns ({ret}) before its call ({call})")
        if status not in STATUSES:
            raise ValueError(f"{where}: status must be one of {', '.join(STATUSES)}")
        key = rec.get("key")
        if key is not None and not isinstance(key, str):
            raise ValueError(f"{where}: key must be a string or null")
        ops.append(
            Operation(
                id=len(ops),
                process=process,
                op=rec["op"],
                key=key,
                input=rec.get("input"),
                output=rec.get("output"),
                call=float(call),
                ret=None if ret is None else float(ret),
                status=status,
            )
        )
    return ops


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# --- Jepsen-style pairing shared by the two Knossos formats ------------------------------------


@dataclass
class _Open:
    process: int
    op: str
    key: str | None
    input: Any
    call: float


class _Pairing:
    """Match each `:invoke` with the next completion of the same process, in line order."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.open: dict[int, _Open] = {}
        self.done: list[tuple[float, Operation]] = []

    def invoke(self, lineno: int, process: int, op: str, key: str | None, value: Any) -> None:
        if process in self.open:
            raise ValueError(
                f"{self.source}:{lineno}: process {process} invokes again before its "
                f"{self.open[process].op} (line {self.open[process].call:g}) completed"
            )
        self.open[process] = _Open(process, op, key, value, float(lineno))

    def complete(self, lineno: int, process: int, op: str, output: Any, status: str) -> None:
        started = self.open.pop(process, None)
        if started is None:
            raise ValueError(f"{self.source}:{lineno}: process {process} completes with no invoke")
        if started.op != op:
            raise ValueError(
                f"{self.source}:{lineno}: process {process} completes {op} but invoked {started.op}"
            )
        ret = None if status == "unknown" else float(lineno)
        self.done.append((started.call, self._op(started, output, ret, status)))

    def operations(self) -> list[Operation]:
        """Completed operations and the never-completed ones (pending), in call order."""
        for started in self.open.values():
            self.done.append((started.call, self._op(started, None, None, "unknown")))
        self.open = {}
        ordered = sorted(self.done, key=lambda pair: pair[0])
        return [_renumber(op, i) for i, (_, op) in enumerate(ordered)]

    @staticmethod
    def _op(started: _Open, output: Any, ret: float | None, status: str) -> Operation:
        return Operation(
            -1, started.process, started.op, started.key, started.input, output, started.call, ret,
            status,
        )  # fmt: skip


def _renumber(op: Operation, new_id: int) -> Operation:
    return Operation(
        new_id, op.process, op.op, op.key, op.input, op.output, op.call, op.ret, op.status
    )


# --- Jepsen etcd logs ---------------------------------------------------------------------------

_JEPSEN_LINE = re.compile(
    r"^(?:\S+\s+)?jepsen\.util\s+-\s+(?P<process>\d+)\s+:(?P<type>invoke|ok|fail|info)"
    r"\s+:(?P<f>[\w-]+)\s+(?P<value>.*?)\s*$"
)
_CAS_VALUE = re.compile(r"^\[\s*(-?\d+|nil)\s+(-?\d+|nil)\s*\]$")


def _jepsen_value(text: str, where: str) -> Any:
    """nil, an integer, `[a b]` (cas), or a keyword such as `:timed-out` (kept as a string)."""
    if text == "nil":
        return None
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    cas = _CAS_VALUE.match(text)
    if cas:
        expect, value = (None if v == "nil" else int(v) for v in cas.groups())
        return {"expect": expect, "value": value}
    if text.startswith(":"):
        return text
    raise ValueError(f"{where}: cannot read value {text!r}")


def _parse_jepsen(lines: list[str], source: str) -> list[Operation]:
    """Knossos etcd logs, mapped as Porcupine's etcd test maps them.

    `:fail :cas [a b]` is the etcd client saying the compare did not match: an observed
    outcome (the register did not hold `a`), so it becomes cas -> false with status ok, as
    in Porcupine. Any other `:fail` (a timed-out read) did not take effect: status fail.
    `:info` is a timeout with unknown outcome: pending to the end.
    """
    pairing = _Pairing(source)
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{source}:{lineno}"
        m = _JEPSEN_LINE.match(line.strip())
        if not m:
            raise ValueError(f"{where}: not a Jepsen log line: {line.strip()[:60]!r}")
        process, kind, f = int(m["process"]), m["type"], m["f"]
        value = _jepsen_value(m["value"], where)
        if kind == "invoke":
            if f == "cas" and not isinstance(value, dict):
                raise ValueError(f"{where}: cas needs [expect value], got {m['value']!r}")
            pairing.invoke(lineno, process, f, None, value)
        elif kind == "ok":
            output = True if f == "cas" else (value if f == "read" else None)
            pairing.complete(lineno, process, f, output, "ok")
        elif kind == "fail" and f == "cas" and isinstance(value, dict):
            pairing.complete(lineno, process, f, False, "ok")
        elif kind == "fail":
            pairing.complete(lineno, process, f, None, "fail")
        else:
            pairing.complete(lineno, process, f, None, "unknown")
    return pairing.operations()


# --- Porcupine kv files (EDN maps) --------------------------------------------------------------

_EDN_TOKEN = re.compile(
    r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<kw>:[^\s,{}\[\]"]+)|(?P<num>-?\d+(?:\.\d+)?)'
    r"|(?P<nil>nil\b)|(?P<bool>true\b|false\b)|(?P<open>\{)|(?P<close>\})|(?P<comma>,))"
)


def _parse_edn_map(line: str, where: str) -> dict[str, Any]:
    """A flat EDN map of keyword keys to strings, numbers, keywords, nil or booleans."""
    tokens: list[tuple[str, str]] = []
    pos, text = 0, line.strip()
    while pos < len(text):
        m = _EDN_TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"{where}: cannot read EDN at column {pos + 1}: {text[pos:][:30]!r}")
        kind = m.lastgroup or ""
        if kind != "comma":
            tokens.append((kind, m.group(kind)))
        pos = m.end()
    if len(tokens) < 2 or tokens[0][0] != "open" or tokens[-1][0] != "close":
        raise ValueError(f"{where}: expected one {{...}} map")
    body = tokens[1:-1]
    if len(body) % 2:
        raise ValueError(f"{where}: map has a key without a value")
    result: dict[str, Any] = {}
    for (kkind, ktext), (vkind, vtext) in zip(body[::2], body[1::2], strict=True):
        if kkind != "kw":
            raise ValueError(f"{where}: map keys must be keywords, got {ktext!r}")
        if vkind in ("open", "close"):
            raise ValueError(f"{where}: nested maps are not supported")
        result[ktext[1:]] = _edn_scalar(vkind, vtext)
    return result


def _edn_scalar(kind: str, text: str) -> Any:
    if kind == "str":
        return json.loads(text)  # EDN string escapes are JSON's for what these files hold
    if kind == "num":
        return float(text) if "." in text else int(text)
    if kind == "nil":
        return None
    if kind == "bool":
        return text == "true"
    return text  # keyword, e.g. ":get"


_KV_TYPES = {"invoke", "ok", "fail", "info"}


def _parse_porcupine_kv(lines: list[str], source: str) -> list[Operation]:
    """get/put/append maps; a get's `:value` on `:ok` is what it read."""
    pairing = _Pairing(source)
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{source}:{lineno}"
        rec = _parse_edn_map(line, where)
        missing = [k for k in ("process", "type", "f") if k not in rec]
        if missing:
            raise ValueError(f"{where}: missing :{', :'.join(missing)}")
        process, kind, f = rec["process"], str(rec["type"]).lstrip(":"), str(rec["f"]).lstrip(":")
        if not isinstance(process, int) or kind not in _KV_TYPES:
            raise ValueError(f"{where}: bad :process or :type")
        key = rec.get("key")
        key = None if key is None else str(key)
        value = rec.get("value")
        if kind == "invoke":
            pairing.invoke(lineno, process, f, key, None if f == "get" else value)
        elif kind == "ok":
            pairing.complete(lineno, process, f, value if f == "get" else None, "ok")
        elif kind == "fail":
            pairing.complete(lineno, process, f, None, "fail")
        else:
            pairing.complete(lineno, process, f, None, "unknown")
    return pairing.operations()
