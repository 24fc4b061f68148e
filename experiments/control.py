"""The harness control: the one Chaos Toolkit control every experiment of ours declares.

    controls:
      - name: inference-chaos
        provider: {type: python, module: experiments.control}

Before the experiment it opens the run (output folder, fault ledger), makes sure the target
is up (starting the embedded cluster when it is not running), fills the configuration with
the target's addresses, checks every fault action's selector against the live target so that
a bad selector stops the run before anything is injected, and takes over SIGINT and SIGTERM
so a signal removes every fault before the process goes. While the method runs, the
experiment's `stop_condition` (if any) is watched, and a breach ends the method early
(`experiments.stop_condition`). After the experiment it removes any
fault still active, reaches the verdict (Chaos Toolkit alone would call a run whose fault
action failed, or whose hypothesis failed before the method, a success), writes it into the
journal, and writes the journal and the HTML report into the run's folder.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from typing import Any

from chaoslib.exceptions import ActivityFailed, InterruptExecution

from experiments import context as run_context
from experiments import dryrun, faults, stop_condition
from experiments.verdict import reach_verdict

log = logging.getLogger("experiments.control")
_previous_handlers: dict[int, Any] = {}


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def configure_control(
    configuration: dict[str, Any] | None = None,
    secrets: Any = None,
    settings: Any = None,
    experiment: dict[str, Any] | None = None,
    **_: Any,
) -> None:
    """Open the run. The target is started in `before_experiment_control`, where a failure
    ends the run cleanly instead of crashing Chaos Toolkit."""
    configuration = configuration if configuration is not None else {}
    title = (experiment or {}).get("title", "experiment")
    out_root = configuration.get("runs_dir") or os.environ.get("INFERENCE_CHAOS_OUT")
    run = run_context.start_run(title, out_root)
    # the load and the probes find the run's folder and records through these keys
    configuration["run_dir"] = configuration["out_dir"] = str(run.out_dir)
    configuration["records_path"] = str(run.records_path)


def before_experiment_control(
    context: Any = None,
    configuration: dict[str, Any] | None = None,
    experiment: dict[str, Any] | None = None,
    **_: Any,
) -> None:
    configuration = configuration if configuration is not None else {}
    experiment = experiment or context or {}
    run = run_context.current_run() or run_context.start_run(experiment.get("title", "experiment"))
    _install_signal_handlers(configuration)
    try:
        stop_condition.validate(run, experiment, configuration)
        _ensure_target(run, configuration)
        _preflight(experiment, configuration)
        stop_condition.preflight(run, configuration)
    except (ActivityFailed, RuntimeError, OSError) as exc:
        run.load["aborted_reason"] = str(exc)
        _say(f"inference-chaos: {exc}")
        raise InterruptExecution(str(exc)) from None
    _say(f"inference-chaos: run {run.run_id} -> {run.out_dir}")


def _ensure_target(run: run_context.RunContext, configuration: dict[str, Any]) -> None:
    """Start the embedded cluster unless it runs; publish its addresses in the configuration."""
    target = configuration.get("target", "local")
    if target == "kubernetes":
        _check_kubernetes(configuration)
        return
    if target != "local":
        raise RuntimeError(f"unknown target {target!r}; expected 'local' or 'kubernetes'")
    from resilience import launcher

    tasks = int(configuration.get("tasks") or 0)
    task_gpus = int(configuration.get("task_gpus") or 1)
    state = launcher.running_state()
    if state:
        problem = launcher.tasks_mismatch(state, tasks, task_gpus)
        if problem:
            raise RuntimeError(problem)
    else:
        opts = launcher.UpOptions(
            nodes=int(configuration.get("nodes", 4)),
            gpus_per_node=int(configuration.get("gpus_per_node", 2)),
            raft_replicas=int(configuration.get("raft_replicas", 3)),
            store=str(configuration.get("raft_kind") or "ours"),
            tasks=tasks,
            task_gpus=task_gpus,
        )
        _say(
            f"inference-chaos: starting the embedded cluster ({opts.nodes} nodes x "
            f"{opts.gpus_per_node} GPUs"
            + (f", {tasks} tasks of {task_gpus} GPU(s)" if tasks else "")
            + ")"
        )
        started = time.monotonic()
        state = launcher.up(opts)
        run.owns_cluster = True
        _say(f"inference-chaos: cluster ready in {time.monotonic() - started:.1f}s")
    for key in ("gateway_url", "prometheus_url", "prometheus_targets_dir", "raft_endpoints"):
        if not configuration.get(key) and state.get(key):
            configuration[key] = state[key]
    if not configuration.get("raft_kind") and state.get("store"):
        configuration["raft_kind"] = state["store"]


def _check_kubernetes(configuration: dict[str, Any]) -> None:
    """A cluster is the user's: nothing is started. Credentials, Chaos Mesh's CRDs and the
    namespaces are checked now, so a problem stops the run before anything is injected."""
    from experiments.backends import BackendError, backend_for

    try:
        backend = backend_for(configuration)
    except BackendError as exc:
        raise RuntimeError(str(exc)) from None
    _say(
        f"inference-chaos: target kubernetes, context {backend.kube.context} "
        f"({backend.kube.server}), namespaces {', '.join(backend.settings.namespaces)}"
    )


def _preflight(experiment: dict[str, Any], configuration: dict[str, Any]) -> None:
    """Every fault action's arguments and selector must be valid before anything runs."""
    from chaoslib import substitute

    for activity in dryrun.fault_activities(experiment):
        provider = activity["provider"]
        func = provider.get("func", "")
        args = substitute(dict(provider.get("arguments") or {}), configuration, {})
        try:
            faults.preflight(func, args, configuration)
        except ActivityFailed as exc:
            raise ActivityFailed(f"activity {activity.get('name', func)!r}: {exc}") from None


