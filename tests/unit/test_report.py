"""The run report: one self-contained HTML page from a journal and the raw load records."""

from __future__ import annotations

import copy
import json
import random
import re
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from reports.charts import FaultSpan, RecordColumns, bin_timeline, timeline_chart
from reports.records import read_records, time_to_recover
from reports.render import render_report

T0 = 1_717_000_000.0  # load start: first request sent
FAULT_START, FAULT_END = 20.0, 35.0  # seconds since load start
TTFT_RECOVERED_AT = 37.0  # requests sent from here on see normal TTFT again
VICTIM = "worker-n0-g0"
WORKERS = [VICTIM, "worker-n0-g1", "worker-n1-g0", "worker-n1-g1"]


def make_records(count: int, rate: float = 50.0, seed: int = 7) -> list[dict[str, Any]]:
    """Load records as loadtests writes them: a worker dies at 20 s, is back at 35 s.

    Requests routed to the victim fail for the first 3 s (until the gateway ejects it);
    the survivors carry the load with a 4x TTFT until 37 s.
    """
    rng = random.Random(seed)
    records = []
    for i in range(count):
        sent = T0 + i / rate
        rel = sent - T0
        worker = WORKERS[i % len(WORKERS)]
        in_fault = FAULT_START <= rel < FAULT_END
        if in_fault and worker == VICTIM:
            worker = WORKERS[1 + i % 3]
        failed = FAULT_START <= rel < FAULT_START + 3 and i % len(WORKERS) == 0
        ttft = rng.uniform(0.04, 0.08) * (4.0 if FAULT_START <= rel < TTFT_RECOVERED_AT else 1.0)
        tokens = 32
        chunks = [sent + ttft + k * 0.02 for k in range(tokens)]
        record = {
            "id": f"r{i}",
            "sent_at": sent,
            "first_chunk_at": None if failed else sent + ttft - 0.001,
            "first_token_at": None if failed else sent + ttft,
            "first_visible_token_at": None if failed else sent + ttft,
            "chunk_times": [] if failed else chunks,
            "done_at": sent + 0.01 if failed else chunks[-1] + 0.001,
            "output_tokens": 0 if failed else tokens,
            "prompt_tokens": 120,
            "status": None if failed else 200,
            "ok": not failed,
            "error": "connection reset by peer" if failed else None,
            "served_by": VICTIM if failed else worker,
        }
        records.append(record)
    return records


def write_records(path: Path, records: list[dict[str, Any]], truncate_last: bool = True) -> Path:
    lines = [json.dumps(r) for r in records]
    text = "\n".join(lines) + "\n"
    if truncate_last:  # a run killed mid-write
        text += json.dumps({"id": "partial", "sent_at": T0 + 999})[:25]
    path.write_text(text, encoding="utf-8")
    return path


def iso(rel: float) -> str:
    return datetime.fromtimestamp(T0 + rel, tz=UTC).isoformat()


def activity_run(
    activity: dict, start: float, duration: float, output: Any, status: str = "succeeded"
) -> dict[str, Any]:
    """A run entry exactly as chaoslib.activity.execute_activity builds it."""
    run = {
        "activity": dict(activity),
        "output": output,
        "start": iso(start),
        "status": status,
        "end": iso(start + duration),
        "duration": duration,
    }
    if status == "failed":
        run["exception"] = [
            "Traceback (most recent call last):\n",
            "chaoslib.exceptions.ActivityFailed: gateway returned 503 for 4 s\n",
        ]
    return run


def python_activity(kind: str, name: str, module: str, func: str, **arguments: Any) -> dict:
    return {
        "type": kind,
        "name": name,
        "provider": {"type": "python", "module": module, "func": func, "arguments": arguments},
    }


