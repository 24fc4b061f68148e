"""One experiment of the suite: a `inference-chaos run` subprocess, its output folder moved to
`<out>/<name>/`, and its outcome as the plain dict the suite's summary is built from.

A subprocess rather than a call in this process, so that a crash, a hang or a signal in one
experiment costs that experiment and nothing else. Its output is read line by line: it goes to
`console.log` and tells the progress display which phase the run is in.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from experiments.suite_catalogue import Entry, var_file
from experiments.suite_progress import PhaseTracker
from experiments.suite_reset import RUN_COOKIE, kill_strays

VERDICTS = ("passed", "deviated", "failed", "aborted", "interrupted", "crashed")


def _iso(value: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return None


def phase_times(journal: Mapping[str, Any], started: float, ended: float) -> dict[str, float]:
    """Where one run's wall time went (Unix times in, seconds out): `startup` (process start to
    the experiment's start), `before` (the hypothesis and the control's checks), `method` (load
    and fault), `after` (the hypothesis again), `teardown` (rollbacks, verdict, report)."""
    start, end = _iso(journal.get("start")), _iso(journal.get("end"))
    method = [r for r in journal.get("run") or [] if _iso(r.get("start"))]
    after = ((journal.get("steady_states") or {}).get("after") or {}).get("probes") or []
    if start is None or end is None:
        return {"startup": 0.0, "before": 0.0, "method": 0.0, "after": 0.0, "teardown": 0.0}
    method_start = _iso(method[0]["start"]) if method else end
    after_start = _iso(after[0].get("start")) if after else None
    after_end = _iso(after[-1].get("end")) if after else None
    method_end = after_start or (_iso(method[-1].get("end")) if method else None) or method_start
    assert method_start is not None and method_end is not None
    return {
        "startup": max(0.0, start - started),
        "before": max(0.0, method_start - start),
        "method": max(0.0, method_end - method_start),
        "after": max(0.0, (after_end or method_end) - method_end),
        "teardown": max(0.0, ended - (after_end or method_end)),
    }


def verdict_of(journal: Mapping[str, Any] | None, exit_code: int) -> tuple[str, list[str]]:
    """The run's verdict and reasons; a run that wrote no verdict crashed."""
    ours = (journal or {}).get("inference_chaos") or {}
    verdict = ours.get("verdict")
    if verdict in VERDICTS:
        return verdict, [str(r) for r in ours.get("reasons") or []]
    if journal and journal.get("status") == "interrupted":
        return "interrupted", ["the run was interrupted before it reached a verdict"]
    return "crashed", [f"the run ended with exit code {exit_code} and wrote no verdict"]


def _last_lines(path: Path, n: int = 3) -> str:
    try:
        lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    return " | ".join(line.strip() for line in lines[-n:])


