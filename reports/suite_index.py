"""The nightly suite's index.html: regressions first, the score with its formula, then one row
per experiment with its verdict, its key figures and a sparkline of each over earlier nights.

One self-contained file like each run's report: inline CSS, inline SVG (`reports.sparklines`),
nothing fetched; the only links are the runs' own reports beside it, by relative path.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from reports.formatting import fmt_duration, fmt_wall, is_number
from reports.sparklines import Sparkline, sparkline
from reports.suite_figures import figure_label, fmt_figure
from reports.trends import (
    BASELINE_NIGHTS,
    baseline_of,
    figure_series,
    resolve_tolerances,
    worst_allowed,
)

TREND_NIGHTS = 14  # earlier nights drawn in a sparkline (the baseline uses the last 7)
VERDICT_ORDER = ("failed", "crashed", "interrupted", "aborted", "deviated", "passed")


def write_index(out_dir: Path, summary: dict, history: list[dict]) -> Path:
    """Write out_dir/index.html (self-contained) and return its path."""
    html = render_index(summary, history, base_dir=Path(out_dir))
    out = Path(out_dir) / "index.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out)
    return out


def render_index(
    summary: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
    base_dir: Path | None = None,
) -> str:
    """The suite page as an HTML string; with base_dir (the index's folder) a report that is
    not there is not linked, so the page holds no dead link."""
    env = Environment(
        loader=PackageLoader("reports", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    context = index_context(summary, history, base_dir)
    return env.get_template("suite.html.j2").render(**context)


def index_context(
    summary: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
    base_dir: Path | None = None,
) -> dict:
    """Everything the page shows, formatted: the template only lays it out."""
    now = summary.get("started_at")
    earlier = sorted(
        (
            n
            for n in history
            if isinstance(n, Mapping)
            and is_number(n.get("started_at"))
            and (not is_number(now) or n["started_at"] < now)
        ),
        key=lambda n: n["started_at"],
    )
    experiments = [e for e in summary.get("experiments") or [] if isinstance(e, Mapping)]
    regressions = [r for r in summary.get("regressions") or [] if isinstance(r, Mapping)]
    verdicts = Counter(str(e.get("verdict")) for e in experiments)
    score = summary.get("score") if isinstance(summary.get("score"), Mapping) else {}
    return {
        "started": fmt_wall(now),
        "facts": _facts(summary),
        "verdict_counts": [(v, verdicts[v]) for v in _verdict_order(verdicts)],
        "regressions": [
            {
                "experiment": str(r.get("experiment")),
                "figure": figure_label(str(r.get("figure"))),
                "text": str(r.get("summary") or _regression_text(r)),
            }
            for r in regressions
        ],
        "nights": len(earlier),
        "score": _score_view(score, earlier),
        "experiments": [
            _experiment_view(e, earlier, regressions, _rules(summary), base_dir)
            for e in experiments
        ],
        "baseline_nights": BASELINE_NIGHTS,
        "generated_at": fmt_wall(time.time()),
    }


def _rules(summary: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """The tolerances the summary was judged with (the defaults for an older summary)."""
    try:
        return resolve_tolerances(summary.get("tolerances"))
    except ValueError:
        return resolve_tolerances(None)


def _verdict_order(verdicts: Counter[str]) -> list[str]:
    known = [v for v in VERDICT_ORDER if verdicts[v]]
    return known + sorted(v for v in verdicts if v not in VERDICT_ORDER)


def _facts(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    duration = summary.get("duration_s")
    commit = summary.get("commit")
    return [
        ("started", fmt_wall(summary.get("started_at"))),
        ("ended", fmt_wall(summary.get("ended_at"))),
        ("duration", fmt_duration(duration) if is_number(duration) else "—"),
        ("target", str(summary.get("target") or "—")),
        ("host", str(summary.get("host") or "—")),
        ("commit", str(commit)[:12] if commit else "—"),
    ]


def _regression_text(r: Mapping[str, Any]) -> str:
    figure = str(r.get("figure"))
    return (
        f"{figure_label(figure)} {fmt_figure(figure, r.get('value'))} vs median "
        f"{fmt_figure(figure, r.get('baseline'))}"
    )


def _score_view(score: Mapping[str, Any], earlier: Sequence[Mapping[str, Any]]) -> dict:
    value = score.get("value")
    past = [
        n["score"]["value"]
        for n in earlier[-TREND_NIGHTS:]
        if isinstance(n.get("score"), Mapping) and is_number(n["score"].get("value"))
    ]
    shown = f"{value:.3f}" if is_number(value) else "—"
    trend = sparkline(
        past,
        value if is_number(value) else None,
        label=f"score, last {len(past)} night(s) and tonight" if past else "score: first night",
        title=(
            "resilience score: "
            + ", ".join(f"{v:.3f}" for v in past)
            + (" then " if past else "")
            + f"tonight {shown}"
        ),
        width=320.0,
        height=64.0,
    )
    return {
        "value": shown,
        "met": score.get("met", 0),
        "total": score.get("total", 0),
        "formula": str(score.get("formula") or ""),
        "trend": trend,
    }


def _experiment_view(
    entry: Mapping[str, Any],
    earlier: Sequence[Mapping[str, Any]],
    regressions: Sequence[Mapping[str, Any]],
    rules: Mapping[str, Mapping[str, float]],
    base_dir: Path | None,
) -> dict[str, Any]:
    name = str(entry.get("name") or "")
    checks = [c for c in entry.get("checks") or [] if isinstance(c, Mapping)]
    mine = {str(r.get("figure")): r for r in regressions if r.get("experiment") == name}
    figures = entry.get("figures") if isinstance(entry.get("figures"), Mapping) else {}
    duration = entry.get("duration_s")
    overhead = entry.get("overhead_s")
    return {
        "name": name,
        "title": str(entry.get("title") or ""),
        "tags": [str(t) for t in entry.get("tags") or []],
        "verdict": str(entry.get("verdict") or "unknown"),
        "regressed": bool(entry.get("regressed")) or bool(mine),
        "href": _relative_href(entry.get("report"), base_dir),
        "checks_met": sum(1 for c in checks if c.get("ok") is True),
        "checks_total": len(checks),
        "failed_checks": [
            f"{c.get('name')} ({c.get('phase')}): {c.get('summary')}"
            for c in checks
            if c.get("ok") is not True
        ],
        "reasons": [str(r) for r in entry.get("reasons") or []],
        "duration": fmt_duration(duration) if is_number(duration) else "—",
        "overhead": fmt_duration(overhead) if is_number(overhead) else "—",
        "figures": [
            _figure_view(name, figure, value, earlier, mine.get(figure), rules.get(figure))
            for figure, value in figures.items()
        ],
    }


def _figure_view(
    experiment: str,
    figure: str,
    value: Any,
    earlier: Sequence[Mapping[str, Any]],
    regression: Mapping[str, Any] | None,
    rule: Mapping[str, float] | None,
) -> dict[str, Any]:
    past = [v for _, v in figure_series(earlier, experiment, figure)][-TREND_NIGHTS:]
    baseline = baseline_of(figure, past[-BASELINE_NIGHTS:]) if past else None
    label = figure_label(figure)
    if past and isinstance(baseline, bool):
        caption = f"{len(past)} night(s), {sum(1 for v in past if v is True)} yes"
        history_words = ", ".join(fmt_figure(figure, v) for v in past) + " then "
    elif past:
        caption = f"{len(past)} night(s), median {fmt_figure(figure, baseline)}"
        history_words = ", ".join(fmt_figure(figure, v) for v in past) + " then "
    else:
        caption, history_words = "first night", ""
    spark: Sparkline = sparkline(
        past,
        value,
        baseline,
        limit=worst_allowed(figure, baseline, rule),
        regressed=regression is not None,
        label=caption,
        title=f"{label}: {history_words}tonight {fmt_figure(figure, value)}",
    )
    return {
        "name": figure,
        "label": label,
        "value": fmt_figure(figure, value),
        "regressed": regression is not None,
        "regression": str(regression.get("summary") or "") if regression else "",
        "spark": spark,
    }


def _relative_href(report: Any, base_dir: Path | None) -> str | None:
    """The run's report beside the index; anything absolute or with a scheme is not linked,
    so the page never points outside its folder, nor is a report missing from base_dir."""
    if not isinstance(report, str) or not report.strip():
        return None
    path = report.strip()
    if ":" in path or path.startswith(("/", "\\")) or "//" in path or ".." in path.split("/"):
        return None
    if base_dir is not None and not (base_dir / path).is_file():
        return None
    return path
