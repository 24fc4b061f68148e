"""The nightly suite's own outputs: summary.json's content, the score, and (re-exported here so
the runner has one module to call) the index page and the history reading.

The suite runner (experiments/suite.py) runs every experiment and hands its results here: each
journal is boiled down to its judged checks (`reports.suite_checks`) and key figures
(`reports.suite_figures`), tonight is compared with earlier nights (`reports.trends`), and one
score says how much of what the experiments claim held. The page is `reports.suite_index`.
"""

from __future__ import annotations

import socket
import statistics
import subprocess
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

from reports.suite_checks import checks_from_journal
from reports.suite_figures import figures_from_journal
from reports.suite_index import render_index, write_index
from reports.trends import find_regressions, load_history, resolve_tolerances

__all__ = [
    "build_summary",
    "checks_from_journal",
    "figures_from_journal",
    "find_regressions",
    "load_history",
    "render_index",
    "resilience_score",
    "resolve_tolerances",
    "write_index",
]

SUITE = "nightly"
ENTRY_DEFAULTS: dict[str, Any] = {
    "name": "",
    "file": None,
    "verdict": "crashed",
    "exit_code": None,
    "duration_s": None,
    "overhead_s": None,
    "reasons": [],
    "report": None,
}
REPO_ROOT = Path(__file__).resolve().parents[1]


# --- the score --------------------------------------------------------------------------------


def resilience_score(experiments: list[dict]) -> dict:
    """Share of judged checks met, each experiment weighted equally: the mean over experiments
    of met/total. A crashed experiment, or one without a single check, counts as 0 of 1:
    it proved nothing. `value` is null when there is no experiment."""
    parts = []
    for entry in experiments:
        checks = [c for c in entry.get("checks") or [] if isinstance(c, Mapping)]
        if entry.get("verdict") == "crashed" or not checks:
            parts.append((0, 1))
        else:
            parts.append((sum(1 for c in checks if c.get("ok") is True), len(checks)))
    met, total = sum(m for m, _ in parts), sum(t for _, t in parts)
    rule = (
        "mean over experiments of checks met / checks judged (hypothesis probes and judged "
        "method probes; a crashed experiment counts 0 of 1)"
    )
    if not parts:
        return {"value": None, "met": 0, "total": 0, "formula": f"{rule}: no experiment ran"}
    value = round(statistics.fmean(m / t for m, t in parts), 4)
    terms = " + ".join(f"{m}/{t}" for m, t in parts)
    formula = f"{rule}: ({terms}) / {len(parts)} = {value:.3f}"
    return {"value": value, "met": met, "total": total, "formula": formula}


# --- summary.json -----------------------------------------------------------------------------


def build_summary(
    results: list[dict],
    started_at: float,
    ended_at: float,
    history_dir: Path | None,
    tolerances: dict | None,
    *,
    target: str = "local",
    host: str | None = None,
    commit: str | None = None,
) -> dict:
    """summary.json's content (docs/internals.md, "The nightly suite"). Each result's journal
    is replaced by its checks and figures; `title` and `tags` come from the journal unless the
    result has them, and every experiment says whether it `regressed`. Raises ValueError on bad
    `tolerances` (check them first with `resolve_tolerances`). host defaults to this machine,
    commit to the repository's HEAD (null when git cannot tell)."""
    experiments = [_experiment_entry(result) for result in results]
    summary: dict[str, Any] = {
        "suite": SUITE,
        "started_at": started_at,
        "ended_at": ended_at,
        "duration_s": round(float(ended_at) - float(started_at), 3),
        "target": target,
        "host": host or socket.gethostname(),
        "commit": commit if commit is not None else _git_commit(),
        "score": resilience_score(experiments),
        "regressions": [],
        "tolerances": resolve_tolerances(tolerances),
        "experiments": experiments,
    }
    regressions = find_regressions(summary, load_history(history_dir), tolerances)
    summary["regressions"] = regressions
    regressed = {r["experiment"] for r in regressions}
    for entry in experiments:
        entry["regressed"] = entry["name"] in regressed
    return summary


def _experiment_entry(result: Mapping[str, Any]) -> dict[str, Any]:
    journal = result.get("journal")
    journal = journal if isinstance(journal, Mapping) else {}
    declared = journal.get("experiment")
    declared = declared if isinstance(declared, Mapping) else {}
    entry = {key: _plain(result.get(key, default)) for key, default in ENTRY_DEFAULTS.items()}
    entry["reasons"] = [str(r) for r in entry["reasons"] or []]
    entry["checks"] = checks_from_journal(dict(journal)) if journal else []
    entry["figures"] = figures_from_journal(dict(journal)) if journal else {}
    entry["title"] = str(result.get("title") or declared.get("title") or entry["name"])
    tags = result.get("tags") or declared.get("tags") or []
    entry["tags"] = [str(t) for t in tags] if isinstance(tags, list | tuple) else []
    for key, value in result.items():  # whatever else the runner recorded (reset notes, ...)
        if key != "journal" and key not in entry:
            entry[key] = _plain(value)
    return entry


def _plain(value: Any) -> Any:
    """JSON-ready: paths as text (the runner may hand over Path objects)."""
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = done.stdout.strip()
    return sha if done.returncode == 0 and sha else None
