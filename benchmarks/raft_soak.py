"""The nemesis of tests/integration/test_raft_nemesis.py, for minutes instead of seconds.

One embedded cluster (1 node x 1 GPU, 3 store replicas, private INFERENCE_CHAOS_HOME); round
after round, a fault drawn with the seeded RNG (each fault once per pass of five, in a seeded
order), a recorded history, a final read per key after healing, and the linearizability
checker's verdict. Prints one line per round and a summary; exits 1 if any round was not
linearizable, lost a write, or could not be judged.

Run: `python -m benchmarks.raft_soak [--minutes 5] [--seed N] [--keep DIR]`.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from experiments import context, faults
from tests.integration.cluster_fixtures import running_cluster
from tests.integration.test_raft_nemesis import RoundPlan, run_round, schedule


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.raft_soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="copy the histories here")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    plan = RoundPlan()
    print(f"raft soak: seed={seed}, {args.minutes:g} min", flush=True)
    verdicts: Counter[str] = Counter()
    by_fault: Counter[str] = Counter()
    bad: list[str] = []
    operations = 0
    with tempfile.TemporaryDirectory(prefix="raft-soak-") as tmp:
        tmp_path = Path(tmp)
        run = context.start_run("raft-soak", tmp_path / "runs")
        started = time.monotonic()
        round_no = 0
        try:
            with running_cluster(
                tmp_path / "home", nodes=1, gpus=1, prometheus=False, restart_delay=0.2
            ) as state:
                while time.monotonic() - started < args.minutes * 60:
                    fault = schedule(seed, round_no + 1)[round_no]
                    rng = random.Random(f"{seed}-{round_no}")
                    try:
                        r = run_round(state, round_no, fault, rng, run.out_dir, plan)
                    except AssertionError as exc:  # the store never healed, or a read failed
                        bad.append(f"seed={seed} round={round_no} fault={fault}: {exc}")
                        print(f"round {round_no:3d} {fault:18s} ERROR {exc}", flush=True)
                        round_no += 1
                        continue
                    finally:
                        faults.recover_all(configuration={})
                    good = r.verdict.result == "ok" and not r.missing_writes
                    verdicts[r.verdict.result] += 1
                    by_fault[fault] += 1
                    operations += r.summary["operations"]
                    counts = r.summary["counts"]
                    print(
                        f"round {round_no:3d} {fault:18s} {','.join(r.victims):7s} "
                        f"ops {r.summary['operations']:4d} (ok {counts['ok']}, fail "
                        f"{counts['fail']}, unknown {counts['unknown']}) healed "
                        f"{r.healed_s:.2f}s  check {r.verdict.elapsed_s:.2f}s  "
                        f"{r.verdict.result}{'' if good else '  <-- ' + r.describe(seed)}",
                        flush=True,
                    )
                    if not good:
                        bad.append(r.describe(seed))
                    round_no += 1
        finally:
            context.end_run()
            if args.keep:
                shutil.copytree(run.out_dir, args.keep, dirs_exist_ok=True)
    minutes = (time.monotonic() - started) / 60
    print(
        f"\n{round_no} rounds in {minutes:.1f} min, {operations} operations; faults "
        f"{dict(by_fault)}; verdicts {dict(verdicts)}; seed={seed}"
    )
    for line in bad:
        print(f"FAILED: {line}")
    return 1 if bad or round_no == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
