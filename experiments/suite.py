"""`inference-chaos nightly`: the catalogue, one experiment after another, on one cluster.

The suite starts one embedded cluster big enough for every selected experiment, runs each as its
own `inference-chaos run` subprocess (a crash costs that experiment only), resets and checks the
cluster between them (suite_reset), and writes one folder per experiment plus `summary.json`,
`junit.xml` and `index.html` for the whole night (reports.suite, reports.junit). Exit code: 0 all
passed, 1 any experiment deviated, failed or regressed, 2 the suite itself could not run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from experiments.suite_catalogue import (
    Entry,
    SuiteError,
    check_overrides,
    cluster_shape,
    estimate_s,
    parse_vars,
    select,
)
from experiments.suite_outputs import (
    EXIT_CANNOT_RUN,
    EXIT_FAILED,
    exit_code,
    load_tolerances,
    print_tail,
    reports,
    write_outputs,
)
from experiments.suite_progress import Progress
from experiments.suite_reset import ResetOutcome, ledger_files, reset
from experiments.suite_run import run_experiment


@dataclass
class NightlyOptions:
    experiments: list[str] = field(default_factory=list)
    target: str = "local"
    out: Path | None = None
    history: Path | None = None
    tolerances: Path | None = None
    variables: list[str] = field(default_factory=list)  # `key=value`, for every experiment
    reset_deadline_s: float = 30.0
    experiment_timeout_s: float | None = None  # default: 4x the estimate, at least 5 minutes


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "experiments",
        nargs="*",
        metavar="EXPERIMENT",
        help="files or names (worker-kill); default: every experiments/*.yaml tagged nightly",
    )
    p.add_argument("--target", choices=["local", "kubernetes"], default="local")
    p.add_argument("--out", type=Path, help="default: chaos-runs/nightly-<UTC time>/")
    p.add_argument("--history", type=Path, help="earlier nights' summary.json files")
    p.add_argument("--tolerances", type=Path, help="YAML/JSON {figure: {relative|absolute: x}}")
    p.add_argument(
        "--var",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a configuration key in every experiment that declares it (repeatable)",
    )
    p.add_argument("--reset-deadline", type=float, default=30.0, help="seconds (default 30)")
    p.add_argument("--experiment-timeout", type=float, help="seconds per experiment")


def main(args: argparse.Namespace) -> int:
    opts = NightlyOptions(
        experiments=list(args.experiments),
        target=args.target,
        out=args.out,
        history=args.history,
        tolerances=args.tolerances,
        variables=list(args.var),
        reset_deadline_s=args.reset_deadline,
        experiment_timeout_s=args.experiment_timeout,
    )
    try:
        return run_nightly(opts)
    except SuiteError as exc:
        print(f"inference-chaos: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    except KeyboardInterrupt:  # before the first experiment: nothing to report
        print("inference-chaos: nightly interrupted while starting", file=sys.stderr)
        return EXIT_CANNOT_RUN


def default_out(now: float | None = None) -> Path:
    stamp = datetime.fromtimestamp(now or time.time(), UTC).strftime("%Y%m%dT%H%M%SZ")
    return Path("chaos-runs") / f"nightly-{stamp}"


def _require_chaos() -> None:
    """Every experiment runs through the `chaos` command: without it the night cannot start."""
    bin_dir = os.path.dirname(sys.executable)
    if not shutil.which("chaos", path=bin_dir + os.pathsep + os.environ.get("PATH", "")):
        raise SuiteError("the 'chaos' command (package chaostoolkit) is not installed")


def run_nightly(opts: NightlyOptions) -> int:
    """Select, start, run, reset, report; see the module docstring for the exit code."""
    if opts.target == "kubernetes":
        return run_nightly_kubernetes(opts)
    overrides = parse_vars(opts.variables)
    entries = select(opts.experiments)
    check_overrides(entries, overrides)
    shape = cluster_shape([e for e in entries if not e.problem], overrides)
    tolerances = load_tolerances(opts.tolerances)
    if opts.history is not None and not opts.history.is_dir():
        raise SuiteError(f"--history {opts.history}: no such folder")
    suite_reports, _ = reports()
    _require_chaos()
    history = suite_reports.load_history(opts.history) if opts.history else []
    from resilience import launcher
    from resilience.prometheus import PrometheusMissing
    from resilience.state import home

    if launcher.running_state():
        raise SuiteError(
            f"an embedded cluster already runs in {home()}: stop it ('inference-chaos down') "
            "or point INFERENCE_CHAOS_HOME elsewhere"
        )
    out = (opts.out or default_out()).resolve()
    out.mkdir(parents=True, exist_ok=True)
    estimates = [estimate_s(e.config, _past(history, e.name)) for e in entries]
    progress = Progress([e.name for e in entries], estimates)
    up_opts = launcher.UpOptions(
        nodes=shape["nodes"],
        gpus_per_node=shape["gpus_per_node"],
        tasks=shape["tasks"],
        task_gpus=shape["task_gpus"],
    )
    old_ledgers = {p.name for p in (home() / "faults").glob("*.json")}
    started_at = time.time()
    results: list[dict[str, Any]] = []
    suite_problem: str | None = None
    previous_term = signal.signal(signal.SIGTERM, _interrupt)
    try:
        tasks = f", {shape['tasks']} tasks" if shape["tasks"] else ""
        progress.note(
            f"nightly: {len(entries)} experiment(s) on {shape['nodes']} nodes x "
            f"{shape['gpus_per_node']} GPUs{tasks} -> {out}"
        )
        try:
            launcher.up(up_opts)
        except (PrometheusMissing, launcher.ClusterError) as exc:
            raise SuiteError(str(exc).splitlines()[0]) from None
        first = reset(shape, opts.reset_deadline_s, ignore=old_ledgers)
        if not first.ok:
            raise SuiteError(f"the new cluster is not whole: {'; '.join(first.problems[:3])}")
        suite_problem = _run_all(
            entries, shape, overrides, out, opts, estimates, progress, old_ledgers, results
        )
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        progress.close()
        teardown = launcher.down()
        shutil.rmtree(out / ".staging", ignore_errors=True)
    ended_at = time.time()
    summary = write_outputs(
        out, results, started_at, ended_at, opts.history, tolerances, history, opts.target
    )
    leftovers = teardown.get("killed_leftovers") or teardown.get("ports_still_bound")
    if leftovers:
        print(f"inference-chaos: the cluster left processes or ports: {leftovers}", file=sys.stderr)
    code = exit_code(summary, suite_problem)
    if suite_problem:
        print(f"inference-chaos: {suite_problem}", file=sys.stderr)
    print_tail(summary, out)
    return max(code, EXIT_FAILED) if leftovers else code


def run_nightly_kubernetes(opts: NightlyOptions) -> int:
    """The night on a Kubernetes cluster (experiments.suite_kubernetes): nothing to start or
    stop; between experiments, leftovers are searched by label and removed."""
    from experiments import suite_kubernetes as k8s

    target_vars, overrides = k8s.split_overrides(parse_vars(opts.variables))
    entries = select(opts.experiments, tag=k8s.KUBERNETES_TAG)
    check_overrides(entries, overrides)
    tolerances = load_tolerances(opts.tolerances)
    if opts.history is not None and not opts.history.is_dir():
        raise SuiteError(f"--history {opts.history}: no such folder")
    suite_reports, _ = reports()
    _require_chaos()
    history = suite_reports.load_history(opts.history) if opts.history else []
    backend = k8s.connect_checked(target_vars)
    out = (opts.out or default_out()).resolve()
    out.mkdir(parents=True, exist_ok=True)
    estimates = [estimate_s(e.config, _past(history, e.name)) for e in entries]
    progress = Progress([e.name for e in entries], estimates)
    started_at = time.time()
    results: list[dict[str, Any]] = []
    suite_problem: str | None = None
    previous_term = signal.signal(signal.SIGTERM, _interrupt)
    try:
        progress.note(
            f"nightly: {len(entries)} experiment(s) on Kubernetes "
            f"({k8s.describe(backend)}) -> {out}"
        )
        first = k8s.reset(backend, opts.reset_deadline_s)
        if not first.ok:
            raise SuiteError(f"leftovers on the cluster: {'; '.join(first.problems[:3])}")
        if first.actions:
            progress.note(f"nightly: removed leftovers of earlier runs: {'; '.join(first.actions)}")
        suite_problem = _run_all(
            entries, {}, overrides, out, opts, estimates, progress, set(), results,
            reset_after=lambda: k8s.reset(backend, opts.reset_deadline_s),
            target_vars=target_vars,
        )  # fmt: skip
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        progress.close()
        shutil.rmtree(out / ".staging", ignore_errors=True)
    summary = write_outputs(
        out, results, started_at, time.time(), opts.history, tolerances, history, opts.target
    )
    if suite_problem:
        print(f"inference-chaos: {suite_problem}", file=sys.stderr)
    print_tail(summary, out)
    return exit_code(summary, suite_problem)


class SuiteInterrupted(KeyboardInterrupt):
    """SIGTERM to the suite: treated like Ctrl-C."""


def _interrupt(signum: int, frame: Any) -> None:
    raise SuiteInterrupted


def _past(history: Sequence[Mapping[str, Any]], name: str) -> list[float]:
    newest = sorted(history, key=lambda s: s.get("started_at") or 0)[-7:]
    return [
        float(e["duration_s"])
        for s in newest
        for e in s.get("experiments") or []
        if e.get("name") == name and isinstance(e.get("duration_s"), int | float)
    ]


def _run_all(
    entries: list[Entry],
    shape: dict[str, int],
    overrides: dict[str, Any],
    out: Path,
    opts: NightlyOptions,
    estimates: list[float],
    progress: Progress,
    old_ledgers: set[str],
    results: list[dict[str, Any]],
    reset_after: Callable[[], ResetOutcome] | None = None,
    target_vars: Mapping[str, Any] | None = None,
) -> str | None:
    """Every experiment in turn, each followed by a reset; returns why the suite had to stop.
    `reset_after` replaces the embedded cluster's reset (and its restart) on other targets."""
    from resilience import launcher

    for i, entry in enumerate(entries):
        try:
            progress.start(i)
            timeout = opts.experiment_timeout_s or max(300.0, 4 * estimates[i])
            result = run_experiment(
                entry, shape, overrides, out, progress.set_phase, timeout, target_vars=target_vars
            )
            interrupted = result.pop("suite_interrupted", False)
            progress.set_phase("reset")
            if reset_after is not None:
                outcome = reset_after()
            else:
                outcome = reset(shape, opts.reset_deadline_s, ignore=old_ledgers)
            problem = ""
            if not outcome.ok and reset_after is not None:
                problem = f"leftovers could not be removed: {'; '.join(outcome.problems[:3])}"
            elif not outcome.ok:
                progress.set_phase("restarting the cluster")
                problem = _restart(launcher, shape, opts, old_ledgers)
            results.append(_finish(result, outcome))
            progress.finish(i, results[-1])
            if outcome.actions:
                progress.note(f"    reset undid: {'; '.join(outcome.actions)}")
            if problem:
                results += _not_run(entries[i + 1 :], problem)
                return problem
            if interrupted:
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            progress.note("nightly: interrupted; the experiments left are recorded as not run")
            results += _not_run(entries[len(results) :], "the suite was interrupted")
            return None
    return None