def _install_signal_handlers(configuration: dict[str, Any]) -> None:
    """SIGINT/SIGTERM: remove every fault and stop the load first, then let the run end."""

    def handler(signum: int, frame: Any) -> None:
        run = run_context.current_run()
        if run:
            run.interrupted.set()
        _say(f"inference-chaos: {signal.Signals(signum).name} received, removing every fault")
        _cleanup(configuration)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        _previous_handlers[sig] = signal.signal(sig, handler)


def _restore_signal_handlers() -> None:
    for sig, previous in _previous_handlers.items():
        signal.signal(sig, previous)
    _previous_handlers.clear()


def _cleanup(configuration: dict[str, Any]) -> dict[str, Any]:
    """Remove faults and stop the load; never raises, reports what went wrong."""
    outcome: dict[str, Any] = {"errors": []}
    try:
        outcome["recover"] = faults.recover_all(configuration=configuration)
    except ActivityFailed as exc:
        outcome["errors"].append(f"recovering faults: {exc}")
    try:
        from loadtests import actions as load_actions

        outcome["load"] = load_actions.stop_load(configuration=configuration)
    except Exception as exc:  # the load may never have started
        log.debug("stop_load: %s", exc)
    return outcome


def before_method_control(configuration: dict[str, Any] | None = None, **_: Any) -> None:
    """The stop condition watches the burn rate while the method runs."""
    stop_condition.start_watching(
        run_context.current_run(), configuration if configuration is not None else {}
    )


def before_activity_control(**_: Any) -> None:
    """Once the stop condition tripped, the method's next activity does not start."""
    reason = stop_condition.interrupt_reason(run_context.current_run())
    if reason:
        raise InterruptExecution(reason)


def after_method_control(**_: Any) -> None:
    stop_condition.stop_watching(run_context.current_run())


def after_experiment_control(
    context: Any = None,
    state: dict[str, Any] | None = None,
    configuration: dict[str, Any] | None = None,
    **_: Any,
) -> None:
    configuration = configuration if configuration is not None else {}
    journal = state if state is not None else {}
    run = run_context.current_run()
    try:
        watched = stop_condition.stop_watching(run)
        cleanup = _cleanup(configuration)
        if run is None:
            return
        verdict = reach_verdict(
            journal,
            run.faults(),
            cleanup["errors"],
            aborted_reason=run.load.get("aborted_reason"),
            stop_condition=watched,
        )
        journal["inference_chaos"] = {
            **verdict,
            "run_id": run.run_id,
            "run_dir": str(run.out_dir),
            "faults": run.faults(),
            "records_path": str(run.records_path),
            "cluster_owned": run.owns_cluster,
            "stop_condition": watched,
        }
        if verdict["verdict"] == "deviated":
            journal["deviated"] = True
        elif verdict["verdict"] in ("failed", "aborted") and journal.get("status") == "completed":
            journal["status"] = "failed"
        _write_outputs(run, journal, configuration)
        _say(
            f"inference-chaos: verdict {verdict['verdict'].upper()}"
            + (f" ({'; '.join(verdict['reasons'])})" if verdict["reasons"] else "")
        )
        for note in verdict["notes"]:
            _say(f"inference-chaos: note: {note}")
        _say(f"inference-chaos: report {run.report_path}")
    finally:
        _restore_signal_handlers()
        if run and run.owns_cluster:
            from resilience import launcher

            launcher.down()
        run_context.end_run()


def _write_outputs(
    run: run_context.RunContext, journal: dict[str, Any], configuration: dict[str, Any]
) -> None:
    run.journal_path.write_text(json.dumps(journal, indent=2, default=str))
    series = _prometheus_series(configuration, journal)
    try:
        from reports.render import render_report

        render_report(
            journal,
            run.records_path if run.records_path.exists() else None,
            run.report_path,
            prometheus_series=series,
        )
    except Exception as exc:  # a report problem must not hide the verdict
        log.error("could not write the report: %s", exc)
        _say(f"inference-chaos: could not write the report: {exc}")


def _prometheus_series(
    configuration: dict[str, Any], journal: dict[str, Any]
) -> dict[str, Any] | None:
    """Server-side series for the report; optional, so any failure leaves them out."""
    url = configuration.get("prometheus_url")
    if not url:
        return None
    try:
        from probes.prom import range_series

        end = time.time()
        start = end - max(10.0, float(journal.get("duration") or 60))
        queries = {
            "gateway requests/s": "sum(rate(gateway_requests_total[5s]))",
            "gateway retries/s": "sum(rate(gateway_retries_total[5s]))",
            "running sequences": "sum(vllm:num_requests_running)",
        }
        series = {}
        for name, q in queries.items():
            found = range_series(q, start, end, 1.0, url=url, configuration=configuration)
            if found:
                series[name] = [[t, v] for t, v in found[0]["values"] if v is not None]
        return series
    except Exception as exc:
        log.debug("prometheus series unavailable: %s", exc)
        return None
