"""The report's "Control plane" section for Raft experiments: leader chart, figures, history.

The journals here copy the shapes of a real `raft-leader-kill` run (observer report, history
check, fault record); the failing variant adds a split brain, a slow failover, an illegal
history and a replica that did not step down.
"""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from reports.controlplane import embeddable_history, leader_stints
from reports.render import render_report
from tests.unit.test_report import ExternalReferenceFinder

START = 1_800_000_000.0  # journal start: t = 0 of the page (there are no load records)
MARK = START + 6.0  # the fault mark t0 of the observer
INJECTED, REMOVED = START + 6.277, START + 9.339
ENDPOINTS = ["http://127.0.0.1:57083", "http://127.0.0.1:46697", "http://127.0.0.1:34735"]
REPLICAS = [
    {"endpoint": e, "id": str(i), "leader": "2", "term": 1, "role": "leader" if i == 2 else "f"}
    for i, e in enumerate(ENDPOINTS)
]

HISTORY_HTML = (
    '<figure class="lz-timeline"><style>.lz-timeline svg{max-width:100%}</style>'
    "<figcaption>key &#x27;k4&#x27;: ok, 3 operations</figcaption>"
    '<svg xmlns="http://www.w3.org/2000/svg" width="986" height="46" viewBox="0 0 986 46" '
    'role="img"><text x="4" y="29">process 0</text><g class="ok"><title>#0 process 0: '
    'write(1) [0, 1]</title><rect x="96.0" y="18.0" width="286.7" height="14" rx="2"/>'
    '<text class="lz-label" x="99.0" y="29.0">write(1)</text></g></svg>'
    '<div class="lz-legend"><span><i style="background:#9aa5b1"></i>operation</span></div>'
    "</figure>"
)

FAILOVER = {
    "ok": True,
    "problems": [],
    "failover_s": 0.4516,
    "failover_bound_s": 1.0,
    "first_write_s": 0.4604,
    "write_bound_s": None,
    "leader_before": {"leader": "2", "term": 1},
    "new_leader": {"leader": "0", "term": 2, "reported_by": ENDPOINTS[0]},
    "leader_changes": 1,
    "split_brain": [],
    "terms_monotonic": True,
    "term_regressions": [],
    "writes_after_fault": {"ok": 212, "fail": 8, "unknown": 1},
    "timeline": [
        {"t": -2.0319, "at": MARK - 2.0319, "leader": "2", "term": 1, "reported_by": ENDPOINTS[2]},
        {"t": 0.4468, "at": MARK + 0.4468, "leader": None, "term": 2, "reported_by": None},
        {"t": 0.4516, "at": MARK + 0.4516, "leader": "0", "term": 2, "reported_by": ENDPOINTS[0]},
    ],
    "t0": 3247.802728078,
    "t0_at": MARK,
    "polls": {e: 580 for e in ENDPOINTS},
    "writes": 298,
    "endpoints": ENDPOINTS,
    "path": "/runs/r1/raft-observer.json",
}

LINEARIZABLE = {
    "ok": True,
    "check": "linearizability",
    "summary": "linearizable: 2735 operations over 5 key(s), model kv, checked in one process "
    "in 0.011 s; 43 failed or pending read(s) dropped",
    "result": "ok",
    "operations": 2778,
    "history_path": "/runs/r1/raft-history.jsonl",
    "verdict": {
        "result": "ok",
        "model": "kv",
        "operations": 2735,
        "dropped": 43,
        "keys_checked": 5,
        "elapsed_s": 0.010525,
        "parallel": False,
        "reason": None,
        "counterexample": None,
        "keys": [{"key": "k4", "result": "ok", "operations": 550, "counterexample": None}],
    },
    "history_html": HISTORY_HTML,
}


def _op(op_id: int, process: int, op: str, value: Any, output: Any, call: float, ret: float):
    return {
        "id": op_id,
        "process": process,
        "op": op,
        "key": "k",
        "input": value,
        "output": output,
        "call": call,
        "return": ret,
        "status": "ok",
    }


COUNTEREXAMPLE = {
    "key": "k",
    "prefix": [_op(0, 0, "write", "1", None, 0.0, 1.0), _op(2, 0, "write", "3", None, 1.5, 1.8)],
    "state_after_prefix": "3",
    "returned": _op(1, 1, "read", None, "2", 2.0, 3.0),
    "candidates": [{"operation": _op(1, 1, "read", None, "2", 2.0, 3.0), "reason": "inconsistent"}],
}

