"""How exactly does the load generator measure TTFT and ITL under concurrency?

A stub server sends the first token FIRST_TOKEN_MS after each request arrives and every later
token ITL_MS after the previous one (absolute schedule). USERS concurrent streams run through
our Locust user (a real `LoadRun` subprocess) for DURATION seconds.

Two truths, two errors (measured minus truth), as p50/p99 in milliseconds:

- against the server's *actual* behaviour: the stub keeps each request's arrival and token
  write times (wall clock, matched to records through x-served-by), so TTFT error =
  measured TTFT - (first token written - request arrived) and ITL error = measured gap -
  written gap. This is the load generator's own error (plus loopback transit).
- against the *schedule*: what a reader comparing with the configured delays would see;
  it adds the stub server's own lateness.

Target: the load generator's own error within 5 ms. The machine is shared (2 cores): the
server, Locust and anything else running compete, which shows in the p99.

Run: `python -m benchmarks.ttft_accuracy` (about 25 s).
"""

from __future__ import annotations

import tempfile

import httpx

from loadtests.records import LoadRecord, percentile
from loadtests.runner import LoadRun
from loadtests.settings import LoadSettings
from loadtests.stubserver import StubConfig, StubServer

FIRST_TOKEN_MS = 100.0
ITL_MS = 20.0
MAX_TOKENS = 32
USERS = 50
DURATION = 15.0
WARM_UP = 2.0  # seconds of start-up (connections, spawning) left out
TARGET_MS = 5.0


def _row(label: str, errors_s: list[float]) -> str:
    ms = [e * 1000 for e in errors_s]
    absolute = [abs(e) for e in ms]
    return (
        f"{label:<30}{len(ms):>8}{percentile(ms, 50):>9.2f}{percentile(ms, 99):>9.2f}"
        f"{percentile(absolute, 50):>9.2f}{percentile(absolute, 99):>9.2f}"
    )


def _errors_against_server(
    records: list[LoadRecord], timeline: dict[str, dict]
) -> dict[str, list[float]]:
    """TTFT and ITL error against what the server did, and TTFT's two halves."""
    out: dict[str, list[float]] = {"ttft": [], "itl": [], "send": [], "receive": []}
    for record in records:
        server = timeline.get(record.served_by or "")
        if not server or len(server["tokens"]) != len(record.chunk_times):
            continue
        written = server["tokens"]
        out["ttft"].append(record.ttft - (written[0] - server["arrived"]))
        # Send: client stamp to the server's handler; receive: token write to client stamp.
        out["send"].append(server["arrived"] - record.sent_at)
        out["receive"].append(record.first_token_at - written[0])
        server_gaps = [b - a for a, b in zip(written, written[1:], strict=False)]
        out["itl"] += [m - s for m, s in zip(record.itls, server_gaps, strict=True)]
    return out


def main() -> None:
    config = StubConfig(first_token_ms=FIRST_TOKEN_MS, itl_ms=ITL_MS, timeline=True)
    settings = LoadSettings(users=USERS, duration=DURATION, max_tokens=MAX_TOKENS)
    with StubServer(config) as stub, tempfile.TemporaryDirectory() as out_dir:
        run = LoadRun(stub.url, out_dir, settings)
        run.start()
        exit_code = run.wait()
        timeline = httpx.get(stub.url + "/timeline", timeout=30).json()
        records = run.records()
    if not records:
        print(f"no records (locust exit code {exit_code})")
        return
    start = min(r.sent_at for r in records) + WARM_UP
    steady = [r for r in records if r.ok and r.sent_at >= start]
    own = _errors_against_server(steady, timeline)
    plan_ttft = [r.ttft - FIRST_TOKEN_MS / 1000 for r in steady]
    plan_itl = [gap - ITL_MS / 1000 for r in steady for gap in r.itls]

    failed = sum(not r.ok for r in records)
    print(f"TTFT/ITL accuracy: {USERS} concurrent streams for {DURATION:g} s through LoadRun")
    print(f"schedule: first token {FIRST_TOKEN_MS:g} ms, then one token every {ITL_MS:g} ms")
    print(f"requests: {len(records)} ({failed} failed); {len(steady)} after {WARM_UP:g} s warm-up")
    header = f"{'error (ms)':<30}{'n':>8}{'p50':>9}{'p99':>9}{'|p50|':>9}{'|p99|':>9}"
    print(header)
    print(_row("TTFT vs server's actual", own["ttft"]))
    print(_row("  of which send -> handler", own["send"]))
    print(_row("  of which write -> stamp", own["receive"]))
    print(_row("ITL vs server's actual", own["itl"]))
    print(_row("TTFT vs schedule", plan_ttft))
    print(_row("ITL vs schedule", plan_itl))
    worst = max(
        percentile([abs(e) for e in own["ttft"]], 99) or 0.0,
        percentile([abs(e) for e in own["itl"]], 99) or 0.0,
    )
    verdict = "met" if worst * 1000 <= TARGET_MS else "NOT met"
    print(f"target: load generator's own |error| p99 <= {TARGET_MS:g} ms: {verdict}")


if __name__ == "__main__":
    main()