def run_experiment(
    entry: Entry,
    shape: Mapping[str, int],
    overrides: Mapping[str, Any],
    out_dir: Path,
    on_phase: Callable[[str], None] = lambda phase: None,
    timeout_s: float = 900.0,
    env: Mapping[str, str] | None = None,
    target_vars: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run one experiment to its end (or its timeout) and collect its outcome; never raises
    for what the experiment does, only for what the suite cannot do (no disk). `target_vars`
    (the target and how to reach it) go to every experiment, declared or not."""
    started_at = time.time()
    folder = out_dir / entry.name
    staging = out_dir / ".staging" / entry.name
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    result: dict[str, Any] = {
        "name": entry.name,
        "file": _shown(entry.path),
        "report": f"{entry.name}/report.html",
        "started_at": started_at,
    }
    if entry.problem:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "console.log").write_text(entry.problem + "\n")
        shutil.rmtree(staging, ignore_errors=True)
        return {
            **result,
            "verdict": "failed",
            "exit_code": 2,
            "reasons": [entry.problem],
            "journal": None,
            "ended_at": time.time(),
        }
    vars_path = staging / "vars.json"
    document = var_file(entry, shape, overrides)
    document["configuration"].update(target_vars or {})
    vars_path.write_text(json.dumps(document, indent=2))
    cookie = uuid.uuid4().hex
    child_env = {
        **(env or os.environ),
        "INFERENCE_CHAOS_OUT": str(staging / "runs"),
        "INFERENCE_CHAOS_LOG": str(staging / "chaos.log"),
        RUN_COOKIE: cookie,
        "PYTHONUNBUFFERED": "1",
    }
    argv = [sys.executable, "-m", "inference_chaos.cli", "run", str(entry.path)]
    argv += ["--var-file", str(vars_path)]
    console = staging / "console.log"
    timed_out = interrupted = False
    with open(console, "w") as log:
        proc = subprocess.Popen(
            argv,
            cwd=staging,  # chaos writes its own ./journal.json there, not in the caller's folder
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,  # a Ctrl-C in the suite's terminal is ours to forward
        )
        reader = threading.Thread(target=_follow, args=(proc, log, on_phase), daemon=True)
        reader.start()
        try:
            exit_code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            exit_code = stop(proc)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM of the suite: the run removes its faults
            interrupted = True
            exit_code = stop(proc)
        finally:
            reader.join(timeout=5)
    ended_at = time.time()
    strays = kill_strays(cookie)
    journal = _collect(staging, folder)
    verdict, reasons = verdict_of(journal, exit_code)
    if timed_out or interrupted:
        why = (
            "the suite was interrupted" if interrupted else f"the suite's timeout, {timeout_s:.0f}s"
        )
        reasons.insert(0, f"stopped: {why}")
        if verdict in ("passed", "crashed"):
            verdict = "interrupted"
    if strays:
        reasons.append(f"left processes running, stopped by the suite: {'; '.join(strays)}")
        if verdict == "passed":
            verdict = "failed"
    if verdict == "crashed":
        tail = _last_lines(folder / "console.log")
        if tail:
            reasons.append(f"last output: {tail}")
    return {
        **result,
        "verdict": verdict,
        "exit_code": exit_code,
        "reasons": reasons,
        "journal": journal,
        "ended_at": ended_at,
        "phases_s": phase_times(journal or {}, started_at, ended_at),
        "suite_interrupted": interrupted,
    }


def _shown(path: Path) -> str:
    """The file as the contract shows it: relative to the working folder when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _follow(proc: subprocess.Popen[str], log: Any, on_phase: Callable[[str], None]) -> None:
    tracker = PhaseTracker()
    assert proc.stdout is not None
    for line in proc.stdout:
        log.write(line)
        log.flush()
        phase = tracker.feed(line.rstrip("\n"))
        if phase:
            on_phase(phase)


def stop(proc: subprocess.Popen[str], grace_s: float = 30.0) -> int:
    """SIGTERM (the control removes every fault and stops the load), SIGKILL if it hangs."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    return proc.wait()


def _collect(staging: Path, folder: Path) -> dict[str, Any] | None:
    """Move the run's folder to `<out>/<name>/` with the var file and logs beside it, point the
    journal's paths at the new place, and return the journal (None when there is none)."""
    runs = sorted((staging / "runs").glob("*")) if (staging / "runs").is_dir() else []
    if folder.exists():
        shutil.rmtree(folder)
    if runs:
        old = runs[-1].resolve()
        shutil.move(str(old), str(folder))
    else:
        old = None
        folder.mkdir(parents=True)
    for name in ("vars.json", "chaos.log", "console.log"):
        if (staging / name).exists():
            shutil.move(str(staging / name), str(folder / name))
    shutil.rmtree(staging, ignore_errors=True)
    journal_path = folder / "journal.json"
    if not journal_path.exists():
        return None
    text = journal_path.read_text()
    if old is not None:
        text = text.replace(str(old), str(folder.resolve()))
        journal_path.write_text(text)
    try:
        journal = json.loads(text)
    except ValueError:
        return None
    return journal if isinstance(journal, dict) else None
