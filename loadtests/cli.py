"""`inference-chaos load`: streaming load against any OpenAI-compatible endpoint.

Runs the same Locust subprocess as the experiments, writes the raw records as JSON lines to
`--out`, and prints what users felt: requests, success share, TTFT/ITL/TPOT/E2E percentiles
and tokens/s. Exit codes: 0 when at least one request succeeded, 1 when none did or Locust
failed, 2 when the URL cannot be reached at all (one line on stderr, no traceback).

Wiring into a parent parser is one line each: `add_arguments(sub)` and `main(args)`.
Standalone: `python -m loadtests.cli --url http://127.0.0.1:8000 --out records.jsonl`.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from loadtests.runner import LoadRun
from loadtests.settings import SHAPES, LoadSettings


class LoadTargetUnreachable(Exception):
    """The endpoint refused or did not answer a TCP connection before the run."""


class LoadRunFailed(Exception):
    """Locust itself failed (not the requests it sent)."""


def check_reachable(url: str, timeout: float = 3.0) -> None:
    """Fail fast, in one sentence, when nothing listens at the URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LoadTargetUnreachable(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise LoadTargetUnreachable(f"cannot connect to {url}: {reason}") from None


def run_load(
    url: str,
    users: int,
    duration: float,
    out: str,
    shape: str = "constant",
    ramp: float = 0,
    max_tokens: int = 32,
    *,
    sessions: int = 200,
    think_time: float = 0.0,
    model: str | None = None,
    spike_users: int = 0,
    spike_at: float = 0.0,
    spike_duration: float = 0.0,
) -> dict[str, Any]:
    """Run load for `duration` seconds and return the summary (plain data) plus paths.

    Raises LoadTargetUnreachable before starting Locust when nothing listens at `url`,
    and LoadRunFailed when Locust crashed without recording anything.
    """
    check_reachable(url)
    settings = LoadSettings(
        users=users,
        duration=duration,
        shape=shape,
        ramp=ramp,
        max_tokens=max_tokens,
        sessions=sessions,
        think_time=think_time,
        spike_users=spike_users,
        spike_at=spike_at,
        spike_duration=spike_duration,
        **({"model": model} if model else {}),
    )
    out_path = Path(out).resolve()
    with tempfile.TemporaryDirectory(prefix="inference-chaos-load-") as log_dir:
        run = LoadRun(url, log_dir, settings, records_path=out_path)
        run.start()
        try:
            exit_code = run.wait()
        except KeyboardInterrupt:
            exit_code = run.stop()
        finally:
            run.stop()
        summary = run.summary()
        if exit_code != 0 and summary["requests"] == 0:
            tail = run.stderr_tail(10)
            raise LoadRunFailed(f"locust exited with code {exit_code}:\n{tail}")
    info = {"url": url, "records_path": str(out_path), "pid": run.pid, "exit_code": exit_code}
    return {**info, **summary}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def format_summary(result: dict[str, Any]) -> str:
    """A few lines a person reads in ten seconds."""
    requests = result["requests"]
    share = result["success_share"]
    lines = [
        f"{requests} requests to {result.get('url', '?')} in {result['wall_seconds']:.1f} s: "
        f"{'-' if share is None else f'{share:.2%}'} ok, {result['failed']} failed",
        f"{'ms':<8}{'p50':>10}{'p90':>10}{'p95':>10}{'p99':>10}",
    ]
    for key, label in (("ttft", "TTFT"), ("ttfvt", "TTFVT"), ("itl", "ITL"), ("tpot", "TPOT")):
        dist = result[key]
        lines.append(f"{label:<8}" + "".join(f"{_ms(dist[f'p{q}']):>10}" for q in (50, 90, 95, 99)))
    dist = result["e2e"]
    lines.append(f"{'E2E':<8}" + "".join(f"{_ms(dist[f'p{q}']):>10}" for q in (50, 90, 95, 99)))
    tps = result["output_tokens_per_second"]
    rps = result["requests_per_second"]
    lines.append(
        f"throughput: {'-' if tps is None else f'{tps:.1f}'} output tokens/s, "
        f"{'-' if rps is None else f'{rps:.1f}'} requests/s"
    )
    for error, count in result["errors"].items():
        lines.append(f"error x{count}: {error}")
    if "records_path" in result:
        lines.append(f"records: {result['records_path']}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="base URL of an OpenAI-compatible endpoint")
    parser.add_argument("--users", type=int, default=16, help="concurrent users (default 16)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    parser.add_argument("--out", required=True, help="JSON-lines file for the raw records")
    parser.add_argument("--shape", choices=SHAPES, default="constant", help="load shape")
    parser.add_argument("--ramp", type=float, default=0.0, help="ramp seconds (shape ramp)")
    parser.add_argument("--spike-users", type=int, default=0, help="users in the spike")
    parser.add_argument("--spike-at", type=float, default=0.0, help="spike start, seconds")
    parser.add_argument("--spike-duration", type=float, default=0.0, help="spike length, s")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens per request")
    parser.add_argument("--sessions", type=int, default=200, help="distinct session keys")
    parser.add_argument("--think-time", type=float, default=0.0, help="mean pause, seconds")
    parser.add_argument("--model", default=None, help="model name sent in each request")


def main(args: argparse.Namespace) -> int:
    try:
        result = run_load(
            args.url,
            args.users,
            args.duration,
            args.out,
            shape=args.shape,
            ramp=args.ramp,
            max_tokens=args.max_tokens,
            sessions=args.sessions,
            think_time=args.think_time,
            model=args.model,
            spike_users=args.spike_users,
            spike_at=args.spike_at,
            spike_duration=args.spike_duration,
        )
    except (LoadTargetUnreachable, ValueError) as exc:
        print(f"inference-chaos load: error: {exc}", file=sys.stderr)
        return 2
    except LoadRunFailed as exc:
        print(f"inference-chaos load: error: {exc}", file=sys.stderr)
        return 1
    print(format_summary(result))
    return 0 if result["ok"] > 0 else 1


if __name__ == "__main__":
    cli = argparse.ArgumentParser(
        prog="python -m loadtests.cli", description=__doc__.splitlines()[0]
    )
    add_arguments(cli)
    sys.exit(main(cli.parse_args()))