AVAILABILITY = {
    "ok": False,
    "verdict": "fail",
    "sli": 0.9975,
    "good": 2992,
    "total": 3000,
    "errors": 8,
    "target": 0.999,
    "confidence": 0.95,
    "interval": [0.9957, 0.9987],
    "burn_rate": 2.5,
    "requests_needed": 2995,
    "window": "during",
    "window_start": T0 + FAULT_START,
    "window_end": T0 + FAULT_END,
    "source": "client",
}
THIN_AVAILABILITY = {
    **AVAILABILITY,
    "ok": True,
    "verdict": "inconclusive",
    "sli": 1.0,
    "good": 500,
    "total": 500,
    "errors": 0,
    "interval": [0.994, 1.0],
    "burn_rate": 0.0,
    "window": "recovery",
}
TTFT_SLO = {
    "ok": False,
    "metric": "ttft",
    "quantile": 0.99,
    "value": 0.31,
    "bound_s": 0.25,
    "count": 2990,
    "p50": 0.07,
    "p95": 0.28,
    "p99": 0.31,
    "window": "all",
    "source": "client",
}
POD_KILL = {
    "id": "f-3a9c",
    "kind": "pod-kill",
    "target": "local",
    "selector": {"labels": {"role": "worker", "node": "node-0"}, "mode": "one"},
    "victims": [VICTIM],
    "params": {"signal": "SIGKILL", "hold_s": 15},
    "injected_at": T0 + FAULT_START,
    "removed_at": T0 + FAULT_END,
    "backend": "local",
    "details": {"pids": [41234]},
}


def make_journal() -> dict[str, Any]:
    """A journal shaped like chaoslib.run's, plus what our verdict control adds."""
    probe_before = python_activity(
        "probe", "availability-steady", "probes.slo", "availability", window="before"
    )
    probe_before["tolerance"] = {"type": "jsonpath", "path": "$.ok", "expect": True}
    start_load = python_activity("action", "start-load", "loadtests.runner", "start", users=40)
    start_load["background"] = True
    kill = python_activity("action", "kill-one-worker", "experiments.faults", "pod_kill", hold_s=15)
    recover_probe = python_activity("probe", "tasks-migrated", "probes.migration", "check")
    rollback = python_activity("action", "remove-all-faults", "experiments.faults", "recover_all")
    experiment = {
        "version": "1.0.0",
        "title": "A worker dies under streaming load",
        "description": "Kill one GPU worker; the gateway must retry before the first token.",
        "tags": ["pod", "gateway", "availability"],
        "configuration": {"target": "local", "slo_target": 0.999},
        "steady-state-hypothesis": {"title": "Users are served", "probes": [probe_before]},
        "method": [start_load, kill, recover_probe],
        "rollbacks": [rollback],
        "runtime": {"rollbacks": {"strategy": "always"}},
    }
    before = activity_run(probe_before, -4.0, 0.4, {"ok": True, "sli": 1.0, "total": 250})
    before["tolerance_met"] = True
    after = activity_run(probe_before, 61.0, 0.5, {"ok": False, "sli": 0.9975, "total": 3000})
    after["tolerance_met"] = False
    return {
        "chaoslib-version": "1.44.0",
        "platform": "Linux-6.1-x86_64",
        "node": "ci-runner-3",
        "experiment": experiment,
        "start": iso(-5.0),
        "end": iso(64.0),
        "duration": 69.0,
        "status": "completed",
        "deviated": True,
        "steady_states": {
            "before": {"steady_state_met": True, "probes": [before]},
            "after": {"steady_state_met": False, "probes": [after]},
            "during": [],
        },
        "run": [
            activity_run(start_load, -0.2, 60.5, {"records_path": "/tmp/load.jsonl"}),
            activity_run(kill, FAULT_START - 0.05, 0.05, {"fault_id": "f-3a9c"}),
            activity_run(recover_probe, FAULT_START + 1, 3.0, None, status="failed"),
        ],
        "rollbacks": [activity_run(rollback, 62.0, 0.3, {"removed": ["f-3a9c"]})],
        "inference_chaos": {
            "verdict": "deviated",
            "reasons": ["availability during the fault 99.75% is below the 99.9% target"],
            "run_id": "run-20240529-0001",
            "slos": copy.deepcopy([AVAILABILITY, THIN_AVAILABILITY, TTFT_SLO]),
            "faults": [copy.deepcopy(POD_KILL)],
        },
    }


