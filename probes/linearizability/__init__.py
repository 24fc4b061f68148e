"""Linearizability checking of recorded client histories (DESIGN section 6).

    history = load_history("run/history.jsonl")
    verdict = check(history.operations, make_model("kv"), timeout=30)
    verdict.result            # "ok" | "illegal" | "unknown"
    verdict.to_json()         # plain JSON-able data, counterexample included

Porcupine's design: an operation is a plain record (history.py), a model is a few pure
functions (models.py), the search (search.py) runs per key, in parallel when it pays
(checker.py); report.py turns a verdict into text and an inline-SVG timeline.
"""

from __future__ import annotations

from pathlib import Path

from probes.linearizability.checker import KeyResult, Verdict, check
from probes.linearizability.history import History, Operation, load_history, parse_history
from probes.linearizability.models import MODEL_NAMES, Model, make_model
from probes.linearizability.report import counterexample_text, history_html, verdict_text
from probes.linearizability.search import Counterexample

__all__ = [
    "MODEL_NAMES",
    "Counterexample",
    "History",
    "KeyResult",
    "Model",
    "Operation",
    "Verdict",
    "check",
    "check_file",
    "counterexample_text",
    "history_html",
    "load_history",
    "make_model",
    "parse_history",
    "verdict_text",
]


def check_file(
    path: str | Path,
    model: str | None = None,
    timeout: float | None = None,
    workers: int | None = None,
) -> Verdict:
    """Load a history file and check it with `model` (default: the format's own)."""
    history = load_history(path)
    chosen = make_model(model or history.default_model, history.initial_value)
    return check(history.operations, chosen, timeout=timeout, workers=workers)
