"""The report's "Tasks" section: task maps before and after, the migration chart, the figures.

The journal copies the shape of a `gpu-xid` run on a 3-node, 2-GPU cluster with four tasks: the
XID 79 takes node-1's GPU 0 off the bus, so task-1 moves to node-2 GPU 1; a second journal adds
a node crash where one task is never served again, one is lost and one is duplicated.
"""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from reports.render import render_report
from reports.tasks import Placement, task_map, tasks_section, victim_gpus
from tests.unit.test_report import ExternalReferenceFinder, make_journal

START = 1_800_000_000.0  # journal start: t = 0 of the page (no load records)
INJECTED, REMOVED = START + 5.0, START + 12.0


def at(node: str, *gpus: int) -> dict[str, Any]:
    return {"node": node, "gpus": list(gpus)}


XID_FAULT = {
    "id": "f-77",
    "kind": "gpu-xid",
    "victims": ["worker-n1-g0"],
    "injected_at": INJECTED,
    "removed_at": REMOVED,
}

MIGRATION = {
    "ok": True,
    "check": "task-migration",
    "bound_s": 1.0,
    "fault": XID_FAULT,
    "tasks": [
        {
            "task": "task-1",
            "from": at("node-1", 0),
            "to": at("node-2", 1),
            "detected_at": INJECTED + 0.21,
            "serving_at": INJECTED + 0.48,
            "routed_at": INJECTED + 0.52,
            "seconds_from_detection": 0.31,
            "seconds_from_fault": 0.52,
        }
    ],
    "lost": [],
    "duplicated": [],
    "before": {
        "task-0": at("node-0", 0),
        "task-1": at("node-1", 0),
        "task-2": at("node-1", 1),
        "task-3": at("node-2", 0),
    },
    "after": {
        "task-0": at("node-0", 0),
        "task-1": at("node-2", 1),
        "task-2": at("node-1", 1),
        "task-3": at("node-2", 0),
    },
    "detection_s": 0.21,
    "max_migration_s": 0.31,
    "summary": "1 task moved off worker-n1-g0 and serving 310 ms after detection; none lost",
}

LOAD_BALANCE = {
    "ok": True,
    "check": "load-balance",
    "max_over_mean_minus_1": 0.031,
    "bound": 0.05,
    "per_member": {"node-0": 1031, "node-1": 978, "node-2": 991},
}
RTO = {"ok": False, "check": "rto", "rto_s": 12.5, "bound_s": 10.0, "summary": "slow"}
RPO = {"ok": True, "check": "rpo", "rpo_s": 0.0, "lost_writes": []}

CRASH_FAULT = {
    "id": "f-78",
    "kind": "node-crash",
    "victims": ["worker-n1-g0", "worker-n1-g1", "store-1"],
    "injected_at": INJECTED,
    "removed_at": None,
}

CRASH = {
    **MIGRATION,
    "ok": False,
    "fault": CRASH_FAULT,
    "tasks": [
        {
            **MIGRATION["tasks"][0],
            "serving_at": INJECTED + 1.61,
            "routed_at": INJECTED + 1.65,
            "seconds_from_detection": 1.44,
            "seconds_from_fault": 1.65,
        },
        {
            "task": "task-2",
            "from": at("node-1", 1),
            "to": at("node-0", 1),
            "detected_at": INJECTED + 0.21,
            "serving_at": None,
            "routed_at": None,
            "seconds_from_detection": None,
            "seconds_from_fault": None,
        },
    ],
    "lost": ["task-3"],
    "duplicated": [
        {"task": "task-0", "workers": ["worker-n2-g0"], "reason": "routed outside its placement"}
    ],
    "after": {"task-0": at("node-0", 0), "task-1": at("node-2", 1), "task-2": at("node-0", 1)},
    "max_migration_s": None,
    "summary": "task-2 never served again; task-3 lost; task-0 served twice",
}


def iso(rel: float) -> str:
    return datetime.fromtimestamp(START + rel, tz=UTC).isoformat()


def run_entry(name: str, func: str, start: float, output: Any, kind: str = "probe") -> dict:
    return {
        "activity": {
            "name": name,
            "type": kind,
            "provider": {"type": "python", "module": "probes.migration", "func": func},
        },
        "output": output,
        "start": iso(start),
        "status": "succeeded",
        "end": iso(start + 0.1),
        "duration": 0.1,
    }


