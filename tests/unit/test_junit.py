"""The suite's JUnit XML: one test case per experiment, failures for deviated or regressed runs,
errors for runs that could not be carried out, the score as properties."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from reports.junit import write_junit


def check(name: str, ok: bool, summary: str, phase: str = "method") -> dict[str, Any]:
    return {"name": name, "ok": ok, "summary": summary, "phase": phase}


def make_summary() -> dict[str, Any]:
    return {
        "suite": "nightly",
        "started_at": 1_800_000_000.0,
        "ended_at": 1_800_000_600.0,
        "duration_s": 600.25,
        "target": "local",
        "host": "ci-3",
        "commit": "abc123",
        "score": {"value": 0.6875, "met": 17, "total": 20, "formula": "mean of met/total"},
        "regressions": [
            {
                "experiment": "node-drain",
                "figure": "balance",
                "value": 0.06,
                "baseline": 0.014,
                "change": 0.046,
                "tolerance": {"absolute": 0.02},
                "summary": "load imbalance 6.0% vs median 1.4% of 7 night(s) (+4.6 pp, "
                "tolerance 2 pp)",
            }
        ],
        "experiments": [
            {
                "name": "worker-kill",
                "verdict": "passed",
                "duration_s": 61.5,
                "tags": ["worker", "pod-kill", "nightly"],
                "reasons": [],
                "report": "worker-kill/report.html",
                "checks": [check("availability-slo", True, "availability 99.95%")],
            },
            {
                "name": "gpu-ecc",
                "verdict": "deviated",
                "duration_s": 50.2,
                "tags": [],
                "reasons": [
                    "SLO missed: availability 99.413% vs target 99.9%",
                    "hypothesis not met after the method (availability-slo)",
                ],
                "checks": [
                    check("availability-slo", False, "availability 99.413%", "hypothesis-after"),
                    check("tasks-migrated", False, "task-migration: 1 lost\nsecond line"),
                ],
            },
            {
                "name": "node-drain",
                "verdict": "passed",
                "duration_s": 44.0,
                "tags": ["node", "drain"],
                "regressed": True,
                "reasons": [],
                "checks": [check("load-is-balanced", True, "max/mean - 1 = 6.0%")],
            },
            {
                "name": "raft-leader-kill",
                "verdict": "crashed",
                "duration_s": None,
                "reasons": ["chaos run ended by SIGKILL \x07 after 12 s"],
                "checks": [],
            },
            {"name": "zone-failover", "verdict": "failed", "duration_s": 3.0, "reasons": []},
        ],
    }


def parse(tmp_path: Path, summary: dict[str, Any]) -> ET.Element:
    path = write_junit(tmp_path / "out" / "junit.xml", summary)
    assert path == tmp_path / "out" / "junit.xml"
    return ET.parse(path).getroot()


def cases(root: ET.Element) -> dict[str, ET.Element]:
    return {c.get("name"): c for c in root.iter("testcase")}


def test_one_suite_with_one_case_per_experiment(tmp_path: Path) -> None:
    root = parse(tmp_path, make_summary())
    (suite,) = root.findall("testsuite")
    assert suite.get("name") == "inference-chaos nightly" == root.get("name")
    counts = {k: suite.get(k) for k in ("tests", "failures", "errors", "time")}
    assert counts == {"tests": "5", "failures": "2", "errors": "2", "time": "600.250"}
    found = cases(root)
    assert list(found) == [
        "worker-kill",
        "gpu-ecc",
        "node-drain",
        "raft-leader-kill",
        "zone-failover",
    ]
    assert found["worker-kill"].get("classname") == "worker.pod-kill.nightly"
    assert found["gpu-ecc"].get("classname") == "experiments"
    assert found["worker-kill"].get("time") == "61.500"
    assert found["raft-leader-kill"].get("time") == "0"


def test_a_passed_run_has_neither_failure_nor_error(tmp_path: Path) -> None:
    case = cases(parse(tmp_path, make_summary()))["worker-kill"]
    assert case.find("failure") is None and case.find("error") is None
    out = case.findtext("system-out")
    assert "[met] availability-slo (method)" in out and "worker-kill/report.html" in out


def test_a_deviated_run_fails_with_the_missed_check_on_one_line(tmp_path: Path) -> None:
    failure = cases(parse(tmp_path, make_summary()))["gpu-ecc"].find("failure")
    assert failure is not None and failure.get("type") == "deviated"
    # the method's miss first: it is what the fault did
    assert failure.get("message") == "tasks-migrated (method): task-migration: 1 lost second line"
    assert failure.text.splitlines() == make_summary()["experiments"][1]["reasons"]


def test_a_regression_fails_a_passed_run_and_is_named(tmp_path: Path) -> None:
    failure = cases(parse(tmp_path, make_summary()))["node-drain"].find("failure")
    assert failure is not None and failure.get("type") == "regressed"
    assert failure.get("message").startswith("regressed: load imbalance 6.0% vs median 1.4%")
    assert "tolerance 2 pp" in failure.text


def test_a_failed_or_crashed_run_is_an_error(tmp_path: Path) -> None:
    found = cases(parse(tmp_path, make_summary()))
    crashed = found["raft-leader-kill"].find("error")
    assert crashed is not None and crashed.get("type") == "crashed"
    assert crashed.get("message") == "chaos run ended by SIGKILL \ufffd after 12 s"  # XML-safe
    assert found["raft-leader-kill"].find("failure") is None
    failed = found["zone-failover"].find("error")
    assert failed is not None and failed.get("message") == "the experiment failed"


def test_regressions_of_an_errored_run_are_in_its_message(tmp_path: Path) -> None:
    summary = make_summary()
    summary["regressions"][0]["experiment"] = "zone-failover"
    error = cases(parse(tmp_path, summary))["zone-failover"].find("error")
    assert "; regressed: load imbalance 6.0%" in error.get("message")


def test_the_score_is_a_property(tmp_path: Path) -> None:
    root = parse(tmp_path, make_summary())
    properties = {p.get("name"): p.get("value") for p in root.iter("property")}
    assert properties["score"] == "0.6875"
    assert (properties["score.met"], properties["score.total"]) == ("17", "20")
    assert properties["regressions"] == "1" and properties["commit"] == "abc123"


def test_an_empty_summary_is_still_valid_junit(tmp_path: Path) -> None:
    root = parse(tmp_path, {"experiments": [], "score": {"value": None}})
    assert root.find("testsuite").get("tests") == "0"
    assert {p.get("name"): p.get("value") for p in root.iter("property")}["score"] == "none"
