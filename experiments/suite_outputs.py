"""The night's outputs and its exit code: summary.json, junit.xml and index.html are built by
reports.suite and reports.junit from the suite's results; this module only calls them, prints
the closing lines and turns the summary into the exit code."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from experiments.suite_catalogue import SuiteError

EXIT_PASSED, EXIT_FAILED, EXIT_CANNOT_RUN = 0, 1, 2


def exit_code(summary: Mapping[str, Any], suite_problem: str | None = None) -> int:
    """2 when the suite could not do its job, 1 when an experiment did not pass or a figure
    regressed, 0 otherwise."""
    if suite_problem:
        return EXIT_CANNOT_RUN
    experiments = summary.get("experiments") or []
    if not experiments:
        return EXIT_CANNOT_RUN
    if any(e.get("verdict") != "passed" for e in experiments) or summary.get("regressions"):
        return EXIT_FAILED
    return EXIT_PASSED


def load_tolerances(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SuiteError(f"--tolerances {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SuiteError(f"--tolerances {path}: expected a mapping of figure to tolerance")
    from reports.suite import resolve_tolerances

    try:
        resolve_tolerances(data)
    except ValueError as exc:
        raise SuiteError(f"--tolerances {path}: {exc}") from None
    return data


def reports() -> tuple[Any, Any]:
    try:
        from reports import junit, suite
    except ImportError as exc:
        raise SuiteError(f"the suite's reports are missing: {exc}") from None
    return suite, junit


def write_outputs(
    out: Path,
    results: list[dict[str, Any]],
    started_at: float,
    ended_at: float,
    history_dir: Path | None,
    tolerances: dict[str, Any] | None,
    history: list[dict[str, Any]],
    target: str = "local",
) -> dict[str, Any]:
    """summary.json, junit.xml and index.html in `out`; returns the summary."""
    suite_reports, junit = reports()
    summary = suite_reports.build_summary(
        results, started_at, ended_at, history_dir, tolerances, target=target
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    junit.write_junit(out / "junit.xml", summary)
    suite_reports.write_index(out, summary, history)
    return summary


def print_tail(summary: Mapping[str, Any], out: Path) -> None:
    experiments = summary.get("experiments") or []
    passed = sum(1 for e in experiments if e.get("verdict") == "passed")
    score = (summary.get("score") or {}).get("value")
    line = f"nightly: {passed}/{len(experiments)} passed"
    if isinstance(score, int | float):
        line += f", score {score:.2f}"
    regressions = summary.get("regressions") or []
    if regressions:
        line += f", {len(regressions)} regression(s)"
    print(f"{line} in {float(summary.get('duration_s') or 0):.0f}s; {out / 'index.html'}")
    for r in regressions:
        print(
            f"  regression: {r.get('experiment')} {r.get('figure')} {r.get('value')} "
            f"vs baseline {r.get('baseline')} (tolerance {r.get('tolerance')})"
        )
