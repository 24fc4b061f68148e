"""What a person reads: the verdict and counterexample as text, and one key's history drawn as
a timeline (inline SVG, no scripts, nothing fetched) for the experiment's HTML report.

The timeline follows Porcupine's visualisation in spirit: one row per process, a bar from
call to return labelled `op(input) -> output`; the operation that could not be placed and
the candidates the model rejected are red, the longest linearizable prefix found is blue,
pending operations run dashed to the right edge.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from probes.linearizability.checker import Verdict
from probes.linearizability.history import Operation
from probes.linearizability.search import Counterexample

__all__ = ["counterexample_text", "history_html", "history_page", "key_name", "verdict_text"]

PREFIX_LINES = 8  # the last operations of the prefix shown in text; earlier ones are counted


def verdict_text(verdict: Verdict) -> str:
    """A few lines: the verdict, the figures behind it, and the counterexample if any."""
    keys = len(verdict.keys)
    how = "in parallel" if verdict.parallel else "in one process"
    head = {
        "ok": "linearizable",
        "illegal": "NOT linearizable",
        "unknown": "unknown (no verdict)",
    }[verdict.result]
    lines = [
        f"{head}: {verdict.operations} operations over {keys} key(s), model {verdict.model}, "
        f"checked {how} in {verdict.elapsed_s:.3f} s"
        + (f"; {verdict.dropped} failed or pending read(s) dropped" if verdict.dropped else "")
    ]
    if verdict.result == "unknown":
        lines.append(f"reason: {verdict.reason}")
    if verdict.counterexample is not None:
        lines.append(counterexample_text(verdict.counterexample))
    return "\n".join(lines)


def counterexample_text(cx: Counterexample) -> str:
    """Name the stuck operation, the prefix that led there, and why each candidate failed."""
    lines = [f"{key_name(cx.key)} is not linearizable."]
    shown = cx.prefix[-PREFIX_LINES:]
    lines.append(
        f"Longest linearizable prefix found: {len(cx.prefix)} operation(s), "
        f"leaving the state {_state(cx.state)}" + (":" if shown else ".")
    )
    if len(cx.prefix) > len(shown):
        lines.append(f"  ... {len(cx.prefix) - len(shown)} earlier operation(s)")
    first = len(cx.prefix) - len(shown) + 1
    lines.extend(f"  {n:>4}. {op.describe()}" for n, op in enumerate(shown, first))
    lines.append(
        f"Then {cx.returned.describe()} had returned, but no operation could be linearized next:"
    )
    for candidate in cx.candidates:
        why = (
            f"inconsistent with state {_state(cx.state)}"
            if candidate.reason == "inconsistent"
            else "fits, but nothing can follow it"
        )
        lines.append(f"        {candidate.operation.describe()}: {why}")
    return "\n".join(lines)


def key_name(key: Any) -> str:
    """`key 'k7'`, or `the register` for the single register of a Jepsen history."""
    return "the register" if key is None else f"key {key!r}"


def _state(state: Any) -> str:
    if state is None:
        return "nil"
    text = repr(state)
    return text if len(text) <= 60 else f"{text[:28]}...{text[-28:]} ({len(state)} chars)"


# --- the timeline ------------------------------------------------------------------------------

_GUTTER = 96
_WIDTH = 880
_ROW = 22
_BAR = 14
_CHAR_PX = 6.2  # average width of an 11 px sans-serif character, to decide if a label fits

_STYLE = """
.lz-timeline{font:12px system-ui,sans-serif;margin:0.5em 0}
.lz-timeline figcaption{margin:0 0 4px}
.lz-timeline svg{max-width:100%;height:auto;background:#fff}
.lz-timeline text{font-size:11px;fill:#222}
.lz-timeline .lz-label{fill:#fff}
.lz-timeline .ok rect{fill:#9aa5b1}
.lz-timeline .prefix rect{fill:#4c78a8}
.lz-timeline .illegal rect{fill:#d62728;stroke:#7f0000}
.lz-timeline .deadend rect{fill:#f58518}
.lz-timeline .pending rect{fill-opacity:.35;stroke:#555;stroke-dasharray:4 2}
.lz-timeline .pending .lz-label,.lz-timeline .failed .lz-label{fill:#222}
.lz-timeline .failed rect{fill:#fff;stroke:#999;stroke-dasharray:2 2}
.lz-timeline .lz-legend span{display:inline-block;margin-right:1em}
.lz-timeline .lz-legend i{display:inline-block;width:1em;height:.8em;margin-right:.3em;
 vertical-align:middle}
"""


def history_html(
    operations: Sequence[Operation], verdict: Verdict | None, key: Any, max_ops: int = 120
) -> str:
    """A self-contained <figure> with one key's operations per process as an inline SVG.

    With a counterexample the view zooms on it: the last operations of the prefix, the stuck
    one and the candidates, and whatever overlaps them in time. At most `max_ops` bars.
    """
    ops = sorted((op for op in operations if op.key == key), key=lambda op: (op.call, op.id))
    total = len(ops)
    cx = _counterexample_for(verdict, key)
    ops, (t0, t1) = _window(ops, cx, max_ops)
    classes = _classes(ops, cx)
    caption = _caption(verdict, key, len(ops), total)
    if not ops:
        return f'<figure class="lz-timeline"><figcaption>{caption}</figcaption></figure>'
    svg = _svg(ops, classes, t0, t1)
    return (
        f'<figure class="lz-timeline"><style>{_STYLE}</style>'
        f"<figcaption>{caption}</figcaption>{svg}{_legend(set(classes.values()))}</figure>"
    )


def history_page(operations: Sequence[Operation], verdict: Verdict, key: Any) -> str:
    """A whole HTML document around `history_html` and the verdict text."""
    text = html.escape(verdict_text(verdict))
    return (
        '<!doctype html><html><head><meta charset="utf-8">'
        f"<title>history of {html.escape(key_name(key))}</title></head><body>"
        f"<pre>{text}</pre>{history_html(operations, verdict, key)}</body></html>\n"
    )


def _counterexample_for(verdict: Verdict | None, key: Any) -> Counterexample | None:
    if verdict is None:
        return None
    return next((k.counterexample for k in verdict.keys if k.key == key and k.counterexample), None)


def _window(
    ops: list[Operation], cx: Counterexample | None, max_ops: int
) -> tuple[list[Operation], tuple[float, float]]:
    """The operations to draw and the time span of the view."""
    if cx is not None:
        anchor = [*cx.prefix[-PREFIX_LINES:], cx.returned, *(c.operation for c in cx.candidates)]
        lo = min(op.call for op in anchor)
        hi = max([cx.returned.end, *(op.end for op in anchor if not op.pending)])
        ops = [op for op in ops if op.call <= hi and op.end >= lo]
        if len(ops) > max_ops:  # keep the ones nearest the stuck operation
            ops = sorted(ops, key=lambda op: abs(op.call - cx.returned.call))[:max_ops]
            ops.sort(key=lambda op: (op.call, op.id))
    else:
        ops = ops[:max_ops]
    if not ops:
        return ops, (0.0, 1.0)
    t0 = min(op.call for op in ops)
    t1 = max([*(op.end for op in ops if not op.pending), *(op.call for op in ops)])
    if cx is not None:
        t0, t1 = max(t0, lo), min(t1, hi)
        t1 += (t1 - t0) * 0.05  # room to see what returned last
    return ops, (t0, t1 if t1 > t0 else t0 + 1.0)


def _classes(ops: list[Operation], cx: Counterexample | None) -> dict[int, str]:
    prefix = {op.id for op in cx.prefix} if cx else set()
    illegal = cx.illegal_ids() if cx else set()
    dead = {c.operation.id for c in cx.candidates if c.reason == "dead end"} if cx else set()
    classes = {}
    for op in ops:
        if op.status == "fail":
            kind = "failed"
        elif op.id in illegal:
            kind = "illegal"
        elif op.id in dead:
            kind = "deadend"
        elif op.id in prefix:
            kind = "prefix"
        else:
            kind = "ok"
        classes[op.id] = kind + (" pending" if op.pending and op.status != "fail" else "")
    return classes


def _caption(verdict: Verdict | None, key: Any, shown: int, total: int) -> str:
    result = "not checked"
    if verdict is not None:
        result = next((k.result for k in verdict.keys if k.key == key), verdict.result)
    part = f"{shown} of {total} operations" if shown < total else f"{total} operations"
    return html.escape(f"{key_name(key)}: {result}, {part}")


def _lanes(ops: list[Operation]) -> tuple[dict[int, int], list[tuple[int, int]]]:
    """Row index per operation: a row per process, split in lanes where its bars overlap
    (a process that carries on after a timed-out call)."""
    by_process: dict[int, list[list[float]]] = {}
    lane_of: dict[tuple[int, int], int] = {}
    placed: dict[int, tuple[int, int]] = {}
    for op in ops:
        lanes = by_process.setdefault(op.process, [])
        lane = next((i for i, end in enumerate(lanes) if end[0] < op.call), None)
        if lane is None:
            lanes.append([op.end])
            lane = len(lanes) - 1
        else:
            lanes[lane][0] = op.end
        placed[op.id] = (op.process, lane)
    rows: list[tuple[int, int]] = []
    for process in sorted(by_process):
        for lane in range(len(by_process[process])):
            lane_of[(process, lane)] = len(rows)
            rows.append((process, lane))
    return {op_id: lane_of[where] for op_id, where in placed.items()}, rows


def _svg(ops: list[Operation], classes: dict[int, str], t0: float, t1: float) -> str:
    row_of, rows = _lanes(ops)
    span = t1 - t0
    right = _GUTTER + _WIDTH

    def x(t: float) -> float:
        return _GUTTER + (min(max(t, t0), t1) - t0) / span * (_WIDTH - 20)

    height = 24 + _ROW * len(rows)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{right + 10}" height="{height}" '
        f'viewBox="0 0 {right + 10} {height}" role="img">'
    ]
    for i in range(5):
        t = t0 + span * i / 4
        tx = x(t)
        parts.append(
            f'<line x1="{tx:.1f}" y1="14" x2="{tx:.1f}" y2="{height}" stroke="#eee"/>'
            f'<text x="{tx:.1f}" y="10" text-anchor="middle">{t:.6g}</text>'
        )
    for index, (process, lane) in enumerate(rows):
        if lane == 0:
            parts.append(f'<text x="4" y="{_row_y(index) + 11}">process {process}</text>')
    for op in ops:
        parts.append(_bar(op, classes[op.id], x, _row_y(row_of[op.id]), right - 10))
    parts.append("</svg>")
    return "".join(parts)


def _row_y(index: int) -> float:
    return 18 + index * _ROW


def _bar(op: Operation, css: str, x: Any, y: float, right_edge: float) -> str:
    start = x(op.call)
    end = right_edge if op.pending or op.ret is None else x(op.ret)
    width = max(end - start, 6.0 if "illegal" in css else 3.0)
    label = op.label()
    title = html.escape(op.describe())
    text = ""
    if len(label) * _CHAR_PX + 6 <= width:
        text = (
            f'<text class="lz-label" x="{start + 3:.1f}" y="{y + 11:.1f}">'
            f"{html.escape(label)}</text>"
        )
    return (
        f'<g class="{css}"><title>{title}</title>'
        f'<rect x="{start:.1f}" y="{y:.1f}" width="{width:.1f}" height="{_BAR}" rx="2"/>'
        f"{text}</g>"
    )


_LEGEND = [
    ("prefix", "#4c78a8", "in the longest linearizable prefix"),
    ("illegal", "#d62728", "could not be linearized"),
    ("deadend", "#f58518", "fits, but nothing can follow it"),
    ("ok", "#9aa5b1", "operation"),
    ("pending", "#ccc", "pending: outcome unknown (dashed)"),
    ("failed", "#fff", "failed: took no effect (dotted)"),
]


def _legend(present: set[str]) -> str:
    used = {word for css in present for word in css.split()}
    spans = "".join(
        f'<span><i style="background:{colour};border:1px solid #999"></i>{html.escape(text)}</span>'
        for css, colour, text in _LEGEND
        if css in used
    )
    return f'<div class="lz-legend">{spans}</div>'
