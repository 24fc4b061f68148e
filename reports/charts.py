"""Timeline charts for the run report, drawn with matplotlib as inline SVG strings.

The report must be one self-contained file that a person reads in a minute, so charts are
vector SVG inlined into the page: text stays text (``svg.fonttype: none``), nothing points
outside the page, and element ids are salted per chart so several charts can share one page.
Everything here is derived from plain data (the raw load records, Prometheus series, the Raft
observer's leader timeline, the migration probe's moved tasks); the charts know nothing of how
that data was produced. Figures are built as `matplotlib.figure.Figure` objects, never through
pyplot, so no GUI backend is touched and nothing global changes for the caller; SVG is written
by matplotlib's own SVG canvas (the Agg rasteriser is never needed).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from reports.formatting import is_number

BIN_SECONDS = 1.0
MAX_WORKER_LAYERS = 10

# Okabe-Ito: readable for colour-blind readers and in greyscale print.
COLOURS = {
    "completed": "#0072B2",
    "errors": "#D55E00",
    "p50": "#009E73",
    "p95": "#E69F00",
    "p99": "#CC79A7",
    "fault": "#D55E00",
}
# Leader terms: no orange-red, which means "fault" and "no leader" on these charts.
_TERM_PALETTE = ("#0072B2", "#009E73", "#CC79A7", "#56B4E9", "#332288", "#999999", "#E69F00")
WORKER_PALETTE = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#CC79A7",
    "#56B4E9",
    "#F0E442",
    "#D55E00",
    "#999999",
    "#332288",
    "#88CCEE",
    "#AA4499",
)

_SVG_RC = {
    "svg.fonttype": "none",
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"],
    "font.size": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.fontsize": 8,
    "legend.frameon": False,
}
# Beside the plot, so a legend never hides the moment of interest.
_LEGEND_OUTSIDE = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "borderaxespad": 0.0}
# matplotlib writes these by default; each names an outside URL.
_NO_METADATA = {"Format": None, "Type": None, "Creator": None, "Date": None}


@dataclass(frozen=True)
class FaultSpan:
    """A fault window to shade, in seconds since load start (end None = still active)."""

    label: str
    start: float
    end: float | None


@dataclass(frozen=True)
class LeaderStint:
    """One (leader, term) as the replicas told it, from start to end in seconds since t = 0;
    leader None while there was none (an election)."""

    start: float
    end: float
    leader: str | None
    term: int | None


@dataclass(frozen=True)
class LeaderClaim:
    """One replica claiming leadership of a term another replica also led (split brain)."""

    at: float
    leader: str
    term: int | None


@dataclass(frozen=True)
class MigrationBar:
    """One moved task on the migration chart, in seconds since the chart's t = 0 (None: that
    step never happened); bound_at is when it should have been serving at the latest."""

    label: str
    detected: float
    serving: float | None
    routed: float | None
    bound_at: float | None = None


@dataclass
class RecordColumns:
    """The load records as numpy columns, so binning 10k records takes milliseconds."""

    sent: np.ndarray
    first_token: np.ndarray  # NaN when no token arrived
    done: np.ndarray  # completion time; sent time when the record lacks one
    ok: np.ndarray
    output_tokens: np.ndarray  # NaN when unknown
    served_by: list[str]

    @classmethod
    def from_records(cls, records: Sequence[Mapping[str, Any]]) -> RecordColumns:
        """Build columns, skipping records that have no send time (they cannot be placed)."""
        usable = [r for r in records if is_number(r.get("sent_at"))]
        sent = np.array([float(r["sent_at"]) for r in usable], dtype=float)
        first = np.array([_float_or_nan(r.get("first_token_at")) for r in usable], dtype=float)
        done = np.array([_float_or_nan(r.get("done_at")) for r in usable], dtype=float)
        done = np.where(np.isnan(done), sent, done)
        ok = np.array([bool(r.get("ok")) for r in usable], dtype=bool)
        tokens = np.array([_float_or_nan(r.get("output_tokens")) for r in usable], dtype=float)
        served = [str(r.get("served_by") or "unrouted") for r in usable]
        return cls(sent, first, done, ok, tokens, served)

    def __len__(self) -> int:
        return int(self.sent.size)

    @property
    def ttft(self) -> np.ndarray:
        """Time to first token per request (NaN when none arrived)."""
        return self.first_token - self.sent

    @property
    def e2e(self) -> np.ndarray:
        """End-to-end latency per request."""
        return self.done - self.sent


@dataclass
class Timeline:
    """Per-second bins since load start: what a reader scans for the moment things broke."""

    origin: float
    seconds: np.ndarray  # bin start, seconds since origin
    sent: np.ndarray  # requests sent in the bin (the offered load)
    completed: np.ndarray  # requests finished in the bin
    errors: np.ndarray  # failed requests finished in the bin
    ttft_p50: np.ndarray  # of requests *sent* in the bin (NaN if none)
    ttft_p95: np.ndarray
    ttft_p99: np.ndarray
    served_by: dict[str, np.ndarray] = field(default_factory=dict)  # completions per worker

    def __len__(self) -> int:
        return int(self.seconds.size)


def bin_timeline(columns: RecordColumns, origin: float | None = None) -> Timeline:
    """Bin records per second: counts by completion time, TTFT by send time.

    TTFT is binned by send time so that a request which waited through an outage shows up
    in the second the user pressed enter, under the shaded fault, not when it finally answered.
    """
    if len(columns) == 0:
        empty = np.zeros(0)
        return Timeline(origin or 0.0, empty, empty, empty, empty, empty, empty, empty, {})
    origin = float(columns.sent.min()) if origin is None else origin
    done_bin = _bin_index(columns.done, origin)
    sent_bin = _bin_index(columns.sent, origin)
    n_bins = int(max(done_bin.max(), sent_bin.max())) + 1
    sent = np.bincount(sent_bin, minlength=n_bins).astype(float)
    completed = np.bincount(done_bin, minlength=n_bins).astype(float)
    errors = np.bincount(done_bin[~columns.ok], minlength=n_bins).astype(float)
    p50, p95, p99 = _binned_percentiles(sent_bin, columns.ttft, n_bins, (50, 95, 99))
    served: dict[str, np.ndarray] = {}
    names = np.array(columns.served_by, dtype=object)
    for name in sorted(set(columns.served_by)):
        served[name] = np.bincount(done_bin[names == name], minlength=n_bins).astype(float)
    seconds = np.arange(n_bins, dtype=float) * BIN_SECONDS
    return Timeline(origin, seconds, sent, completed, errors, p50, p95, p99, served)


def timeline_chart(timeline: Timeline, spans: Sequence[FaultSpan] = ()) -> str:
    """Two aligned panels: throughput and errors, then TTFT percentiles, faults shaded."""
    with matplotlib.rc_context({**_SVG_RC, "svg.hashsalt": "timeline"}):
        fig = Figure(figsize=(9.0, 5.2), layout="constrained")
        ax_rate, ax_ttft = fig.subplots(2, 1, sharex=True)
        centres = timeline.seconds + BIN_SECONDS / 2
        ax_rate.plot(
            centres, timeline.completed, color=COLOURS["completed"], lw=1.2, label="completed/s"
        )
        ax_rate.plot(centres, timeline.errors, color=COLOURS["errors"], lw=1.2, label="errors/s")
        ax_rate.set_ylabel("requests / s")
        ax_rate.set_title("Completed requests and errors per second", loc="left")
        _shade_faults(ax_rate, spans, "timeline-rate", True, _data_end(timeline))
        ax_rate.set_ylim(0, max(1.0, float(np.nanmax(timeline.completed, initial=0))) * 1.2)
        ax_rate.legend(**_LEGEND_OUTSIDE)

        for key, name in (("p50", "TTFT p50"), ("p95", "TTFT p95"), ("p99", "TTFT p99")):
            values = getattr(timeline, f"ttft_{key}") * 1000.0
            ax_ttft.plot(centres, values, color=COLOURS[key], lw=1.1, label=name)
        if _wide_range(timeline.ttft_p50, timeline.ttft_p99):
            ax_ttft.set_yscale("log")
        ax_ttft.set_ylabel("TTFT (ms)")
        ax_ttft.set_xlabel("seconds since load start")
        ax_ttft.set_title("Time to first token, by second the request was sent", loc="left")
        _shade_faults(ax_ttft, spans, "timeline-ttft", False, _data_end(timeline))
        ax_ttft.legend(**_LEGEND_OUTSIDE)
        _set_xlim(ax_ttft, timeline, spans)
        return _to_svg(fig, "Requests, errors and time to first token per second")


def served_by_chart(
    timeline: Timeline, spans: Sequence[FaultSpan] = (), victims: Sequence[str] = ()
) -> str:
    """Completions per worker per second, stacked, so traffic moving off a victim is visible."""
    layers = _worker_layers(timeline.served_by)
    victim_set = set(victims)
    with matplotlib.rc_context({**_SVG_RC, "svg.hashsalt": "served-by"}):
        fig = Figure(figsize=(9.0, 3.0), layout="constrained")
        ax = fig.subplots()
        if layers:
            names = list(layers)
            labels = [_plain(f"{n} (victim)" if n in victim_set else n) for n in names]
            colours = [WORKER_PALETTE[i % len(WORKER_PALETTE)] for i in range(len(names))]
            ax.stackplot(
                timeline.seconds + BIN_SECONDS / 2,
                *layers.values(),
                labels=labels,
                colors=colours,
                alpha=0.85,
                step="mid",
            )
        _shade_faults(ax, spans, "served-by", False, _data_end(timeline))
        ax.set_ylabel("completed / s")
        ax.set_xlabel("seconds since load start")
        ax.set_title("Requests completed per worker per second (stacked)", loc="left")
        ax.legend(**_LEGEND_OUTSIDE)
        _set_xlim(ax, timeline, spans)
        return _to_svg(fig, "Requests completed per worker per second")


def series_chart(
    series: Mapping[str, Sequence[Sequence[Any]]],
    origin: float,
    spans: Sequence[FaultSpan] = (),
    max_panels: int = 6,
) -> str:
    """One small panel per Prometheus series, on the same time axis as the load charts."""
    named = [(name, _series_points(points, origin)) for name, points in series.items()]
    named = [(name, pts) for name, pts in named if pts[0].size][:max_panels]
    if not named:
        return ""
    data_end = max(float(xs.max()) for _, (xs, _ys) in named)
    with matplotlib.rc_context({**_SVG_RC, "svg.hashsalt": "prometheus"}):
        fig = Figure(figsize=(9.0, 1.7 * len(named) + 0.4), layout="constrained")
        axes = np.atleast_1d(fig.subplots(len(named), 1, sharex=True, squeeze=False)[:, 0])
        for index, (ax, (name, (xs, ys))) in enumerate(zip(axes, named, strict=True)):
            ax.plot(xs, ys, color=WORKER_PALETTE[index % len(WORKER_PALETTE)], lw=1.1)
            ax.set_title(_plain(name), loc="left", fontsize=8)
            _shade_faults(ax, spans, f"prometheus-{index}", index == 0, data_end)
        axes[-1].set_xlabel("seconds since load start")
        return _to_svg(fig, "Prometheus series")


def leader_chart(
    stints: Sequence[LeaderStint],
    replicas: Sequence[str],
    spans: Sequence[FaultSpan] = (),
    *,
    victims: Iterable[str] = (),
    fault_mark: float | None = None,
    failover_s: float | None = None,
    claims: Sequence[LeaderClaim] = (),
    xlabel: str = "seconds",
    chart_id: str = "leader",
) -> str:
    """Which replica led when: one row per replica and one for "no leader", a step line
    through them, each change labelled with its term, faults shaded.

    An election lasts milliseconds on an axis of seconds, so every change also gets a marker
    and every leaderless stretch a label with its length: a gap that cannot be seen as a
    width is still seen as a point and read as a number.
    """
    if not stints:
        return ""
    rows = {name: index + 1 for index, name in enumerate(replicas)}
    for stint in stints:
        if stint.leader is not None and stint.leader not in rows:
            rows[stint.leader] = len(rows) + 1
    victim_set = set(victims)
    terms = sorted({s.term for s in stints if s.term is not None})
    term_colour = {t: _TERM_PALETTE[i % len(_TERM_PALETTE)] for i, t in enumerate(terms)}
    with matplotlib.rc_context({**_SVG_RC, "svg.hashsalt": chart_id}):
        fig = Figure(figsize=(9.0, 1.5 + 0.42 * (len(rows) + 1)), layout="constrained")
        ax = fig.subplots()
        ax.grid(axis="y", visible=False)
        ys = [rows[s.leader] if s.leader is not None else 0 for s in stints]
        xs = [s.start for s in stints] + [stints[-1].end]
        ax.plot(xs, [*ys, ys[-1]], drawstyle="steps-post", color="#555555", lw=0.8, zorder=2)
        labelled = {"leader": False, "none": False}
        for index, (stint, y) in enumerate(zip(stints, ys, strict=True)):
            leaderless = stint.leader is None
            colour = COLOURS["errors"] if leaderless else term_colour.get(stint.term, "#555555")
            kind = "none" if leaderless else "leader"
            label = "_nolegend_"
            if not labelled[kind]:
                label = "no leader (election)" if leaderless else "leader (colour = term)"
                labelled[kind] = True
            ax.hlines(y, stint.start, stint.end, colors=colour, lw=7, label=label, zorder=3)
            ax.plot(
                stint.start,
                y,
                marker="X" if leaderless else "o",
                ms=8 if leaderless else 6,
                color=colour,
                mec="white",
                mew=0.8,
                zorder=4,
            )
            term = "" if stint.term is None else f"term {stint.term}"
            gap = _seconds(stint.end - stint.start)
            electing = f" (electing {term})" if term else ""
            text = f"no leader for {gap}{electing}" if leaderless else term
            ax.annotate(
                _plain(text.strip()),
                xy=(stint.start, y),
                xytext=(3, 7),
                textcoords="offset points",
                fontsize=8,
                color=colour,
                ha="left",
                va="bottom",
                zorder=5,
            ).set_gid(f"{chart_id}-change-{index}")
        if claims:
            ax.plot(
                [c.at for c in claims],
                [rows.get(c.leader, 0) for c in claims],
                ls="none",
                marker="D",
                ms=8,
                mfc="none",
                mec=COLOURS["fault"],
                mew=1.6,
                zorder=6,
                label="split-brain claim",
            )
        end = max(s.end for s in stints)
        _shade_faults(ax, spans, chart_id, True, end)
        if fault_mark is not None:
            ax.axvline(
                fault_mark, color="#333333", ls="--", lw=0.9, label="fault mark (t0)", zorder=1
            )
            if failover_s is not None:
                top = len(rows) + 0.45
                ax.annotate(
                    "",
                    xy=(fault_mark + failover_s, top),
                    xytext=(fault_mark, top),
                    arrowprops={
                        "arrowstyle": "|-|",
                        "color": "#333333",
                        "lw": 1.0,
                        "shrinkA": 0,
                        "shrinkB": 0,
                        "mutation_scale": 3,
                    },
                )
                ax.annotate(
                    f"new leader after {_seconds(failover_s)}",
                    xy=(fault_mark + failover_s, top),
                    xytext=(5, 0),
                    textcoords="offset points",
                    fontsize=8,
                    va="center",
                    ha="left",
                    color="#333333",
                ).set_gid(f"{chart_id}-failover")
        names = ["no leader", *(_plain(f"replica {n}") for n in rows)]
        names = [
            f"{name} (victim)" if r in victim_set else name
            for name, r in zip(names, ["", *rows], strict=True)
        ]
        ax.set_yticks(range(len(rows) + 1), names)
        ax.set_ylim(-0.6, len(rows) + 1.0)
        starts = [s.start for s in stints] + [s.start for s in spans]
        ends = [end] + [s.end for s in spans if s.end is not None]
        if fault_mark is not None:
            starts.append(fault_mark)
        left, right = min(starts), max(ends)
        pad = max(0.03 * (right - left), 0.1)
        ax.set_xlim(left - pad, right + pad)
        ax.set_xlabel(_plain(xlabel))
        ax.set_title("Which replica led the metadata store", loc="left")
        ax.legend(**_LEGEND_OUTSIDE)
        return _to_svg(fig, "Raft leader over time")


def migration_chart(
    bars: Sequence[MigrationBar],
    spans: Sequence[FaultSpan] = (),
    *,
    xlabel: str = "seconds since the fault was injected",
    chart_id: str = "migration",
) -> str:
    """One row per moved task: detection to serving, then serving to routed, faults shaded.

    Each bar ends with its length as text, because a migration takes tenths of a second and a
    reader wants the number, not the pixel width.
    """
    if not bars:
        return ""
    # The axis spans the migrations, not the whole fault: a fault held for minutes would
    # squeeze a sub-second move into a pixel. A fault that outlasts the axis says so in the
    # axis label.
    ends = [b.detected for b in bars]
    ends += [t for b in bars for t in (b.serving, b.routed, b.bound_at) if t is not None]
    ends += [s.start for s in spans]
    right = max(ends)
    left = min([b.detected for b in bars] + [s.start for s in spans])
    pad = max(0.04 * (right - left), 0.05)
    axis_end = right + pad
    with matplotlib.rc_context({**_SVG_RC, "svg.hashsalt": chart_id}):
        fig = Figure(figsize=(9.0, 1.3 + 0.38 * len(bars)), layout="constrained")
        ax = fig.subplots()
        ax.grid(axis="y", visible=False)
        labelled: set[str] = set()

        def label(name: str) -> str:
            if name in labelled:
                return "_nolegend_"
            labelled.add(name)
            return name

        def segment(row: int, start: float, stop: float, kind: str, **style: Any) -> None:
            y = len(bars) - 1 - row  # the first task on top
            drawn = ax.barh(y, max(stop - start, 0.0), left=start, height=0.5, zorder=3, **style)
            drawn.patches[0].set_gid(f"{chart_id}-{kind}-{row}")

        for row, bar in enumerate(bars):
            y = len(bars) - 1 - row
            loaded = bar.serving if bar.serving is not None else bar.detected
            if bar.serving is not None:
                segment(
                    row,
                    bar.detected,
                    bar.serving,
                    "serving",
                    color=COLOURS["completed"],
                    label=label("detection → serving (model loaded)"),
                )
            if bar.routed is not None:
                segment(
                    row,
                    loaded,
                    bar.routed,
                    "routed",
                    color=COLOURS["p50"],
                    label=label("serving → routed (in the routing table)"),
                )
            else:
                segment(
                    row,
                    loaded,
                    axis_end,
                    "unrouted",
                    color="#BBBBBB",
                    edgecolor=COLOURS["errors"],
                    linestyle="--",
                    label=label("not routed by the end of the check"),
                )
            ax.plot(
                bar.detected,
                y,
                marker="o",
                ms=5,
                color="#333333",
                ls="none",
                label=label("failure detected"),
                zorder=4,
            )
            if bar.bound_at is not None:
                ax.plot(
                    bar.bound_at,
                    y,
                    marker="|",
                    ms=14,
                    mew=1.6,
                    color="#555555",
                    ls="none",
                    label=label("bound (routed by then at the latest)"),
                    zorder=4,
                )
            if bar.routed is not None:
                done = max(bar.routed, loaded)
                text, at, colour = _seconds(done - bar.detected), done, "#333333"
            elif bar.serving is not None:
                text = f"serving after {_seconds(bar.serving - bar.detected)}, never routed"
                at, colour = bar.serving, COLOURS["errors"]
            else:
                text, at, colour = "never served", bar.detected, COLOURS["errors"]
            ax.annotate(
                _plain(text),
                xy=(at, y),
                xytext=(4, 0),
                textcoords="offset points",
                fontsize=8,
                va="center",
                ha="left",
                color=colour,
                zorder=5,
            ).set_gid(f"{chart_id}-took-{row}")
        axis_right = axis_end + 3 * pad  # room for the last bar's text
        _shade_faults(ax, spans, chart_id, True, axis_right)
        beyond = [
            "fault still active" if s.end is None else f"fault removed at {s.end:+.1f} s"
            for s in spans
            if s.end is None or s.end > axis_right
        ]
        if beyond:  # said under the axis: inside it the text would collide with the fault label
            xlabel += f" ({'; '.join(beyond)}, beyond the right edge)"
        ax.set_yticks(range(len(bars)), [_plain(b.label) for b in reversed(bars)])
        ax.set_ylim(-0.6, len(bars) - 0.4 + 0.45)
        ax.set_xlim(left - pad, axis_right)
        ax.set_xlabel(_plain(xlabel))
        ax.set_title("Moved tasks: from detection to serving and routed again", loc="left")
        handles, names = ax.get_legend_handles_labels()
        order = sorted(range(len(names)), key=lambda i: (_MIGRATION_LEGEND.get(names[i], 9), i))
        ax.legend([handles[i] for i in order], [names[i] for i in order], **_LEGEND_OUTSIDE)
        return _to_svg(fig, "Task migration timeline")


# The migration chart's legend in reading order: the bars, then the marks, then the fault.
_MIGRATION_LEGEND = {
    "detection → serving (model loaded)": 0,
    "serving → routed (in the routing table)": 1,
    "not routed by the end of the check": 2,
    "failure detected": 3,
    "bound (routed by then at the latest)": 4,
}


def _seconds(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _shade_faults(
    ax: Any, spans: Sequence[FaultSpan], chart_id: str, labelled: bool, data_end: float
) -> None:
    """Shade each fault window; ids let a reader (or a test) find the window in the SVG.

    A fault never removed is shaded to the end of the data.
    """
    label_transform = blended_transform_factory(ax.transData, ax.transAxes)
    for index, span in enumerate(spans):
        end = span.end if span.end is not None else max(data_end, span.start + BIN_SECONDS)
        legend_label = _plain(f"fault: {span.label}") if labelled else "_nolegend_"
        patch = ax.axvspan(
            span.start, end, color=COLOURS["fault"], alpha=0.13, lw=0, label=legend_label
        )
        patch.set_gid(f"fault-window-{chart_id}-{index}")
        if labelled:
            text = ax.annotate(
                _plain(span.label),
                xy=(span.start, 0.98 - 0.09 * (index % 3)),  # staggered so labels do not collide
                xycoords=label_transform,
                xytext=(3, 0),
                textcoords="offset points",
                fontsize=8,
                color=COLOURS["fault"],
                va="top",
                ha="left",
            )
            text.set_gid(f"fault-label-{chart_id}-{index}")


def _data_end(timeline: Timeline) -> float:
    return float(len(timeline)) * BIN_SECONDS


def _set_xlim(ax: Any, timeline: Timeline, spans: Sequence[FaultSpan]) -> None:
    ends = [s.end for s in spans if s.end is not None] + [s.start for s in spans]
    right = max([_data_end(timeline), *ends, 1.0])
    left = min([0.0, *(s.start for s in spans)])
    ax.set_xlim(left, right)


def _worker_layers(served_by: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Keep the busiest workers as layers and fold the rest into 'others' to stay legible."""
    ranked = sorted(served_by.items(), key=lambda item: (-float(item[1].sum()), item[0]))
    kept = dict(sorted(ranked[:MAX_WORKER_LAYERS]))
    rest = ranked[MAX_WORKER_LAYERS:]
    if rest:
        kept["others"] = np.sum([values for _, values in rest], axis=0)
    return kept


