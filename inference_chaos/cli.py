"""`inference-chaos`: the harness's command line.

inference-chaos up [--nodes N] [--gpus-per-node G]   start the embedded cluster
inference-chaos status                               what runs, with pids, ports, labels
inference-chaos down                                 stop it all, leave nothing behind
inference-chaos run EXPERIMENT [chaos run options]   `chaos run` with our defaults
inference-chaos load --url URL ...                   load alone, no chaos
inference-chaos recover                              remove faults a crashed run left
inference-chaos nightly [EXPERIMENTS...] [--out DIR]  the catalogue, one after another
inference-chaos validate EXPERIMENT [--var K=V]      the faults it would inject, injecting none
inference-chaos cleanup [--run ID | --all]           remove leftovers of runs from a cluster
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any


def _fail(message: str, code: int = 2) -> int:
    print(f"inference-chaos: {message}", file=sys.stderr)
    return code


def cmd_up(args: argparse.Namespace) -> int:
    from resilience import launcher
    from resilience.prometheus import PrometheusMissing

    try:
        worker_config = json.loads(args.worker_config)
        controller_config = json.loads(args.controller_config)
    except json.JSONDecodeError as exc:
        return _fail(f"--worker-config and --controller-config take JSON objects: {exc}")
    opts = launcher.UpOptions(
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        restart_delay=args.restart_delay,
        worker_config=worker_config,
        prometheus=not args.no_prometheus,
        raft_replicas=args.raft_replicas,
        store=args.store,
        tasks=args.tasks,
        task_gpus=args.task_gpus,
        controller_config=controller_config,
    )
    try:
        st = launcher.up(opts)
    except (PrometheusMissing, launcher.ClusterError) as exc:
        return _fail(str(exc))
    print(
        f"cluster up: {len(st['processes'])} processes; gateway {st['gateway_url']}; "
        f"prometheus {st.get('prometheus_url')}"
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from resilience import launcher

    st = launcher.status()
    if not st:
        print("no cluster running")
        return 3
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    print(
        f"gateway {st['gateway_url']}  prometheus {st.get('prometheus_url')}  "
        f"supervisor pid {st['supervisor']['pid']}"
    )
    for p in st["processes"]:
        labels = ",".join(f"{k}={v}" for k, v in sorted(p["labels"].items()))
        ports = ",".join(f"{k}:{v}" for k, v in p["ports"].items())
        state = "alive" if p["alive"] else "DEAD"
        print(f"  {p['name']:<16} pid {p['pid']!s:<8} {state:<5} {ports:<16} {labels}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from resilience import launcher

    outcome = launcher.down()
    if not outcome["stopped"]:
        print(outcome["reason"])
        return 0
    if outcome["ports_still_bound"]:
        return _fail(f"ports still bound after down: {outcome['ports_still_bound']}", 1)
    print(
        "cluster down"
        + (
            f" (killed leftovers {outcome['killed_leftovers']})"
            if outcome["killed_leftovers"]
            else ""
        )
    )
    return 0


def check_experiment(path: Path) -> str | None:
    """A one-line problem with an experiment file, or None when Chaos Toolkit would accept it."""
    import yaml
    from chaoslib.exceptions import ChaosException
    from chaoslib.experiment import ensure_experiment_is_valid

    if not path.is_file():
        return f"no experiment file at {path}"
    try:
        experiment = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        return f"{where}: malformed YAML: {problem}"
    if not isinstance(experiment, dict):
        return f"{path}: an experiment must be a mapping, got {type(experiment).__name__}"
    try:
        ensure_experiment_is_valid(experiment)
    except ChaosException as exc:
        return f"{path}: invalid experiment: {str(exc).strip().splitlines()[0]}"
    except Exception as exc:  # chaoslib trips over some malformed shapes
        return f"{path}: invalid experiment: {type(exc).__name__}: {exc}"
    return _check_stop_condition(path, experiment)


def _check_stop_condition(path: Path, experiment: dict[str, Any]) -> str | None:
    """A bad `stop_condition` is bad input too, caught before Chaos Toolkit starts (values
    that come from `--var` are checked again by the control)."""
    from chaoslib.configuration import load_configuration
    from chaoslib.exceptions import ActivityFailed

    from experiments import stop_condition

    try:
        configuration = load_configuration(experiment.get("configuration") or {})
    except Exception:  # e.g. an env variable only the run's shell has: the control judges
        return None
    try:
        stop_condition.parse(experiment, configuration)
    except ActivityFailed as exc:
        return f"{path}: {exc}"
    return None


def cmd_run(args: argparse.Namespace, extra: list[str]) -> int:
    """Chaos Toolkit's own CLI, without its call home; the control writes journal and report
    into the run's folder."""
    experiment = Path(args.experiment)
    problem = check_experiment(experiment)
    if problem:
        return _fail(problem)
    chaos = shutil.which(
        "chaos", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    )
    if not chaos:
        return _fail("the 'chaos' command (package chaostoolkit) is not installed")
    argv = [
        chaos,
        "--no-version-check",
        "--log-file",
        os.environ.get("INFERENCE_CHAOS_LOG", "chaostoolkit.log"),
        "run",
        *extra,
        str(experiment),
    ]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(chaos, argv)  # become `chaos`: signals and the exit code are its own