class ExternalReferenceFinder(HTMLParser):
    """Collects whatever in a page could make a browser fetch something."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.tags: set[str] = set()
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        if tag in {"script", "link", "img", "iframe", "object", "embed", "image", "use"}:
            if tag != "use":
                self.problems.append(f"<{tag}>")
        for name, value in attrs:
            value = (value or "").strip().lower()
            if name in {"src", "href", "xlink:href", "srcset", "action", "data"} and not (
                value.startswith("#")
            ):
                self.problems.append(f"{tag} {name}={value!r}")
            if re.search(r"(https?:)?//", value) and name not in {"content"}:
                self.problems.append(f"{tag} {name}={value!r}")
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style and re.search(r"@import|url\(\s*['\"]?(https?:)?//", data):
            self.problems.append(f"style fetches: {data[:80]!r}")


@pytest.fixture(scope="module")
def records_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("records") / "load.jsonl"
    return write_records(path, make_records(3000))


@pytest.fixture(scope="module")
def report_html(tmp_path_factory: pytest.TempPathFactory, records_path: Path) -> str:
    """One render shared by the read-only checks below (a render takes about half a second)."""
    out_dir = tmp_path_factory.mktemp("out")
    out = render_report(make_journal(), records_path, out_dir / "report.html")
    assert [p.name for p in out_dir.iterdir()] == ["report.html"]
    assert out == out_dir / "report.html"
    return out.read_text(encoding="utf-8")


def test_report_shows_verdict_reasons_and_faults(report_html: str) -> None:
    assert 'class="verdict v-deviated"' in report_html
    assert ">deviated</span>" in report_html
    assert "availability during the fault 99.75% is below the 99.9% target" in report_html
    fault_row = re.search(r'<tr class="fault-row">(.*?)</tr>', report_html, re.S)
    assert fault_row, "no fault row"
    assert "pod-kill" in fault_row.group(1)
    assert VICTIM in fault_row.group(1)
    assert "signal=SIGKILL" in fault_row.group(1)
    assert "+20.0 s" in fault_row.group(1) and "+35.0 s" in fault_row.group(1)
    assert "15.0 s" in fault_row.group(1)  # duration


def test_report_charts_are_inline_svg_with_legends_and_fault_window(report_html: str) -> None:
    assert report_html.count("<svg") == 2
    assert "<path" in report_html
    for legend in ("completed/s", "errors/s", "TTFT p50", "TTFT p95", "TTFT p99"):
        assert re.search(rf"<text[^>]*>{re.escape(legend)}</text>", report_html), legend
    assert re.search(rf"<text[^>]*>{VICTIM} \(victim\)</text>", report_html)
    shaded = re.search(r'<g id="fault-window-timeline-rate-0">\s*<path', report_html)
    assert shaded, "fault window is not shaded in the timeline"
    assert re.search(
        rf'<g id="fault-label-timeline-rate-0">\s*<text[^>]*>pod-kill {VICTIM}</text>',
        report_html,
    )


def test_report_loads_nothing_from_anywhere(report_html: str) -> None:
    finder = ExternalReferenceFinder()
    finder.feed(report_html)
    assert finder.problems == []
    assert "svg" in finder.tags and "style" in finder.tags
    assert "http://" not in report_html and "https://" not in report_html


@pytest.mark.parametrize(
    "fetching",
    [
        '<img src="http://example.org/x.png">',
        '<link rel="stylesheet" href="//cdn.example.org/a.css">',
        '<svg><use xlink:href="https://example.org/s.svg#m"/></svg>',
        "<style>body { background: url('https://example.org/bg.png') }</style>",
        '<script src="a.js"></script>',
    ],
)
def test_reference_finder_catches_fetches(fetching: str) -> None:
    finder = ExternalReferenceFinder()
    finder.feed(f"<html><body>{fetching}<svg><use xlink:href='#m1'/></svg></body></html>")
    assert finder.problems


def test_report_figures_from_records(report_html: str) -> None:
    windows = re.search(r'<table id="windows">.*?<tbody>(.*?)</tbody>', report_html, re.S).group(1)
    rows = {
        m.group(1): m.group(2)
        for m in re.finditer(r"<tr[^>]*>\s*<th>(\w+)</th>(.*?)</tr>", windows, re.S)
    }
    assert set(rows) == {"before", "during", "recovery", "after", "all"}
    # 3000 records, one line truncated: 3000 whole requests, of which the victim's 38 failed.
    failures = sum(1 for r in make_records(3000) if not r["ok"])
    assert f">{failures}</td>" in rows["during"]
    assert ">0</td>" in rows["before"]
    assert ">3,000</td>" in rows["all"]
    assert "could not be read" in report_html  # the truncated last line is reported
    recovery = re.search(r'<h2 id="recovery">.*?</table>', report_html, re.S).group(0)
    assert "17.0 s" in recovery  # 20 s injection, TTFT normal again from 37 s
    assert "+2 s" in recovery  # relative to the removal at 35 s


def test_report_slo_table(report_html: str) -> None:
    slos = re.search(r'<h2 id="slos">.*?</table>', report_html, re.S).group(0)
    assert "99.9%" in slos and "99.75%" in slos
    assert "99.57% – 99.87%" in slos
    assert '<span class="pill fail">fail</span>' in slos
    assert '<span class="pill inconclusive">inconclusive</span>' in slos
    assert "needs about 2,995 error-free requests" in slos
    assert "TTFT p99" in slos and "≤ 250 ms" in slos
    assert "about 3,000 requests" in report_html


def test_report_hypothesis_method_and_raw_outputs(report_html: str) -> None:
    hypothesis = re.search(r'<h2 id="hypothesis">.*?<h2 id="method">', report_html, re.S).group(0)
    assert '<span class="pill met">met</span>' in hypothesis
    assert '<span class="pill not-met">not met</span>' in hypothesis
    assert '<span class="pill no">no</span>' in hypothesis
    method = re.search(r'<h2 id="method">.*?<h2 id="raw">', report_html, re.S).group(0)
    assert "kill-one-worker" in method and "remove-all-faults" in method
    assert "ActivityFailed: gateway returned 503 for 4 s" in method
    assert "(background)" in method
    assert "<details><summary>method: tasks-migrated</summary>" in report_html


def test_render_without_records(tmp_path: Path) -> None:
    out = render_report(make_journal(), None, tmp_path / "r.html")
    html = out.read_text(encoding="utf-8")
    assert "No load records file was given" in html
    assert "<svg" not in html
    assert "pod-kill" in html and ">deviated</span>" in html


def test_render_with_missing_records_file(tmp_path: Path) -> None:
    out = render_report(make_journal(), tmp_path / "absent.jsonl", tmp_path / "r.html")
    assert "does not exist" in out.read_text(encoding="utf-8")


def test_render_interrupted_before_the_method(tmp_path: Path) -> None:
    journal = make_journal()
    journal.update(
        status="interrupted",
        deviated=False,
        end=iso(-3.0),
        run=[],
        rollbacks=[],
        steady_states={"before": None, "after": None, "during": []},
    )
    del journal["inference_chaos"]
    html = render_report(journal, None, tmp_path / "r.html").read_text(encoding="utf-8")
    assert 'class="verdict v-interrupted"' in html
    assert "The method did not run" in html
    assert "did not record a verdict" in html
    assert "Not checked: the run did not get this far." in html


def test_render_empty_journal_and_hostile_text(tmp_path: Path) -> None:
    html = render_report({}, None, tmp_path / "empty.html").read_text(encoding="utf-8")
    assert "Untitled experiment" in html and "v-unknown" in html
    journal = make_journal()
    journal["experiment"]["title"] = "<script>alert(1)</script>"
    journal["inference_chaos"]["faults"][0]["victims"] = ["$x$_<b>"]
    path = write_records(tmp_path / "l.jsonl", make_records(400), truncate_last=False)
    html = render_report(journal, path, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<script" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<b>" not in html


def test_prometheus_series_chart(tmp_path: Path, records_path: Path) -> None:
    series = {
        "gateway_upstream_healthy": [[T0 + t, "0" if 20 <= t < 35 else "1"] for t in range(60)]
    }
    html = render_report(make_journal(), records_path, tmp_path / "r.html", series).read_text(
        encoding="utf-8"
    )
    assert html.count("<svg") == 3
    assert re.search(r"<text[^>]*>gateway_upstream_healthy</text>", html)


def test_read_records_skips_a_truncated_last_line(tmp_path: Path) -> None:
    path = write_records(tmp_path / "l.jsonl", make_records(10))
    records, skipped = read_records(path)
    assert [r["id"] for r in records] == [f"r{i}" for i in range(10)]
    assert skipped == 1


def test_timeline_bins_counts_and_ttft_spike() -> None:
    records = make_records(3000)
    timeline = bin_timeline(RecordColumns.from_records(records))
    assert timeline.origin == T0
    assert timeline.completed.sum() == 3000
    assert timeline.errors.sum() == sum(1 for r in records if not r["ok"])
    assert timeline.errors[:20].sum() == 0 and timeline.errors[20:23].sum() > 0
    assert timeline.ttft_p95[25] > 3 * timeline.ttft_p95[10]
    assert timeline.served_by[VICTIM][25:34].sum() == 0  # no traffic on the dead worker
    assert timeline.served_by[VICTIM][40:50].sum() > 0


def test_time_to_recover() -> None:
    timeline = bin_timeline(RecordColumns.from_records(make_records(3000)))
    recovered = time_to_recover(timeline, POD_KILL, baseline_ttft_p95=0.08)
    assert recovered.recovered and recovered.after_injection_s == pytest.approx(17.0)
    assert recovered.after_removal_s == pytest.approx(2.0)
    never = time_to_recover(timeline, POD_KILL, baseline_ttft_p95=0.01)  # baseline never met
    assert not never.recovered and never.after_injection_s is None
    assert "not recovered" in never.note


def test_no_recovery_when_the_load_stalls_after_the_fault() -> None:
    """Seconds without traffic prove nothing: a load that stalled has not recovered."""
    records = [r for r in make_records(3000) if r["sent_at"] - T0 < 23.0]
    timeline = bin_timeline(RecordColumns.from_records(records))
    stalled = time_to_recover(timeline, POD_KILL, baseline_ttft_p95=0.08)
    assert not stalled.recovered
    clean = time_to_recover(timeline, {**POD_KILL, "injected_at": T0 + 5.0}, 0.08, until=15.0)
    assert clean.recovered and clean.after_injection_s == pytest.approx(0.0)
    assert clean.note == "no visible impact"


def test_fault_never_removed_is_shaded_to_the_end() -> None:
    timeline = bin_timeline(RecordColumns.from_records(make_records(1000)))
    svg = timeline_chart(timeline, [FaultSpan("network-delay gateway", 5.0, None)])
    assert "fault: network-delay gateway" in svg

    def right_edge(group_id: str) -> float:
        path = re.search(rf'<g id="{group_id}">\s*<path d="([^"]*)"', svg).group(1)
        return max(float(x) for x in re.findall(r"[ML] ([\d.]+) ", path))

    assert right_edge("fault-window-timeline-rate-0") == pytest.approx(right_edge("patch_2"))