ILLEGAL = {
    **LINEARIZABLE,
    "ok": False,
    "result": "illegal",
    "summary": "NOT linearizable: 3 operations over 1 key(s), model kv, checked in one "
    "process in 0.003 s",
    "operations": 3,
    "verdict": {
        "result": "illegal",
        "model": "kv",
        "operations": 3,
        "dropped": 0,
        "keys_checked": 1,
        "elapsed_s": 0.002669,
        "parallel": False,
        "reason": "key 'k'",
        "counterexample": COUNTEREXAMPLE,
        "keys": [{"key": "k", "result": "illegal", "counterexample": COUNTEREXAMPLE}],
    },
}

SPLIT_BRAIN = {
    **FAILOVER,
    "ok": False,
    "problems": [
        "new leader after 1.800 s > 1.0 s",
        "split brain: 0, 2 all led term 2",
    ],
    "failover_s": 1.8,
    "leader_changes": 2,
    "split_brain": [
        {
            "term": 2,
            "leaders": ["0", "2"],
            "claims": [
                {"leader": "0", "endpoint": ENDPOINTS[0], "at": 1.8},
                {"leader": "2", "endpoint": ENDPOINTS[2], "at": 1.9},
            ],
        }
    ],
    "timeline": [
        {"t": -2.0, "at": MARK - 2.0, "leader": "2", "term": 1, "reported_by": ENDPOINTS[2]},
        {"t": 1.2, "at": MARK + 1.2, "leader": None, "term": 2, "reported_by": None},
        {"t": 1.8, "at": MARK + 1.8, "leader": "0", "term": 2, "reported_by": ENDPOINTS[0]},
    ],
}

STEP_DOWN_FAILED = {
    "ok": False,
    "check": "isolated-leader-steps-down",
    "summary": "isolated raft-2 still claimed leadership (or the majority had none) 1.0s after "
    "the check began",
    "victims": ["raft-2"],
    "stepped_down_s": None,
    "majority_leader": None,
}

POD_KILL = {
    "kind": "pod-kill",
    "victims": ["raft-2"],
    "params": {"restart_after": None},
    "selector": {"labelSelectors": {"role": "raft", "raft-role": "leader"}, "mode": "one"},
    "backend": "local",
    "target": "raft-role=leader, role=raft (mode one)",
    "id": "f1398c9957d3",
    "injected_at": INJECTED,
    "removed_at": REMOVED,
    "details": {"pids": {"raft-2": 4972}, "signal": "SIGKILL"},
    "error": None,
}


def iso(rel: float) -> str:
    return datetime.fromtimestamp(START + rel, tz=UTC).isoformat()


def run_entry(
    name: str,
    provider: tuple[str, str],
    start: float,
    end: float,
    output: Any,
    kind: str = "action",
) -> dict[str, Any]:
    """A method entry as chaoslib records it."""
    module, func = provider
    return {
        "activity": {
            "name": name,
            "type": kind,
            "provider": {"type": "python", "module": module, "func": func},
        },
        "output": output,
        "start": iso(start),
        "status": "succeeded",
        "end": iso(end),
        "duration": end - start,
    }


def raft_journal(
    failover: dict | None = None, history: dict | None = None, step_down: dict | None = None
) -> dict[str, Any]:
    """A raft-leader-kill journal: observer, history, mark, kill, judge, check."""
    failover = copy.deepcopy(failover or FAILOVER)
    history = copy.deepcopy(history or LINEARIZABLE)
    raft = "probes.raft.actions"
    observer = {"kind": "ours", "endpoints": ENDPOINTS, "replicas": REPLICAS, "started_at": 0}
    run = [
        run_entry("start-raft-observer", (raft, "start_observer"), 3.9, 3.93, observer),
        run_entry("mark-fault-time", (raft, "mark_fault"), 5.99, 6.0, {"at": MARK}),
        run_entry("kill-the-leader", ("experiments.faults", "pod_kill"), 6.0, 9.34, POD_KILL),
    ]
    if step_down is not None:
        check = ("probes.consistency", "isolated_replica_stepped_down")
        run.append(run_entry("steps-down", check, 9.4, 10.4, step_down, "probe"))
    judge = (raft, "observer_report")
    check = ("probes.consistency", "history_linearizable")
    run.append(run_entry("failover-and-split-brain", judge, 11.34, 11.35, failover, "probe"))
    run.append(run_entry("history-is-linearizable", check, 11.35, 11.41, history, "probe"))
    verdict = "passed" if failover["ok"] and history["ok"] else "deviated"
    return {
        "chaoslib-version": "1.44.0",
        "experiment": {"title": "The metadata store's leader is killed", "method": []},
        "start": iso(0.0),
        "end": iso(11.42),
        "duration": 11.42,
        "status": "completed",
        "deviated": verdict != "passed",
        "steady_states": {"before": None, "after": None, "during": []},
        "run": run,
        "rollbacks": [],
        "inference_chaos": {
            "verdict": verdict,
            "reasons": [],
            "slos": [{**history, "probe": "history-is-linearizable", "phase": "method"}],
            "faults": [copy.deepcopy(POD_KILL)],
        },
    }