def cmd_recover(args: argparse.Namespace) -> int:
    """Remove faults that a crashed or killed run left active (from the mirrored ledgers)."""
    from experiments.backends import BackendError, backend_for
    from experiments.ledger import Ledger
    from resilience.state import home

    files = sorted((home() / "faults").glob("*.json"))
    removed, errors = 0, []
    for path in files:
        ledger = Ledger.load(path)
        active = ledger.active()
        if not active:
            continue
        try:  # a Kubernetes fault carries how to reach its cluster again
            backend = backend_for(
                active[0].details.get("configuration") or {"target": active[0].backend}
            )
        except BackendError as exc:
            errors.append(f"{path.name}: {exc}")
            continue
        for record in active:
            try:
                backend.recover(record)
                ledger.mark_removed(record, error="removed by 'inference-chaos recover'")
                removed += 1
            except Exception as exc:
                errors.append(f"{record.kind} {record.id}: {exc}")
    print(f"removed {removed} leftover fault(s) from {len(files)} run ledger(s)")
    for e in errors:
        print(f"  error: {e}", file=sys.stderr)
    return 1 if errors else 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Dry run: resolve every fault action against the live target and print what it would
    create (on Kubernetes, the manifests); inject nothing. 0 valid, 2 a problem."""
    from experiments import dryrun
    from experiments.suite_catalogue import SuiteError, parse_vars

    path = Path(args.experiment)
    problem = check_experiment(path)
    if problem:
        return _fail(problem)
    try:
        overrides = parse_vars(args.var)
        planned = dryrun.plan(path, overrides)
    except (SuiteError, dryrun.DryRunError) as exc:
        return _fail(str(exc))
    print(dryrun.render(planned), end="")
    print(f"# {len(planned)} fault action(s) valid; nothing was injected", file=sys.stderr)
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    """Remove what runs left on a Kubernetes cluster, found by our labels."""
    from experiments.kube import cleanup
    from experiments.kube.client import KubeError, connect

    if not args.all and not args.run:
        return _fail("cleanup: give --run ID (one run) or --all (every run's leftovers)")
    configuration = {
        k: v
        for k, v in (("kubeconfig", args.kubeconfig), ("kube_context", args.context))
        if v is not None
    }
    try:
        kube = connect(configuration)
        found = cleanup.find(kube, None if args.all else args.run)
    except KubeError as exc:
        return _fail(str(exc))
    if not found.count():
        print("nothing to clean up")
        return 0
    for line in found.lines():
        print(f"  {line}")
    if args.dry_run:
        print(f"{found.count()} leftover(s); nothing removed (--dry-run)")
        return 0
    errors = cleanup.remove(kube, found, args.timeout, args.force)
    print(f"removed {found.count() - len(errors)} of {found.count()} leftover(s)")
    for e in errors:
        print(f"  error: {e}", file=sys.stderr)
    return 1 if errors else 0


def cmd_nightly(args: argparse.Namespace) -> int:
    """The nightly suite (experiments/suite.py): 0 all passed, 1 any did not, 2 it could not run."""
    from experiments import suite

    return suite.main(args)


def build_parser() -> tuple[argparse.ArgumentParser, Any]:
    parser = argparse.ArgumentParser(
        prog="inference-chaos",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="start the embedded cluster")
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--gpus-per-node", type=int, default=2)
    p.add_argument(
        "--restart-delay",
        type=float,
        default=1.0,
        help="seconds before a process that died on its own is restarted",
    )
    p.add_argument("--worker-config", default="{}", help="JSON overrides of the worker model")
    p.add_argument(
        "--raft-replicas",
        type=int,
        default=3,
        help="replicas of the metadata store (3 or 5; 0 for none)",
    )
    p.add_argument(
        "--store",
        choices=["ours", "etcd"],
        default="ours",
        help="the metadata store: ours, or a real etcd from the Debian package",
    )
    p.add_argument(
        "--tasks",
        type=int,
        default=0,
        help="model replicas the controllers place on the GPUs (0: no controllers, "
        "the gateway routes to every worker)",
    )
    p.add_argument(
        "--task-gpus", type=int, default=1, help="GPUs of one task, all on one node (default 1)"
    )
    p.add_argument(
        "--controller-config", default="{}", help="JSON overrides of the controllers' config"
    )
    p.add_argument("--no-prometheus", action="store_true")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("status", help="show the processes of the embedded cluster")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("down", help="stop the embedded cluster")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("run", help="run an experiment with Chaos Toolkit")
    p.add_argument("experiment")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("recover", help="remove faults left by a crashed run")
    p.set_defaults(func=cmd_recover)

    p = sub.add_parser("validate", help="dry run: the faults an experiment would inject")
    p.add_argument("experiment")
    p.add_argument("--var", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("cleanup", help="remove leftovers of runs from a Kubernetes cluster")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--run", metavar="ID", help="the run id (its folder name)")
    which.add_argument("--all", action="store_true", help="every run's leftovers")
    p.add_argument("--kubeconfig", help="default: $KUBECONFIG, else ~/.kube/config")
    p.add_argument("--context", help="kubeconfig context (default: the current one)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per object")
    p.add_argument(
        "--force", action="store_true", help="clear stuck finalizers (Chaos Mesh annotation)"
    )
    p.add_argument("--dry-run", action="store_true", help="list, remove nothing")
    p.set_defaults(func=cmd_cleanup)

    p = sub.add_parser("nightly", help="run the nightly catalogue on one embedded cluster")
    from experiments.suite import add_arguments as add_nightly_arguments

    add_nightly_arguments(p)
    p.set_defaults(func=cmd_nightly)

    load = sub.add_parser("load", help="drive streaming load against any OpenAI-compatible URL")
    history = sub.add_parser("check-history", help="check a recorded history for linearizability")
    return parser, load, history


def main(argv: list[str] | None = None) -> int:
    parser, load, history = build_parser()
    from loadtests import cli as load_cli
    from probes.linearizability import cli as history_cli

    load_cli.add_arguments(load)
    load.set_defaults(func=load_cli.main)
    history_cli.add_arguments(history)
    history.set_defaults(func=history_cli.main)
    args, extra = parser.parse_known_args(argv)
    if args.command == "run":
        return cmd_run(args, extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