def _restart(launcher: Any, shape: dict[str, int], opts: NightlyOptions, ignore: set[str]) -> str:
    """A cluster that would not come back whole is replaced; '' when that worked."""
    from resilience.prometheus import PrometheusMissing

    launcher.down()
    ignore.update(p.name for p in ledger_files())  # faults of the old cluster died with it
    try:
        launcher.up(
            launcher.UpOptions(
                nodes=shape["nodes"],
                gpus_per_node=shape["gpus_per_node"],
                tasks=shape["tasks"],
                task_gpus=shape["task_gpus"],
            )
        )
    except (PrometheusMissing, launcher.ClusterError) as exc:
        return f"the cluster could not be restarted: {str(exc).splitlines()[0]}"
    again = reset(shape, opts.reset_deadline_s, ignore=ignore)
    if not again.ok:
        return f"the restarted cluster is not whole: {'; '.join(again.problems[:3])}"
    return ""


def _finish(result: dict[str, Any], outcome: ResetOutcome) -> dict[str, Any]:
    """The result with the reset's time and verdict folded in (a failed reset is the fault of
    the experiment that left the mess); its journal goes on to build_summary, which reads the
    checks and figures out of it."""
    ended = time.time()
    phases = {**result.pop("phases_s", {}), "reset": outcome.seconds}
    duration = ended - result["started_at"]
    reasons = list(result["reasons"])
    verdict = result["verdict"]
    if not outcome.ok:
        reasons.append(
            f"the cluster was not whole {outcome.seconds:.0f}s after the run "
            f"({'; '.join(outcome.problems[:3])}); the suite restarted it"
        )
        if verdict == "passed":
            verdict = "failed"
    return {
        **result,
        "verdict": verdict,
        "reasons": reasons,
        "duration_s": round(duration, 3),
        "overhead_s": round(duration - phases.get("method", 0.0), 3),
        "phases_s": {k: round(v, 3) for k, v in phases.items()},
        "reset": {"ok": outcome.ok, "actions": outcome.actions, "problems": outcome.problems},
    }


def _not_run(entries: Sequence[Entry], why: str) -> list[dict[str, Any]]:
    now = time.time()
    return [
        {
            "name": e.name,
            "file": str(e.path),
            "verdict": "interrupted",
            "exit_code": None,
            "started_at": now,
            "duration_s": 0.0,
            "overhead_s": 0.0,
            "reasons": [f"not run: {why}"],
            "report": None,
        }
        for e in entries
    ]
