"""Run every benchmark in turn and print its figures: `python -m benchmarks` (`tox -e bench`)."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = [
    "cluster_lifecycle",
    "worker_kill",
    "ttft_accuracy",
    "loadgen_cost",
    "checker",
    "raft_failover",
    "raft_writes",
    "migration",
    "balance",
    "task_recovery",
    "kube_lifecycle",
]


def main() -> int:
    failed = []
    for name in BENCHMARKS:
        print(f"== benchmarks.{name}", flush=True)
        module = importlib.import_module(f"benchmarks.{name}")
        try:
            module.main([]) if "argv" in module.main.__code__.co_varnames else module.main()
        except SystemExit as exc:
            if exc.code:
                failed.append(name)
        print(flush=True)
    if failed:
        print(f"benchmarks that did not finish: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
