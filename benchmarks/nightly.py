"""Wall time of the whole nightly catalogue on the embedded cluster, and where it goes.

Runs `inference-chaos nightly` exactly as CI does (a subprocess, a private state folder) and
reads its summary.json: per experiment the wall time, the part spent on load and fault (the
method), and the overhead that is neither (process start, the hypotheses before and after,
rollbacks and report, the reset between experiments). The suite-level overhead (cluster start
and stop, summary and pages) is the wall time minus the sum of the experiments. Target
(DESIGN.md section 9): the whole suite under 15 minutes on this 2-core machine.

Run: `python -m benchmarks.nightly [EXPERIMENTS...] [--out DIR] [--var key=value ...]`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 15 * 60
ROOT = Path(__file__).resolve().parent.parent
PHASES = ("startup", "before", "after", "teardown", "reset")


def table(summary: dict) -> list[str]:
    """One line per experiment: verdict, wall time, method, overhead and its parts."""
    head = f"{'experiment':<24} {'verdict':<11} {'wall':>7} {'method':>7} {'overhead':>8}  "
    head += " ".join(f"{p:>8}" for p in PHASES)
    lines = [head]
    for e in summary["experiments"]:
        phases = e.get("phases_s") or {}
        lines.append(
            f"{e['name']:<24} {e['verdict']:<11} {e.get('duration_s') or 0:7.1f} "
            f"{phases.get('method', 0):7.1f} {e.get('overhead_s') or 0:8.1f}  "
            + " ".join(f"{phases.get(p, 0):8.1f}" for p in PHASES)
        )
    return lines


def totals(summary: dict, wall_s: float) -> list[str]:
    experiments = summary["experiments"]
    inside = sum(e.get("duration_s") or 0 for e in experiments)
    method = sum((e.get("phases_s") or {}).get("method", 0) for e in experiments)
    overhead = sum(e.get("overhead_s") or 0 for e in experiments)
    n = max(1, len(experiments))
    parts = {p: sum((e.get("phases_s") or {}).get(p, 0) for e in experiments) for p in PHASES}
    verdicts: dict[str, int] = {}
    for e in experiments:
        verdicts[e["verdict"]] = verdicts.get(e["verdict"], 0) + 1
    met = "met" if wall_s < TARGET_S else "MISSED"
    return [
        f"suite wall time {wall_s:.1f}s ({wall_s / 60:.1f} min) for {len(experiments)} "
        f"experiments; target < {TARGET_S / 60:.0f} min: {met}",
        f"load and fault (method) {method:.1f}s, overhead inside experiments {overhead:.1f}s "
        f"({overhead / n:.1f}s per experiment: "
        + ", ".join(f"{p} {parts[p] / n:.1f}s" for p in PHASES)
        + ")",
        f"suite overhead outside experiments (cluster start/stop, summary, pages) "
        f"{wall_s - inside:.1f}s",
        "verdicts: "
        + ", ".join(f"{k} {v}" for k, v in sorted(verdicts.items()))
        + f"; score {(summary.get('score') or {}).get('value')}",
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("experiments", nargs="*", help="default: the whole nightly catalogue")
    p.add_argument("--out", type=Path, help="the suite's output folder (default: a temp dir)")
    p.add_argument("--var", action="append", default=[], help="passed on to the suite")
    args = p.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-nightly-")) / "night"
    home = tempfile.mkdtemp(prefix="bench-nightly-home-")
    argv_suite = [sys.executable, "-m", "inference_chaos.cli", "nightly", *args.experiments]
    argv_suite += ["--out", str(out)] + [f"--var={v}" for v in args.var]
    started = time.monotonic()
    code = subprocess.call(argv_suite, cwd=ROOT, env={**os.environ, "INFERENCE_CHAOS_HOME": home})
    wall = time.monotonic() - started
    summary_path = out / "summary.json"
    if not summary_path.exists():
        print(f"the suite wrote no summary (exit code {code})", file=sys.stderr)
        return 1
    summary = json.loads(summary_path.read_text())
    print()
    for line in table(summary) + [""] + totals(summary, wall):
        print(line)
    print(f"suite exit code {code}; {out}")
    return 0 if wall < TARGET_S and code in (0, 1) else 1


if __name__ == "__main__":
    sys.exit(main())
