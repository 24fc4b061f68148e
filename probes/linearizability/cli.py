"""`inference-chaos check-history FILE [--model register|kv] [--timeout SECONDS]`.

Exit codes: 0 linearizable, 1 not linearizable, 3 unknown (deadline), 2 bad input (missing
file, empty history, malformed line: one line on stderr naming the problem).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from probes.linearizability.checker import check
from probes.linearizability.history import load_history
from probes.linearizability.models import MODEL_NAMES, make_model
from probes.linearizability.report import history_page, verdict_text

__all__ = ["EXIT_CODES", "add_arguments", "main"]

EXIT_CODES = {"ok": 0, "illegal": 1, "bad input": 2, "unknown": 3}
DEFAULT_TIMEOUT_S = 60.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `check-history`, added to a (sub)parser the caller owns."""
    parser.add_argument("file", type=Path, help="history: our JSON lines, a Jepsen etcd log, "
                        "or a Porcupine kv file (detected)")  # fmt: skip
    parser.add_argument(
        "--model",
        choices=MODEL_NAMES,
        default=None,
        help="register (one key) or kv (split by key); default from the format: "
        "register for Jepsen logs, kv otherwise",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds before giving up with 'unknown' (default {DEFAULT_TIMEOUT_S:g})",
    )
    parser.add_argument("--workers", type=int, default=None, help="processes (default: CPUs)")
    parser.add_argument("--json", action="store_true", help="print the verdict as JSON")
    parser.add_argument(
        "--html", type=Path, default=None, help="write a timeline of the illegal (or first) key"
    )


def main(args: argparse.Namespace) -> int:
    """Check the file and print the verdict; the exit code says which."""
    if args.timeout is not None and args.timeout <= 0:
        return _bad("--timeout must be positive")
    try:
        history = load_history(args.file)
        model = make_model(args.model or history.default_model, history.initial_value)
        verdict = check(history.operations, model, timeout=args.timeout, workers=args.workers)
    except ValueError as exc:
        return _bad(str(exc))
    if args.json:
        print(json.dumps(verdict.to_json(), indent=2, default=str))
    else:
        print(verdict_text(verdict))
    if args.html is not None:
        cx = verdict.counterexample
        key = cx.key if cx is not None else next((k.key for k in verdict.keys), None)
        try:
            args.html.write_text(history_page(history.operations, verdict, key), encoding="utf-8")
        except OSError as exc:
            return _bad(f"cannot write {args.html}: {exc}")
    return EXIT_CODES[verdict.result]


def _bad(message: str) -> int:
    print(f"check-history: {message}", file=sys.stderr)
    return EXIT_CODES["bad input"]


def run(argv: list[str] | None = None) -> int:
    """Stand-alone entry: `python -m probes.linearizability FILE ...`."""
    parser = argparse.ArgumentParser(
        prog="check-history", description="Is a recorded history linearizable?"
    )
    add_arguments(parser)
    return main(parser.parse_args(argv))
