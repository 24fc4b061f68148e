"""What the Kubernetes backend adds on top of Chaos Mesh: latency and API requests per fault.

A fault on Kubernetes is done when Chaos Mesh says so (AllInjected; gone after deletion), so
the time a fault takes is Chaos Mesh's reconcile time plus ours: resolving candidates, the
blast-radius check, creating the object and noticing the status change. This runs faults
against the fake API server (tests/fakekube) on loopback, whose emulated controller injects and
recovers after a fixed delay: that delay is the reference measured in the same run, and the
ratio confirm/delay says what we add (1.0 would be nothing; a polling loop would add up to its
period). Also printed: API requests per fault, by verb, and the p50/max over the rounds.

Run: `python -m benchmarks.kube_lifecycle [--rounds N]` (needs the repository's tests/ folder
and ../shared/chaos-mesh-crds beside the checkout).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

DELAYS_S = (0.05, 0.5)
WORKERS = 8


def _cluster(fake: object, tmp: Path) -> dict[str, str]:
    from experiments.kube.names import OPT_IN_LABEL

    fake.add_namespace("inference", {OPT_IN_LABEL: "enabled"})
    for i in range(WORKERS):
        fake.add_node(f"node-{i}")
        fake.add_pod("inference", f"worker-{i}", {"role": "worker"}, node=f"node-{i}")
    kubeconfig = fake.write_kubeconfig(tmp / "kubeconfig")
    return {"target": "kubernetes", "kubeconfig": str(kubeconfig), "namespace": "inference"}


def measure(rounds: int) -> dict[str, object]:
    from experiments import context, faults
    from experiments.backends import forget_connections
    from tests.fakekube import FakeKube

    tmp = Path(tempfile.mkdtemp(prefix="kube-bench-"))
    os.environ["INFERENCE_CHAOS_HOME"] = str(tmp / "home")
    forget_connections()
    out: dict[str, object] = {}
    with FakeKube() as fake:
        cfg = _cluster(fake, tmp)
        context.start_run("kube bench", tmp / "runs")
        try:
            faults.pod_failure(selector={"labelSelectors": {"role": "worker"}}, configuration=cfg)
            faults.recover_all(configuration=cfg)  # connect and check once, as a run does
            for delay in DELAYS_S:
                fake.chaos.inject_delay_s = fake.chaos.recover_delay_s = delay
                inject, remove, verbs = [], [], Counter()
                for _ in range(rounds):
                    before = len(fake.requests)
                    t = time.perf_counter()
                    faults.network_delay(
                        selector={"labelSelectors": {"role": "worker"}},
                        latency="100ms",
                        configuration=cfg,
                    )
                    inject.append(time.perf_counter() - t)
                    t = time.perf_counter()
                    faults.recover_all(configuration=cfg)
                    remove.append(time.perf_counter() - t)
                    verbs.update(r.method for r in fake.requests[before:])
                out[f"controller_delay_{delay:g}s"] = {
                    "inject_confirmed_p50_ms": round(statistics.median(inject) * 1000, 1),
                    "inject_confirmed_max_ms": round(max(inject) * 1000, 1),
                    "removal_confirmed_p50_ms": round(statistics.median(remove) * 1000, 1),
                    "removal_confirmed_max_ms": round(max(remove) * 1000, 1),
                    "ratio_inject_to_delay": round(statistics.median(inject) / delay, 2),
                    "ratio_removal_to_delay": round(statistics.median(remove) / delay, 2),
                    "requests_per_fault": {k: v / rounds for k, v in sorted(verbs.items())},
                }
        finally:
            context.end_run()
            forget_connections()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.rounds), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