def _series_points(points: Sequence[Sequence[Any]], origin: float) -> tuple[np.ndarray, ...]:
    """Prometheus returns values as strings; tolerate that and drop what is not a number."""
    xs, ys = [], []
    for point in points:
        try:
            t, value = float(point[0]), float(point[1])
        except (TypeError, ValueError, IndexError):
            continue
        xs.append(t - origin)
        ys.append(value)
    return np.array(xs, dtype=float), np.array(ys, dtype=float)


def _binned_percentiles(
    bins: np.ndarray, values: np.ndarray, n_bins: int, quantiles: Sequence[float]
) -> list[np.ndarray]:
    """Percentiles of values per bin, NaN where a bin has no value, in one sort."""
    out = [np.full(n_bins, np.nan) for _ in quantiles]
    keep = ~np.isnan(values)
    bins, values = bins[keep], values[keep]
    if not values.size:
        return out
    order = np.argsort(bins, kind="stable")
    bins, values = bins[order], values[order]
    present, starts = np.unique(bins, return_index=True)
    for bin_index, chunk in zip(present, np.split(values, starts[1:]), strict=True):
        for out_row, q in zip(out, np.percentile(chunk, quantiles), strict=True):
            out_row[bin_index] = q
    return out


def _bin_index(times: np.ndarray, origin: float) -> np.ndarray:
    return np.maximum(np.floor((times - origin) / BIN_SECONDS), 0).astype(np.int64)


def _wide_range(low: np.ndarray, high: np.ndarray) -> bool:
    """Log scale when a spike would flatten the baseline into the axis."""
    lows, highs = low[~np.isnan(low)], high[~np.isnan(high)]
    if not lows.size or not highs.size or lows.min() <= 0:
        return False
    return bool(highs.max() / lows.min() > 30.0)


def _to_svg(fig: Figure, title: str) -> str:
    """Serialise to SVG fit for inlining: no prolog, no namespaces, no URLs, scalable."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata=_NO_METADATA)
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]
    root_end = svg.index(">")
    root = svg[:root_end]
    root = re.sub(r'\s(?:xmlns(?::\w+)?|width|height|id)="[^"]*"', "", root)
    root += f' role="img" aria-label="{_attr(title)}" class="chart"'
    return root + svg[root_end:]


def _plain(text: str) -> str:
    """Stop '$' in names from switching matplotlib into mathtext."""
    return text.replace("$", r"\$")


def _attr(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


def _float_or_nan(value: Any) -> float:
    return float(value) if is_number(value) else float("nan")