def tasks_journal(migration: dict | None = None, fault: dict | None = None) -> dict[str, Any]:
    """inject the fault, then the migration report and the recovery checks."""
    migration = copy.deepcopy(migration or MIGRATION)
    fault = copy.deepcopy(fault or XID_FAULT)
    run = [
        run_entry("xid-79-on-node-1", "gpu_xid", 4.99, {"fault_id": fault["id"]}, "action"),
        run_entry("tasks-migrated", "migration_report", 13.0, migration),
        run_entry("load-is-balanced", "load_balance", 13.1, copy.deepcopy(LOAD_BALANCE)),
        run_entry("rto", "rto", 13.2, copy.deepcopy(RTO)),
        run_entry("rpo", "rpo", 13.3, copy.deepcopy(RPO)),
    ]
    verdict = "passed" if migration["ok"] else "deviated"
    return {
        "experiment": {"title": "A GPU falls off the bus", "method": []},
        "start": iso(0.0),
        "end": iso(14.0),
        "duration": 14.0,
        "status": "completed",
        "deviated": verdict != "passed",
        "steady_states": {"before": None, "after": None, "during": []},
        "run": run,
        "rollbacks": [],
        "inference_chaos": {
            "verdict": verdict,
            "reasons": [],
            "slos": [{**migration, "probe": "tasks-migrated", "phase": "method"}],
            "faults": [{**fault, "backend": "local", "params": {"xid": 79}}],
        },
    }


def section(html: str) -> str:
    found = re.search(r'<h2 id="tasks">.*?<h2 id="users">', html, re.S)
    assert found, "no Tasks section"
    return found.group(0)


def grid(html: str, phase: str) -> dict[tuple[str, int], tuple[str, list[str], str]]:
    """(node, gpu) -> (css classes, task ids, notes) of one task map."""
    part = re.search(rf'<div class="task-map-{phase}">(.*?)</table>', section(html), re.S)
    assert part, f"no {phase} map"
    cells = {}
    for node, row in re.findall(r'<tr data-node="([^"]+)">(.*?)</tr>', part.group(1), re.S):
        for css, gpu, body in re.findall(
            r'<td class="([^"]+)" data-gpu="(\d+)"[^>]*>(.*?)</td>', row, re.S
        ):
            tasks = re.findall(r'<span class="task">(.*?)</span>', body)
            notes = " ".join(re.findall(r'<span class="cell-note">(.*?)</span>', body))
            cells[(node, int(gpu))] = (css, tasks, notes)
    return cells


def figures(html: str) -> dict[str, tuple[str, str]]:
    rows = re.findall(
        r"<tr[^>]*>\s*<td>(.*?)</td>\s*<td><strong>(.*?)</strong>.*?<span class=\"pill (\w+)\">",
        re.search(r'<table class="cp-figures">.*?</table>', section(html), re.S).group(0),
        re.S,
    )
    return {name: (value, pill) for name, value, pill in rows}


