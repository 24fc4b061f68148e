"""The nightly suite's summary and page: key figures and checks read from journals, the score,
summary.json's content and the self-contained index.html.

Journals are built here in the shape our probes write (windows report, migration, Raft failover,
linearizability, balance, RTO/RPO checks); one test also reads a real journal from chaos-runs/
when the checkout has one, copied into tmp_path so nothing there is touched.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from reports.suite import (
    build_summary,
    checks_from_journal,
    figures_from_journal,
    find_regressions,
    render_index,
    resilience_score,
    write_index,
)
from tests.unit.test_report import ExternalReferenceFinder

REPO = Path(__file__).resolve().parents[2]
T0 = 1_800_000_000.0


def probe(name: str, output: Any, status: str = "succeeded", **extra: Any) -> dict[str, Any]:
    """One activity run as Chaos Toolkit journals it."""
    run = {
        "activity": {"type": "probe", "name": name, "provider": {"type": "python"}},
        "status": status,
        "output": output,
        "start": "2027-01-15T08:00:00",
        "duration": 0.1,
    }
    return run | extra


def action(name: str, output: Any = None) -> dict[str, Any]:
    return probe(name, output) | {"activity": {"type": "action", "name": name}}


def availability_slo(sli: float, good: int, total: int, ok: bool = True) -> dict[str, Any]:
    return {
        "ok": ok,
        "verdict": "pass" if ok else "fail",
        "sli": sli,
        "good": good,
        "total": total,
        "target": 0.999,
        "window": "all",
        "source": "client",
    }


def ttft_slo(p50: float, p95: float, p99: float, count: int) -> dict[str, Any]:
    return {
        "ok": True,
        "metric": "ttft",
        "value": p95,
        "quantile": 0.95,
        "bound_s": 1.5,
        "count": count,
        "p50": p50,
        "p95": p95,
        "p99": p99,
        "window": "all",
        "source": "client",
    }


def windows_report(sli: float, p50: float, p95: float, p99: float) -> dict[str, Any]:
    """probes.slo.windows_report: not judged itself (no verdict, bound or check)."""
    window = {
        "availability": {"ok": True, "verdict": "pass", "sli": sli, "good": 999, "total": 1000},
        "latency": {"ttft": {"count": 1000, "p50": p50, "p95": p95, "p99": p99}},
    }
    before = {"availability": {"ok": True, "sli": 1.0}, "latency": {"ttft": {"p95": 0.001}}}
    return {"ok": False, "source": "client", "windows": {"before": before, "all": window}}


def migration(max_s: float, detection_s: float | None) -> dict[str, Any]:
    return {
        "ok": max_s <= 1.0,
        "check": "task-migration",
        "bound_s": 1.0,
        "max_migration_s": max_s,
        "detection_s": detection_s,
        "summary": f"slowest routed {max_s:.2f} s after detection",
    }


def make_journal() -> dict[str, Any]:
    """A zone failover with a store: every figure of the contract has an output."""
    hypothesis = [
        probe("cluster-healthy", {"ok": True, "processes": 16, "problems": []}),
        probe("availability-slo", availability_slo(0.9991, 2180, 2182)),
        probe("ttft-p95-slo", ttft_slo(0.04, 0.06, 0.09, 2180)),
    ]
    for run in hypothesis:
        run["tolerance_met"] = True
    before = [
        probe("cluster-healthy", {"ok": True, "processes": 16, "problems": []}),
        probe("availability-slo", availability_slo(1.0, 50, 50)),
    ]
    for run in before:
        run["tolerance_met"] = True
    method = [
        action("start-streaming-load", {"pid": 1}),
        action("fail-zone-b", {"kind": "node-crash", "victims": ["worker-n2-g0"]}),
        probe("tasks-migrated", migration(0.42, 0.21)),
        probe("tasks-migrated-again", migration(0.61, 0.05)),
        probe(
            "failover-and-split-brain",
            {
                "ok": True,
                "check": "raft-failover",
                "failover_s": 0.734,
                "failover_bound_s": 1.0,
                "summary": "new leader after 0.734 s (bound 1.0 s)",
                "timeline": [],
            },
        ),
        probe(
            "history-is-linearizable",
            {
                "ok": True,
                "check": "linearizability",
                "result": "ok",
                "summary": "linearizable: 812 operations",
                "verdict": {"result": "ok"},
                "history_html": "<svg></svg>",
            },
        ),
        probe(
            "load-is-balanced",
            {"ok": True, "check": "load-balance", "max_over_mean_minus_1": 0.031, "bound": 0.05},
        ),
        probe("recovery-time-objective", {"ok": True, "check": "rto", "rto_s": 2.5}),
        probe("recovery-point-objective", {"ok": True, "check": "rpo", "rpo_s": 0.0}),
        probe("slo-per-window", windows_report(0.9987, 0.041, 0.063, 0.112)),
    ]
    return {
        "experiment": {"title": "A zone fails", "tags": ["zone", "raft", "nightly"]},
        "status": "completed",
        "deviated": False,
        "steady_states": {
            "before": {"steady_state_met": True, "probes": before},
            "after": {"steady_state_met": True, "probes": hypothesis},
        },
        "run": method,
        "inference_chaos": {"verdict": "passed", "reasons": [], "notes": [], "slos": []},
    }


# --- figures ----------------------------------------------------------------------------------


def test_every_figure_of_the_contract_is_read_from_its_output() -> None:
    figures = figures_from_journal(make_journal())
    assert figures == {
        "availability": 0.9987,  # the windows report's "all" window, not the hypothesis SLO
        "ttft_p50_s": 0.041,
        "ttft_p95_s": 0.063,
        "ttft_p99_s": 0.112,
        "time_to_new_leader_s": 0.734,
        "time_to_migrate_s": 0.61,  # the worst of two migrations
        "detection_s": 0.21,
        "balance": 0.031,
        "rto_s": 2.5,
        "rpo_s": 0.0,  # a measured zero is a figure: only absent ones are left out
        "linearizable": True,
    }
    assert list(figures) == list(figures_from_journal(make_journal()))  # stable order


def test_without_a_windows_report_the_widest_client_slo_stands_in() -> None:
    journal = make_journal()
    journal["run"] = [r for r in journal["run"] if r["activity"]["name"] != "slo-per-window"]
    figures = figures_from_journal(journal)
    assert figures["availability"] == pytest.approx(0.9991)  # 2182 requests, not the 50 before
    assert (figures["ttft_p50_s"], figures["ttft_p95_s"], figures["ttft_p99_s"]) == (
        0.04,
        0.06,
        0.09,
    )


def test_prometheus_availability_is_not_the_client_figure() -> None:
    journal = {"run": [probe("prom", availability_slo(0.95, 95, 100) | {"source": "prometheus"})]}
    assert "availability" not in figures_from_journal(journal)


@pytest.mark.parametrize(
    ("result", "ok", "expected"),
    [("illegal", False, False), ("unknown", False, None), ("ok", True, True)],
)
def test_linearizable_is_true_false_or_null(result: str, ok: bool, expected: bool | None) -> None:
    output = {"ok": ok, "check": "linearizability", "result": result, "summary": result}
    figures = figures_from_journal({"run": [probe("history", output)]})
    assert "linearizable" in figures and figures["linearizable"] is expected


def test_absent_figures_are_left_out_never_zero() -> None:
    figures = figures_from_journal({"run": [probe("tasks-migrated", migration(0.3, None))]})
    assert figures == {"time_to_migrate_s": 0.3}  # detection_s null (a drain): left out


def test_controller_failover_gives_the_time_to_new_leader_without_a_store_observer() -> None:
    output = {"ok": True, "check": "controller-failover", "seconds": 1.109, "summary": "took"}
    assert figures_from_journal({"run": [probe("standby", output)]}) == {
        "time_to_new_leader_s": 1.109
    }


def test_migration_time_from_the_tasks_when_the_maximum_is_missing() -> None:
    output = {
        "ok": True,
        "check": "task-migration",
        "tasks": [
            {"task": "t0", "detected_at": T0, "routed_at": T0 + 0.3},
            {"task": "t1", "detected_at": T0, "routed_at": T0 + 0.8},
            {"task": "t2", "moved": False, "detected_at": T0, "routed_at": T0 + 9},
        ],
    }
    assert figures_from_journal({"run": [probe("m", output)]})["time_to_migrate_s"] == (
        pytest.approx(0.8)
    )


def test_the_verdict_controls_copies_stand_in_for_lost_activity_outputs() -> None:
    journal = {"inference_chaos": {"slos": [migration(0.5, 0.1) | {"probe": "m", "phase": "x"}]}}
    assert figures_from_journal(journal) == {"time_to_migrate_s": 0.5, "detection_s": 0.1}


CRASHED_JOURNALS = [
    {},
    {"status": "aborted"},
    {"run": "not a list", "steady_states": "nope", "inference_chaos": 3},
    {"run": [None, 7, {"activity": None, "output": None}]},
    {"run": [probe("m", {"check": "task-migration", "max_migration_s": "fast", "tasks": 5})]},
    {"run": [probe("w", {"windows": {"all": {"availability": {"sli": "x"}, "latency": 3}}})]},
    {"run": [probe("w", {"windows": {"all": {"availability": [], "latency": {"ttft": []}}}})]},
    {"run": [probe("r", {"check": "raft-failover", "failover_s": None, "ok": False})]},
    {"run": [probe("l", {"check": "linearizability"})]},
    {"run": [probe("a", availability_slo(1.0, 1, 1) | {"target": "high", "sli": None})]},
    {"steady_states": {"before": {"probes": [None, {"activity": {"name": 3}}]}, "after": []}},
    {"inference_chaos": {"slos": [None, "x", {"ok": "maybe"}, {"ok": True, "check": "rto"}]}},
]


@pytest.mark.parametrize("journal", CRASHED_JOURNALS)
def test_a_damaged_journal_never_raises(journal: dict) -> None:
    figures = figures_from_journal(journal)
    checks = checks_from_journal(journal)
    assert all(isinstance(v, float | bool) or v is None for v in figures.values())
    assert "time_to_migrate_s" not in figures and "availability" not in figures
    assert all(set(c) == {"name", "ok", "summary", "phase"} for c in checks)
    json.dumps(figures), json.dumps(checks)


def test_not_a_journal_at_all() -> None:
    assert figures_from_journal(None) == {}  # type: ignore[arg-type]
    assert checks_from_journal(None) == []  # type: ignore[arg-type]


# --- checks -----------------------------------------------------------------------------------


def test_checks_are_the_hypothesis_probes_and_the_judged_method_probes_in_order() -> None:
    checks = checks_from_journal(make_journal())
    phases = [(c["phase"], c["name"]) for c in checks]
    assert phases[:2] == [
        ("hypothesis-before", "cluster-healthy"),
        ("hypothesis-before", "availability-slo"),
    ]
    method = [name for phase, name in phases if phase == "method"]
    # actions and the windows report (no verdict, bound or check) are not judged
    assert "slo-per-window" not in method and "fail-zone-b" not in method
    assert method[0] == "tasks-migrated" and "recovery-point-objective" in method
    assert phases[-1] == ("hypothesis-after", "ttft-p95-slo")
    assert all(c["ok"] is True for c in checks)
    summaries = {c["name"]: c["summary"] for c in checks}
    assert "0.734 s" in summaries["failover-and-split-brain"]
    assert "99.910%" in [c for c in checks if c["phase"] == "hypothesis-after"][1]["summary"]
    assert summaries["cluster-healthy"] == "processes 16"


def test_a_missed_tolerance_and_a_probe_that_raised_are_checks_not_met() -> None:
    journal = make_journal()
    after = journal["steady_states"]["after"]["probes"]
    after[1] = probe("availability-slo", availability_slo(0.99, 990, 1000, ok=False))
    after[1]["tolerance_met"] = False
    journal["run"].append(
        probe(
            "rebalanced",
            None,
            status="failed",
            exception=["Traceback ...\n", "ActivityFailed: prometheus unreachable\n"],
        )
    )
    missed = [c for c in checks_from_journal(journal) if not c["ok"]]
    assert [(c["phase"], c["name"]) for c in missed] == [
        ("method", "rebalanced"),
        ("hypothesis-after", "availability-slo"),
    ]
    assert missed[0]["summary"] == "could not measure: ActivityFailed: prometheus unreachable"
    assert "99.000% vs target 99.9%" in missed[1]["summary"]
    assert all("\n" not in c["summary"] for c in checks_from_journal(journal))


def test_without_activities_the_verdict_controls_slo_list_gives_the_checks() -> None:
    slos = [
        availability_slo(0.99, 99, 100, ok=False) | {"probe": "availability-slo", "phase": "after"},
        migration(0.4, 0.1) | {"probe": "tasks-migrated", "phase": "method"},
    ]
    checks = checks_from_journal({"inference_chaos": {"slos": slos}})
    assert [(c["phase"], c["name"], c["ok"]) for c in checks] == [
        ("hypothesis-after", "availability-slo", False),
        ("method", "tasks-migrated", True),
    ]


def test_a_real_journal_when_the_checkout_has_one(tmp_path: Path) -> None:
    found = sorted((REPO / "chaos-runs").glob("*/journal.json"))
    if not found:
        pytest.skip("no chaos-runs/*/journal.json in this checkout")
    copy = tmp_path / "journal.json"
    shutil.copyfile(found[-1], copy)  # read-only use of the original
    journal = json.loads(copy.read_text(encoding="utf-8"))
    figures = figures_from_journal(journal)
    checks = checks_from_journal(journal)
    assert 0.0 < figures["availability"] <= 1.0
    assert 0.0 < figures["ttft_p50_s"] <= figures["ttft_p95_s"] <= figures["ttft_p99_s"]
    assert checks and {c["phase"] for c in checks} <= {
        "hypothesis-before",
        "method",
        "hypothesis-after",
    }
    verdict = journal.get("inference_chaos", {}).get("verdict")
    if verdict == "passed":
        assert all(c["ok"] for c in checks if c["phase"] != "hypothesis-before")
    if verdict == "deviated":
        assert any(not c["ok"] for c in checks)


# --- score ------------------------------------------------------------------------------------


def checks_of(met: int, total: int) -> list[dict[str, Any]]:
    return [
        {"name": f"c{i}", "ok": i < met, "summary": "", "phase": "method"} for i in range(total)
    ]


def test_the_score_weighs_each_experiment_equally_and_a_crash_is_0_of_1() -> None:
    score = resilience_score(
        [
            {"name": "a", "verdict": "deviated", "checks": checks_of(1, 2)},
            {"name": "b", "verdict": "passed", "checks": checks_of(9, 9)},
            {"name": "c", "verdict": "crashed", "checks": []},
        ]
    )
    assert score["value"] == pytest.approx((0.5 + 1.0 + 0.0) / 3, abs=1e-4)
    assert (score["met"], score["total"]) == (10, 12)
    assert "(1/2 + 9/9 + 0/1) / 3 = 0.500" in score["formula"]


def test_a_crash_with_checks_still_counts_0_of_1() -> None:
    score = resilience_score([{"verdict": "crashed", "checks": checks_of(3, 3)}])
    assert (score["value"], score["met"], score["total"]) == (0.0, 0, 1)


def test_no_experiment_no_score() -> None:
    assert resilience_score([])["value"] is None


# --- summary.json -----------------------------------------------------------------------------


def result(name: str, journal: dict | None, verdict: str = "passed", **extra: Any) -> dict:
    return {
        "name": name,
        "file": Path(f"experiments/{name}.yaml"),
        "verdict": verdict,
        "exit_code": 0 if verdict == "passed" else 1,
        "duration_s": 61.5,
        "overhead_s": 12.0,
        "reasons": [] if verdict == "passed" else [f"{name} {verdict}"],
        "report": f"{name}/report.html",
        "journal": journal,
    } | extra


def earlier_night(started_at: float, figures: dict[str, Any]) -> dict[str, Any]:
    experiment = {"name": "zone-failover", "verdict": "passed", "figures": figures}
    return {"suite": "nightly", "started_at": started_at, "experiments": [experiment]}


def test_build_summary_follows_the_contract(tmp_path: Path) -> None:
    history = tmp_path / "history"
    history.mkdir()
    for night in range(3):
        summary = earlier_night(T0 - (3 - night) * 86400, {"time_to_migrate_s": 0.3, "rpo_s": 0})
        (history / f"n{night}.json").write_text(json.dumps(summary), encoding="utf-8")
    results = [
        result("zone-failover", make_journal()),
        result("raft-leader-kill", None, verdict="crashed", exit_code=-9),
    ]
    summary = build_summary(results, T0, T0 + 200.5, history, None, commit="abc123", host="ci")
    json.loads(json.dumps(summary))  # plain JSON, Path objects included as text
    assert summary["suite"] == "nightly" and summary["duration_s"] == 200.5
    assert (summary["target"], summary["host"], summary["commit"]) == ("local", "ci", "abc123")
    zone, crashed = summary["experiments"]
    assert "journal" not in zone and zone["file"] == "experiments/zone-failover.yaml"
    assert zone["figures"]["time_to_migrate_s"] == 0.61 and zone["checks"]
    assert zone["tags"] == ["zone", "raft", "nightly"] and zone["title"] == "A zone fails"
    assert crashed["figures"] == {} and crashed["checks"] == [] and crashed["exit_code"] == -9
    # 0.61 s against a median of 0.3 s over 3 nights: +103% > +20%
    assert [(r["experiment"], r["figure"]) for r in summary["regressions"]] == [
        ("zone-failover", "time_to_migrate_s")
    ]
    assert zone["regressed"] is True and crashed["regressed"] is False
    assert summary["score"]["total"] == len(zone["checks"]) + 1
    assert summary["score"]["value"] == pytest.approx(0.5)


def test_build_summary_refuses_bad_tolerances() -> None:
    with pytest.raises(ValueError, match="unknown figure"):
        build_summary([], T0, T0 + 1, None, {"ttft_p95": {"relative": 0.1}}, commit="x")


# --- index.html -------------------------------------------------------------------------------


def nights_of_history(count: int) -> list[dict[str, Any]]:
    return [
        earlier_night(
            T0 - (count - i) * 86400,
            {"availability": 0.9990 + i * 0.0001, "time_to_migrate_s": 0.30 + 0.01 * i},
        )
        | {"score": {"value": 0.9 + i * 0.01}}
        for i in range(count)
    ]


@pytest.fixture
def summary_and_history(tmp_path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    history = nights_of_history(7)
    for i, night in enumerate(history):
        (tmp_path / f"night-{i}.json").write_text(json.dumps(night), encoding="utf-8")
    results = [
        result("zone-failover", make_journal()),
        result("worker-kill", make_journal(), verdict="deviated"),
        result("raft-leader-kill", None, verdict="crashed"),
    ]
    return build_summary(results, T0, T0 + 300, tmp_path, None, commit="f00d"), history


def test_the_index_is_self_contained_and_leads_with_the_regressions(
    tmp_path: Path, summary_and_history: tuple[dict[str, Any], list[dict[str, Any]]]
) -> None:
    summary, history = summary_and_history
    for name in ("zone-failover", "worker-kill"):  # raft-leader-kill crashed: no report
        (tmp_path / "out" / name).mkdir(parents=True)
        (tmp_path / "out" / name / "report.html").write_text("<!doctype html>", encoding="utf-8")
    path = write_index(tmp_path / "out", summary, history)
    html = path.read_text(encoding="utf-8")
    assert path.name == "index.html"
    finder = ExternalReferenceFinder()
    finder.feed(html)
    # the only links are the runs' own reports, by relative path
    assert finder.problems == [
        "a href='zone-failover/report.html'",
        "a href='worker-kill/report.html'",
    ]
    assert not re.search(r"https?://", html)
    assert (
        html.index('id="regressions"') < html.index('id="score"') < html.index('id="experiments"')
    )
    regressions = html[html.index('id="regressions"') : html.index('id="score"')]
    assert 'class="bad"' in regressions and "zone-failover" in regressions
    assert "time to migrate 610 ms vs median 330 ms of 7 night(s)" in regressions
    score = html[html.index('id="score"') : html.index('id="experiments"')]
    assert "(12/12 + 12/12 + 0/1) / 3 = 0.667" in score and "24 of 25 checks met" in score


def test_each_key_figure_has_a_trend_chart_with_text_and_tonight_marked(
    summary_and_history: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    summary, history = summary_and_history
    html = render_index(summary, history)
    row = html[html.index('data-name="zone-failover"') : html.index('data-name="worker-kill"')]
    figures = re.findall(r'data-figure="([a-z0-9_]+)"', row)
    assert figures == list(summary["experiments"][0]["figures"])
    charts = re.findall(r'<svg class="spark".*?</svg>', row, flags=re.S)
    assert len(charts) == len(figures)
    migrate = next(c for c in charts if "time to migrate:" in c)
    assert migrate.count('class="night"') == 7 and "<polyline" in migrate
    assert 'class="tonight regressed"' in migrate and "7 night(s), median 330 ms" in migrate
    first_night = next(c for c in charts if "TTFT p95" in c)  # no history of TTFT: first night
    assert "first night" in first_night and 'class="tonight"' in first_night
    assert "<polyline" not in first_night
    assert re.search(r'id="trend-legend".*earlier nights.*tonight, regressed', html, re.S)
    assert 'data-figure="linearizable"' in row and "first night" in row
    score = re.search(r'<svg class="spark score-trend".*?</svg>', html, flags=re.S)
    assert score and score.group(0).count('class="night"') == 7


def test_the_crashed_row_says_so_and_has_no_link(
    summary_and_history: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    summary, history = summary_and_history
    summary["experiments"][2]["report"] = "/etc/passwd"  # never linked: absolute
    html = render_index(summary, history)
    row = html[html.index('data-name="raft-leader-kill"') :]
    row = row[: row.index("</tr>")]
    assert 'data-verdict="crashed"' in row and "href" not in row
    assert "counts 0 of 1" in row and "raft-leader-kill crashed" in row


def test_hostile_text_is_escaped() -> None:
    summary = {
        "started_at": T0,
        "experiments": [
            {
                "name": "<script>alert(1)</script>",
                "verdict": "passed",
                "report": "javascript:alert(1)",
                "figures": {"availability": 0.5},
                "checks": [],
            }
        ],
        "regressions": [],
        "score": {"value": 0.0, "met": 0, "total": 1, "formula": "<b>f</b>"},
    }
    html = render_index(summary, [])
    assert "<script>" not in html and "&lt;script&gt;" in html and "javascript:" not in html
    assert "&lt;b&gt;f&lt;/b&gt;" in html
    assert "No earlier night on record" in html


def test_a_boolean_figure_counts_its_nights_and_marks_the_flip() -> None:
    history = [
        earlier_night(T0 - (3 - i) * 86400, {"linearizable": True}) | {"score": {}}
        for i in range(3)
    ]
    journal = {"run": [probe("h", {"ok": False, "check": "linearizability", "result": "illegal"})]}
    summary = build_summary([result("zone-failover", journal)], T0, T0 + 1, None, None, commit="x")
    summary["regressions"] = find_regressions(summary, history)
    html = render_index(summary, history)
    card = html[html.index('data-figure="linearizable"') :]
    card = card[: card.index("</svg>")]
    assert "3 night(s), 3 yes" in card and ">no<" in card
    assert 'class="tonight regressed"' in card