def section(html: str) -> str:
    found = re.search(r'<h2 id="control-plane">.*?<h2 id="users">', html, re.S)
    assert found, "no Control plane section"
    return found.group(0)


def figures(html: str) -> dict[str, tuple[str, str]]:
    """figure name -> (measured, pill) from the section's figures tables."""
    rows = re.findall(
        r"<tr[^>]*>\s*<td>(.*?)</td>\s*<td><strong>(.*?)</strong>.*?"
        r'<span class="pill (\w+)">',
        section(html),
        re.S,
    )
    return {name: (value, pill) for name, value, pill in rows}


def glance(html: str) -> dict[str, str]:
    block = re.search(r'<div class="cards" id="glance">(.*?)</div>\s*<h2', html, re.S).group(1)
    return dict(re.findall(r'class="k">(.*?)</div><div class="v">(.*?)</div>', block))


@pytest.fixture(scope="module")
def passing_html(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("pass") / "report.html"
    return render_report(raft_journal(), None, out).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def failing_html(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("fail") / "report.html"
    journal = raft_journal(SPLIT_BRAIN, ILLEGAL, STEP_DOWN_FAILED)
    return render_report(journal, None, out).read_text(encoding="utf-8")


def test_section_sits_between_the_faults_and_what_users_felt(passing_html: str) -> None:
    order = [passing_html.index(f'<h2 id="{h}">') for h in ("faults", "control-plane", "users")]
    assert order == sorted(order)
    users = re.search(r'<h2 id="users">.*?<h2', passing_html, re.S).group(0)
    assert "No load records" in users and "control plane" in users


def test_leader_chart_names_replicas_and_shades_the_fault(passing_html: str) -> None:
    svgs = re.findall(r"<svg.*?</svg>", section(passing_html), re.S)
    chart = next(s for s in svgs if 'aria-label="Raft leader over time"' in s)
    for label in ("replica 0", "replica 1", "replica 2 (victim)", "no leader", "term 1", "term 2"):
        assert re.search(rf"<text[^>]*>{re.escape(label)}</text>", chart), label
    assert re.search(r'<g id="fault-window-leader-0">\s*<path', chart)
    assert re.search(r'<g id="fault-label-leader-0">\s*<text[^>]*>pod-kill raft-2</text>', chart)
    assert re.search(r"<text[^>]*>no leader for 5 ms \(electing term 2\)</text>", chart)
    assert re.search(r"<text[^>]*>new leader after 452 ms</text>", chart)
    assert "seconds since experiment start" in chart
    assert "split-brain claim" not in chart


def test_stints_are_on_the_pages_time_axis() -> None:
    stints = leader_stints(FAILOVER, START, START + 11.35)
    assert [(s.leader, s.term) for s in stints] == [("2", 1), (None, 2), ("0", 2)]
    assert stints[0].start == pytest.approx(6.0 - 2.0319, abs=1e-3)
    assert stints[1].end - stints[1].start == pytest.approx(0.0048, abs=1e-4)
    assert stints[-1].end == pytest.approx(11.35)
    # Older reports carry only `t` (seconds since the fault mark): the same axis.
    without_at = [{k: v for k, v in e.items() if k != "at"} for e in FAILOVER["timeline"]]
    only_t = leader_stints({**FAILOVER, "timeline": without_at}, START, None)
    assert [s.start for s in only_t] == pytest.approx([s.start for s in stints], abs=1e-6)


def test_figures_of_a_passing_run(passing_html: str) -> None:
    assert figures(passing_html) == {
        "leader before the fault": ("replica 2, term 1", "pass"),
        "new leader": ("replica 0, term 2", "pass"),
        "failover time": ("452 ms", "pass"),
        "first acknowledged write": ("460 ms", "pass"),
        "leader changes": ("1", "pass"),
        "split brain": ("none", "pass"),
        "terms only grow": ("yes", "pass"),
        "writes after the fault": ("212 ok · 8 failed · 1 unknown", "pass"),
    }
    part = section(passing_html)
    assert "first reported by replica 0" in part  # the endpoint named by its replica id
    assert "277 ms before the injection" in part
    assert '<span class="pill pass">linearizable</span>' in part
    assert "2735 operations over 5 key(s)" in part
    assert '<pre class="counterexample">' not in part


def test_figures_of_a_failing_run(failing_html: str) -> None:
    rows = figures(failing_html)
    assert rows["failover time"] == ("1.80 s", "fail")
    assert rows["split brain"] == ("term 2: replicas 0, 2 all led", "fail")
    assert rows["leader changes"] == ("2", "pass")
    assert rows["isolated leader steps down (raft-2)"][1] == "fail"
    part = section(failing_html)
    assert "split brain: 0, 2 all led term 2" in part  # the observer's own problems
    assert re.search(r'<p><span class="pill fail">fail</span>\s*Failover did not hold', part)
    assert re.search(r"<text[^>]*>split-brain claim</text>", part)
    assert '<span class="pill fail">NOT linearizable</span>' in part
    cx = re.search(r'<pre class="counterexample">(.*?)</pre>', part, re.S).group(1)
    assert "key &#39;k&#39; is not linearizable." in cx
    assert "read() -&gt; 2 [2, 3]: inconsistent with state &#39;3&#39;" in cx


def test_glance_shows_failover_and_history(passing_html: str, failing_html: str) -> None:
    assert glance(passing_html) == {
        "verdict": "passed",
        "failover (bound 1.00 s)": "452 ms",
        "history (2,778 ops)": "linearizable",
        "SLOs passed": "1 of 1",
    }
    cards = glance(failing_html)
    assert cards["failover (bound 1.00 s)"] == "1.80 s"
    assert cards["history (3 ops)"] == "NOT linearizable"
    assert cards["SLOs passed"] == "0 of 1"


def test_history_check_is_a_named_row_in_the_slo_table(failing_html: str) -> None:
    slos = re.search(r'<h2 id="slos">.*?</table>', failing_html, re.S).group(0)
    assert "<strong>linearizability</strong>" in slos and "availability" not in slos
    assert '<span class="pill fail">fail</span>' in slos and ">illegal</td>" in slos


@pytest.mark.parametrize("case", ["passing_html", "failing_html"])
def test_page_loads_nothing_and_embeds_the_history_once(
    case: str, request: pytest.FixtureRequest
) -> None:
    html = request.getfixturevalue(case)
    finder = ExternalReferenceFinder()
    finder.feed(html)
    assert finder.problems == []
    assert "www.w3.org" not in html  # the history figure's namespace URL is stripped
    assert html.count('<figure class="lz-timeline">') == 1  # not again in the raw outputs
    assert "shown in the Control plane section" in html


def test_history_markup_that_could_run_or_fetch_is_not_embedded() -> None:
    kept, note = embeddable_history(HISTORY_HTML)
    assert kept.startswith('<figure class="lz-timeline">') and "xmlns" not in kept and not note
    for bad in ("<script>alert(1)</script>", '<img src="x">', '<rect onload="x()"/>'):
        dropped, note = embeddable_history(HISTORY_HTML.replace("</figure>", bad + "</figure>"))
        assert dropped == "" and "could run or fetch" in note


def test_no_section_without_control_plane_outputs(tmp_path: Path) -> None:
    journal = raft_journal()
    journal["run"] = [r for r in journal["run"] if r["activity"]["name"] == "kill-the-leader"]
    journal["inference_chaos"]["slos"] = []
    html = render_report(journal, None, tmp_path / "r.html").read_text(encoding="utf-8")
    assert 'id="control-plane"' not in html and "<svg" not in html
    assert "No load records: nothing to show about what users felt." in html


def test_a_control_plane_probe_that_raised_is_a_failed_figure(tmp_path: Path) -> None:
    journal = raft_journal()
    check = ("probes.consistency", "isolated_replica_stepped_down")
    raised = run_entry("isolated-leader-steps-down", check, 9.4, 9.5, None, "probe")
    raised["status"] = "failed"
    raised["exception"] = [
        "Traceback ...\n",
        "chaoslib.exceptions.ActivityFailed: KeyError: 'http'\n",
    ]
    journal["run"].insert(3, raised)
    html = render_report(journal, None, tmp_path / "r.html").read_text(encoding="utf-8")
    assert figures(html)["isolated-leader-steps-down"] == ("could not measure", "fail")
    assert "ActivityFailed: KeyError: &#39;http&#39;" in section(html)


def test_a_damaged_observer_report_still_renders(tmp_path: Path) -> None:
    journal = raft_journal()
    journal["run"][-2]["output"] = {"timeline": "garbage", "failover_s": None, "ok": False}
    journal["run"][-1]["output"] = {"check": "linearizability", "result": "unknown"}
    journal["inference_chaos"]["slos"] = []
    html = render_report(journal, None, tmp_path / "r.html").read_text(encoding="utf-8")
    rows = figures(html)
    assert rows["new leader"] == ("none seen", "na")
    assert rows["split brain"] == ("—", "inconclusive")
    assert "The observer recorded no leader timeline." in section(html)
    assert '<span class="pill inconclusive">unknown</span>' in section(html)
    assert glance(html)["failover"] == "no new leader"
