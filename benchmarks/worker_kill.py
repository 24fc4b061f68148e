"""Share of requests that succeed while one worker is killed under streaming load.

The target (DESIGN section 9) is that every request which had not yet streamed a token
succeeds, because the gateway retries it on another worker; a stream that already sent tokens
is never replayed, so it fails with its worker. Two load runs against the same embedded
cluster, in the same process: a reference with no fault, then the same load with one worker
SIGKILLed for the middle third. Printed: requests, successes, and failures split into "before
the first token" (the gateway should have saved these) and "mid-stream" (lost with the GPU).

Run: `python -m benchmarks.worker_kill [--users 16 --duration 30]`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from experiments import context, faults
from loadtests.records import read_records
from loadtests.runner import LoadRun
from loadtests.settings import LoadSettings
from resilience import launcher


def run_load(url: str, out: Path, users: int, duration: float, kill_at: float | None) -> dict:
    run = LoadRun(url, out, LoadSettings(users=users, duration=duration, max_tokens=16))
    run.start()
    victim = None
    if kill_at is not None:
        time.sleep(kill_at)
        record = faults.pod_kill(
            selector={"labelSelectors": {"role": "worker"}},
            mode="one",
            restart_after=None,
            duration=duration / 3,
        )
        victim = record["victims"][0]
    run.wait()
    records = read_records(run.records_path)
    failed = [r for r in records if not r.ok]
    before_token = [r for r in failed if r.first_token_at is None]
    return {
        "requests": len(records),
        "ok": len(records) - len(failed),
        "failed_before_first_token": len(before_token),
        "failed_mid_stream": len(failed) - len(before_token),
        "victim": victim,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=16)
    p.add_argument("--duration", type=float, default=30.0)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-kill-"))
    os.environ["INFERENCE_CHAOS_HOME"] = str(work / "home")
    state = launcher.up(launcher.UpOptions(nodes=4, gpus_per_node=2))
    context.start_run("bench-worker-kill", work / "runs")
    try:
        ref = run_load(state["gateway_url"], work / "reference", args.users, args.duration, None)
        kill = run_load(
            state["gateway_url"], work / "kill", args.users, args.duration, args.duration / 3
        )
    finally:
        faults.recover_all()
        context.end_run()
        launcher.down()
    for name, r in (("reference (no fault)", ref), ("one worker killed", kill)):
        share = r["ok"] / r["requests"] if r["requests"] else 0.0
        print(
            f"{name:<22} requests {r['requests']:>5}  succeeded {share * 100:8.3f}%  "
            f"failed before first token {r['failed_before_first_token']}  "
            f"mid-stream {r['failed_mid_stream']}"
            + (f"  (victim {r['victim']})" if r["victim"] else "")
        )
    saved = kill["requests"] - kill["failed_mid_stream"]
    print(
        f"requests not yet streaming when the worker died that succeeded: "
        f"{(saved - kill['failed_before_first_token']) / saved * 100:.3f}% (target 100%)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
