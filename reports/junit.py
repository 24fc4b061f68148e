"""The nightly suite as JUnit XML, so a CI server shows each experiment as a test case.

One test suite "inference-chaos nightly"; one test case per experiment (classname: its tags
joined with dots, so CI groups them, else "experiments"). A deviated or regressed experiment is
a failure (message: the first check or SLO it missed with its figures, then its regressions,
on one line; body: every reason), and so is one its stop condition aborted (message: the
breach: the system under test hurt users too much); a failed, crashed or interrupted one is
an error, since the experiment could not be carried out. The score goes into the suite's
properties. Written with the standard library's ElementTree: the format is small and fixed,
so a dependency would add nothing but a pin.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reports.formatting import is_number

SUITE_NAME = "inference-chaos nightly"
FAILURE_VERDICTS = frozenset({"deviated", "aborted"})
ERROR_VERDICTS = frozenset({"failed", "crashed", "interrupted"})
MESSAGE_LIMIT = 500
# XML 1.0 cannot carry these at all; a probe's error text may hold them
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def write_junit(path: Path, summary: dict) -> Path:
    """Write the suite's JUnit XML to path and return it."""
    root = junit_tree(summary)
    ET.indent(root)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=True)
    tmp.replace(out)
    return out


def junit_tree(summary: Mapping[str, Any]) -> ET.Element:
    """The <testsuites> element (a single <testsuite> inside, as every CI reader expects)."""
    experiments = [e for e in summary.get("experiments") or [] if isinstance(e, Mapping)]
    regressions = [r for r in summary.get("regressions") or [] if isinstance(r, Mapping)]
    cases = [_testcase(e, regressions) for e in experiments]
    failures = sum(1 for c in cases if c.find("failure") is not None)
    errors = sum(1 for c in cases if c.find("error") is not None)
    duration = summary.get("duration_s")
    counts = {
        "name": SUITE_NAME,
        "tests": str(len(cases)),
        "failures": str(failures),
        "errors": str(errors),
        "skipped": "0",
        "time": _seconds(duration),
    }
    root = ET.Element("testsuites", counts)
    suite = ET.SubElement(root, "testsuite", counts)
    if summary.get("host"):
        suite.set("hostname", _text(summary["host"]))
    properties = ET.SubElement(suite, "properties")
    for name, value in _properties(summary):
        ET.SubElement(properties, "property", {"name": name, "value": _text(value)})
    suite.extend(cases)
    return root


def _properties(summary: Mapping[str, Any]) -> list[tuple[str, Any]]:
    score = summary.get("score") if isinstance(summary.get("score"), Mapping) else {}
    value = score.get("value")
    found = [
        ("score", f"{value:.4f}" if is_number(value) else "none"),
        ("score.met", score.get("met", 0)),
        ("score.total", score.get("total", 0)),
        ("score.formula", score.get("formula", "")),
        ("regressions", len(summary.get("regressions") or [])),
    ]
    for key in ("target", "commit", "started_at", "ended_at"):
        if summary.get(key) is not None:
            found.append((key, summary[key]))
    return found


def _testcase(entry: Mapping[str, Any], regressions: list[Mapping[str, Any]]) -> ET.Element:
    name = _text(entry.get("name") or "unnamed")
    tags = [str(t) for t in entry.get("tags") or [] if str(t)]
    case = ET.Element(
        "testcase",
        {
            "classname": _text(".".join(tags) or "experiments"),
            "name": name,
            "time": _seconds(entry.get("duration_s")),
        },
    )
    if entry.get("file"):
        case.set("file", _text(entry["file"]))
    verdict = str(entry.get("verdict") or "crashed")
    reasons = [str(r) for r in entry.get("reasons") or []]
    mine = [r for r in regressions if r.get("experiment") == entry.get("name")]
    regression_lines = [f"regressed: {_regression_line(r)}" for r in mine]
    if verdict in ERROR_VERDICTS:
        message = reasons[0] if reasons else f"the experiment {verdict}"
        _outcome(case, "error", verdict, [message, *regression_lines], reasons + regression_lines)
    elif verdict in FAILURE_VERDICTS or mine or entry.get("regressed"):
        headline = [_first_miss(entry, reasons)] if verdict in FAILURE_VERDICTS else []
        kind = verdict if verdict in FAILURE_VERDICTS else "regressed"
        _outcome(case, "failure", kind, headline + regression_lines, reasons + regression_lines)
    elif verdict != "passed":  # a verdict this file does not know: never a silent pass
        _outcome(case, "error", verdict, [f"unknown verdict {verdict!r}"], reasons)
    checks = [c for c in entry.get("checks") or [] if isinstance(c, Mapping)]
    if checks or entry.get("report"):
        out = ET.SubElement(case, "system-out")
        lines = [
            f"[{'met' if c.get('ok') is True else 'NOT MET'}] {c.get('name')} "
            f"({c.get('phase')}): {c.get('summary')}"
            for c in checks
        ]
        if entry.get("report"):
            lines.append(f"report: {entry['report']}")
        out.text = _text("\n".join(lines))
    return case


def _outcome(case: ET.Element, tag: str, kind: str, message: list[str], body: list[str]) -> None:
    element = ET.SubElement(case, tag, {"message": _one_line("; ".join(message)), "type": kind})
    element.text = _text("\n".join(body) or kind)


def _first_miss(entry: Mapping[str, Any], reasons: list[str]) -> str:
    """The missed hypothesis probe or SLO with its figures; the method's first, since that is
    what the fault did, then the hypothesis after; the verdict's first reason otherwise, and
    always for an aborted run, whose first reason is the breach that stopped it."""
    if entry.get("verdict") == "aborted" and reasons:
        return reasons[0]
    checks = [c for c in entry.get("checks") or [] if isinstance(c, Mapping)]
    missed = [c for c in checks if c.get("ok") is not True]
    for phase in ("method", "hypothesis-after", "hypothesis-before"):
        for check in missed:
            if check.get("phase") == phase:
                return f"{check.get('name')} ({phase}): {check.get('summary')}"
    return reasons[0] if reasons else "deviated"


def _regression_line(regression: Mapping[str, Any]) -> str:
    if regression.get("summary"):
        return str(regression["summary"])
    return (
        f"{regression.get('figure')} {regression.get('value')} vs median "
        f"{regression.get('baseline')}"
    )


def _seconds(value: Any) -> str:
    return f"{float(value):.3f}" if is_number(value) and 0 <= value < math.inf else "0"


def _text(value: Any) -> str:
    return _NOT_XML.sub("\ufffd", str(value))


def _one_line(text: str) -> str:
    line = " ".join(_text(text).split())
    return line if len(line) <= MESSAGE_LIMIT else line[: MESSAGE_LIMIT - 1] + "…"