@pytest.fixture(scope="module")
def passing_html(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("pass") / "report.html"
    return render_report(tasks_journal(), None, out).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def crash_html(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("crash") / "report.html"
    return render_report(tasks_journal(CRASH, CRASH_FAULT), None, out).read_text(encoding="utf-8")


def test_section_sits_between_the_faults_and_what_users_felt(passing_html: str) -> None:
    order = [passing_html.index(f'<h2 id="{h}">') for h in ("faults", "tasks", "users")]
    assert order == sorted(order)
    recovery = re.search(r'<h2 id="recovery">.*?<h2', passing_html, re.S).group(0)
    assert 'href="#tasks"' in recovery


def test_maps_have_a_row_per_node_and_a_cell_per_gpu(passing_html: str) -> None:
    before, after = grid(passing_html, "before"), grid(passing_html, "after")
    expected = {(f"node-{n}", g) for n in range(3) for g in range(2)}
    assert set(before) == expected and set(after) == expected
    assert before[("node-1", 0)][1] == ["task-1"]
    assert after[("node-2", 1)][1] == ["task-1"]
    assert after[("node-1", 0)][1] == []
    assert before[("node-2", 1)][1] == [] and "idle" in before[("node-2", 1)][0].split()


def test_the_moved_task_and_the_failed_gpu_are_marked(passing_html: str) -> None:
    before, after = grid(passing_html, "before"), grid(passing_html, "after")
    css, tasks, note = after[("node-2", 1)]
    assert "moved" in css.split() and note == "← node-1 g0"
    css, tasks, note = after[("node-1", 0)]
    assert "failed" in css.split() and note == "failed GPU"
    css, tasks, note = before[("node-1", 0)]
    assert {"leaving", "victim"} <= set(css.split()) and note == "→ node-2 g1"
    unmoved = [c for k, c in after.items() if k not in {("node-2", 1), ("node-1", 0)}]
    assert not any({"moved", "failed"} & set(c[0].split()) for c in unmoved)


def test_migration_chart_is_inline_svg_with_legend_and_fault_window(passing_html: str) -> None:
    svgs = re.findall(r"<svg.*?</svg>", section(passing_html), re.S)
    assert len(svgs) == 1
    chart = svgs[0]
    assert 'aria-label="Task migration timeline"' in chart
    for text in (
        "detection → serving (model loaded)",
        "serving → routed (in the routing table)",
        "failure detected",
        "bound (routed by then at the latest)",
        "fault: gpu-xid worker-n1-g0",
        "task-1 → node-2 g1",
        "310 ms",  # detection (0.21 s) to routed (0.52 s)
        "seconds since the fault was injected (fault removed at +7.0 s, beyond the right edge)",
    ):
        assert re.search(rf"<text[^>]*>{re.escape(text)}</text>", chart), text
    assert re.search(r'<g id="fault-window-migration-0">\s*<path', chart)
    assert re.search(r'<g id="migration-serving-0">\s*<path', chart)
    assert re.search(r'<g id="migration-routed-0">\s*<path', chart)


def test_figures_of_a_passing_run(passing_html: str) -> None:
    assert figures(passing_html) == {
        "migration check": ("held", "pass"),
        "detection": ("210 ms", "pass"),
        "slowest migration": ("310 ms", "pass"),
        "tasks left on the failed capacity": ("none", "pass"),
        "tasks lost": ("none", "pass"),
        "tasks duplicated": ("none", "pass"),
        "load balance, max/mean − 1": ("3.1%", "pass"),
        "RTO": ("12.50 s", "fail"),
        "RPO": ("0 ms · 0 acknowledged write(s) lost", "pass"),
    }
    part = section(passing_html)
    assert "per member: node-0 1,031, node-2 991, node-1 978" in part
    moves = re.search(r'<table class="task-moves">.*?</table>', part, re.S).group(0)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", moves, re.S)
    assert cells[:8] == [
        "<strong>task-1</strong>",
        "node-1 g0",
        "node-2 g1",
        "+0.21 s",
        "+0.48 s",
        "+0.52 s",
        "<strong>310 ms</strong>",
        "520 ms",
    ]
    assert '<span class="pill pass">pass</span>' in moves


def test_glance_shows_the_slowest_migration(passing_html: str, crash_html: str) -> None:
    block = re.search(r'<div class="cards" id="glance">(.*?)</div>\s*<h2', passing_html, re.S)
    cards = dict(re.findall(r'class="k">(.*?)</div><div class="v">(.*?)</div>', block.group(1)))
    assert cards["slowest migration (bound 1.00 s)"] == "310 ms"
    assert "tasks lost" not in cards
    block = re.search(r'<div class="cards" id="glance">(.*?)</div>\s*<h2', crash_html, re.S)
    cards = dict(re.findall(r'class="k">(.*?)</div><div class="v">(.*?)</div>', block.group(1)))
    assert cards["slowest migration (bound 1.00 s)"] == "not recovered"
    assert cards["tasks lost"] == "1"


def test_a_node_crash_with_lost_and_unserved_tasks(crash_html: str) -> None:
    before, after = grid(crash_html, "before"), grid(crash_html, "after")
    assert all("failed" in after[("node-1", g)][0].split() for g in (0, 1))
    assert before[("node-2", 0)][2] == "lost" and "lost" in before[("node-2", 0)][0].split()
    assert "duplicated" in after[("node-0", 0)][0].split()
    assert "duplicated" not in before[("node-0", 0)][0].split()
    assert after[("node-0", 1)][2] == "← node-1 g1"
    rows = figures(crash_html)
    assert rows["migration check"] == ("did not hold", "fail")
    assert rows["slowest migration"] == ("not recovered", "fail")
    assert rows["tasks lost"] == ("task-3", "fail")
    assert rows["tasks duplicated"] == (
        "task-0 routed outside its placement (worker-n2-g0)",
        "fail",
    )
    part = section(crash_html)
    assert "Other victims of the fault (no GPU cell): store-1." in part
    chart = re.search(r"<svg.*?</svg>", part, re.S).group(0)
    assert re.search(r"<text[^>]*>never served</text>", chart)
    assert re.search(r"<text[^>]*>not routed by the end of the check</text>", chart)
    assert re.search(r"<text[^>]*>[^<]*\(fault still active, beyond the right edge\)</text>", chart)
    moves = re.search(r'<table class="task-moves">.*?</table>', part, re.S).group(0)
    assert moves.count('<span class="pill fail">fail</span>') == 2  # 1.44 s > 1 s, never served
    assert re.search(r"<text[^>]*>1.44 s</text>", chart)  # detection to routed


@pytest.mark.parametrize("case", ["passing_html", "crash_html"])
def test_page_loads_nothing(case: str, request: pytest.FixtureRequest) -> None:
    html = request.getfixturevalue(case)
    finder = ExternalReferenceFinder()
    finder.feed(html)
    assert finder.problems == []
    assert "http://" not in html and "https://" not in html


def test_no_section_without_a_migration_report(tmp_path: Path) -> None:
    journal = tasks_journal()
    journal["run"] = [r for r in journal["run"] if r["activity"]["name"] != "tasks-migrated"]
    journal["inference_chaos"]["slos"] = []
    html = render_report(journal, None, tmp_path / "r.html").read_text(encoding="utf-8")
    assert 'id="tasks"' not in html and 'class="task-map"' not in html and "<svg" not in html
    other = render_report(make_journal(), None, tmp_path / "o.html").read_text(encoding="utf-8")
    assert 'id="tasks"' not in other and "slowest migration" not in other


def test_the_slo_list_copy_is_found_when_the_run_has_none() -> None:
    journal = tasks_journal()
    journal["run"] = journal["run"][:1]  # only the fault; the verdict control kept its copy
    found = tasks_section(journal)
    assert found is not None
    assert found["migrations"][0]["map"]["moved"] == ["task-1"]


def test_a_damaged_report_still_renders(tmp_path: Path) -> None:
    damaged = {
        "check": "task-migration",
        "ok": False,
        "tasks": "garbage",
        "before": [1],
        "fault": 3,
    }
    journal = tasks_journal(damaged)
    html = render_report(journal, None, tmp_path / "r.html").read_text("utf-8")
    assert "<svg" not in section(html)
    assert figures(html)["detection"] == ("not detected", "fail")
    # Without its own fault record the run's faults name the failed GPU.
    after = grid(html, "after")
    assert list(after) == [("node-1", 0)] and "failed" in after[("node-1", 0)][0].split()
    journal["inference_chaos"]["faults"] = []
    html = render_report(journal, None, tmp_path / "r.html").read_text("utf-8")
    assert "there is no task map to draw" in section(html)


def test_victims_name_gpus_nodes_and_other_processes() -> None:
    gpus, nodes, others = victim_gpus(["worker-n10-g3", "node-2", "store-1", "worker-n0-g0"])
    assert gpus == {("node-10", 3), ("node-0", 0)}
    assert nodes == {"node-2"} and others == ["store-1"]
    grid_ = task_map(
        {"task-0": Placement("node-0", (0,))},
        {"task-0": Placement("node-0", (0,))},
        ["worker-n10-g3", "node-2"],
    )
    assert [r["node"] for r in grid_["after"]] == ["node-0", "node-2", "node-10"]
    assert grid_["gpus"] == [0, 1, 2, 3]
    assert all("failed" in c["css"] for c in grid_["after"][1]["cells"])  # the whole node
    assert grid_["after"][1]["note"] == "failed node"


def test_a_task_on_two_gpus_fills_both_cells() -> None:
    placement = Placement.parse({"node": "node-3", "gpus": [1, 0]})
    assert placement == Placement("node-3", (0, 1)) and placement.text() == "node-3 g0+1"
    grid_ = task_map({"task-9": placement}, {"task-9": placement})
    assert [c["tasks"] for c in grid_["before"][0]["cells"]] == [["task-9"], ["task-9"]]


def test_a_large_cluster_shows_only_the_nodes_that_changed() -> None:
    before = {f"task-{n}": Placement(f"node-{n}", (0,)) for n in range(40)}
    after = {**before, "task-7": Placement("node-30", (1,))}
    grid_ = task_map(before, after, ["worker-n7-g0"])
    assert [r["node"] for r in grid_["after"]] == ["node-7", "node-30"]
    assert grid_["hidden_nodes"] == 38
    assert grid_["after"][1]["cells"][1]["tasks"] == ["task-7"]
    assert "moved" in grid_["after"][1]["cells"][1]["css"]


def test_a_check_run_twice_names_where_each_ran() -> None:
    journal = tasks_journal()
    after = run_entry("load-is-balanced", "load_balance", 13.5, {**LOAD_BALANCE, "ok": False})
    journal["steady_states"]["after"] = {"steady_state_met": False, "probes": [after]}
    rows = {r["name"]: r["pill"] for r in tasks_section(journal)["migrations"][0]["figures"]}
    assert rows["load balance, max/mean − 1 (method)"] == "pass"
    assert rows["load balance, max/mean − 1 (hypothesis after)"] == "fail"
    assert "RTO" in rows  # checks run once keep their plain name


def test_the_migration_probes_own_report_renders(tmp_path: Path) -> None:
    """The report as probes.migration builds it from the store (an xid 79 on node-1 GPU 0)."""
    from probes.migration import analyse

    before = {f"task-{i}": at(f"node-{i}", 0) for i in range(3)}
    after = {**before, "task-1": at("node-2", 1)}
    detected = {"kind": "detected", "at": INJECTED + 0.2, "worker": "worker-n1-g0"}
    moved = {
        "kind": "migration",
        "task": "task-1",
        "reason": "xid 79",
        "from": before["task-1"],
        "to": after["task-1"],
        "detected_at": INJECTED + 0.2,
        "assigned_at": INJECTED + 0.22,
        "serving_at": INJECTED + 0.45,
        "routed_at": INJECTED + 0.47,
        "epoch": 2,
    }
    cluster = {
        "spec": {"tasks": [{"id": t, "gpus": 1} for t in before]},
        "assignment": {"epoch": 2, "placements": after, "unplaceable": []},
        "events": [
            {"kind": "assignment", "at": INJECTED - 30, "epoch": 1, "before": {}, "after": before},
            {**detected, "node": "node-1", "gpu": 0, "reason": "xid 79", "xid": 79},
            {
                "kind": "assignment",
                "at": INJECTED + 0.22,
                "epoch": 2,
                "before": before,
                "after": after,
            },
            moved,
        ],
        "routing": [
            {
                "name": f"worker-n{p['node'][5:]}-g{p['gpus'][0]}",
                "url": "u",
                "labels": {"node": p["node"], "gpu": str(p["gpus"][0]), "task": t},
            }
            for t, p in after.items()
        ],
    }
    locations = {f"worker-n{n}-g{g}": (f"node-{n}", g) for n in range(3) for g in range(2)}
    report = analyse({**XID_FAULT, "details": {}}, cluster, locations, bound_s=1.0)
    html = render_report(tasks_journal(report), None, tmp_path / "r.html").read_text("utf-8")
    after_map = grid(html, "after")
    assert after_map[("node-2", 1)][1:] == (["task-1"], "← node-1 g0")
    assert "failed" in after_map[("node-1", 0)][0].split()
    rows = figures(html)
    assert rows["migration check"] == ("held", "pass")
    assert rows["slowest migration"] == ("270 ms", "pass")  # detection to routed
    assert rows["detection"] == ("200 ms", "pass")
    chart = re.search(r"<svg.*?</svg>", section(html), re.S).group(0)
    assert re.search(r"<text[^>]*>270 ms</text>", chart)
    assert "xid 79" in re.search(r'<table class="task-moves">.*?</table>', html, re.S).group(0)


def test_a_task_stranded_on_the_failed_gpu_fails_and_is_not_charted() -> None:
    stayed = {
        "task": "task-1",
        "from": at("node-1", 0),
        "to": at("node-1", 0),
        "moved": False,
        "detected_at": None,
        "serving_at": None,
        "routed_at": None,
        "seconds_from_detection": None,
        "seconds_from_fault": None,
    }
    report = {
        **MIGRATION,
        "ok": False,
        "tasks": [stayed],
        "stranded": ["task-1"],
        "after": MIGRATION["before"],
    }
    view = tasks_section(tasks_journal(report))["migrations"][0]
    row = view["task_rows"][0]
    assert (row["to"], row["pill"], row["routed"]) == ("stayed on node-1 g0", "fail", "—")
    assert view["chart_svg"] == "" and "no migration to draw" in view["chart_note"]
    stuck = next(c for c in view["map"]["after"][1]["cells"] if c["gpu"] == 0)
    assert stuck["tasks"] == ["task-1"] and stuck["note"] == "still on a failed GPU"
    rows = {r["name"]: (r["value"], r["pill"]) for r in view["figures"]}
    assert rows["tasks left on the failed capacity"] == ("task-1", "fail")
