"""What does chunk-by-chunk timing cost the load generator?

Against the same fast local stub server (no delays), in the same run, one Locust process at a
time with USERS users for DURATION seconds each:

1. our streaming user (`loadtests/locustfile.py`: httpx, every SSE chunk parsed and stamped,
   a JSON line written per request);
2. Locust's FastHttpUser posting the same streaming request but reading the reply as one plain
   body (no per-chunk work): the cheapest way Locust can send that request;
3. FastHttpUser on a plain `GET /ping`, for scale.

Printed: requests/s, the Locust process's CPU time per request, and ratios against (2).
The stub server shares the 2 cores, so requests/s can be capped by the server; CPU per request
is the load generator's own cost whatever the server does.

Run: `python -m benchmarks.loadgen_cost` (about 45 s).
"""

from __future__ import annotations

import json
import resource
import tempfile
from pathlib import Path

from loadtests.runner import LoadRun
from loadtests.settings import LoadSettings
from loadtests.stubserver import StubConfig, StubServer

USERS = 16
DURATION = 10.0
MAX_TOKENS = 16

FASTHTTP_LOCUSTFILE = """
from locust import FastHttpUser, constant, task

from loadtests.settings import LoadSettings
from loadtests.shapes import shape_class_for
from loadtests.sse import PROMPTS, chat_body

SETTINGS = LoadSettings.from_env()
LoadShape = shape_class_for(SETTINGS)
BODY = chat_body(PROMPTS[3], model="m", max_tokens=SETTINGS.max_tokens, session="s")
PLAIN = {plain!r}


class PlainUser(FastHttpUser):
    wait_time = constant(0)

    @task
    def request(self):
        if PLAIN:
            self.client.get("/ping")
        else:
            self.client.post("/v1/chat/completions", json=BODY)
"""


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _measure(
    url: str,
    work: Path,
    name: str,
    locustfile: Path | None,
    start_up_cpu: float = 0.0,
    users: int = USERS,
    duration: float = DURATION,
) -> dict[str, float]:
    """Requests and CPU seconds of one Locust run (CPU of reaped children, so exact).

    `start_up_cpu` (importing Locust, starting users, printing the summary) is subtracted, so
    the figure is the cost of the requests themselves.
    """
    settings = LoadSettings(users=users, duration=duration, max_tokens=MAX_TOKENS)
    stats_prefix = work / name / "stats"
    kwargs = {"locustfile": locustfile} if locustfile else {}
    run = LoadRun(
        url, work / name, settings, extra_args=["--json-file", str(stats_prefix)], **kwargs
    )
    cpu_before = _children_cpu()
    run.start()
    run.wait()
    cpu = _children_cpu() - cpu_before - start_up_cpu
    stats = json.loads(stats_prefix.with_suffix(".json").read_text())
    requests = sum(entry["num_requests"] for entry in stats)
    failures = sum(entry["num_failures"] for entry in stats)
    return {
        "requests": requests,
        "failures": failures,
        "cpu": cpu,
        "rps": requests / duration,
        "cpu_ms_per_request": 1000 * cpu / max(requests, 1),
    }


def main() -> None:
    with (
        StubServer(StubConfig(first_token_ms=0, itl_ms=0)) as stub,
        tempfile.TemporaryDirectory() as tmp,
    ):
        work = Path(tmp)
        files = {}
        for name, plain in (("fasthttp_stream_body", False), ("fasthttp_ping", True)):
            files[name] = work / f"{name}.py"
            files[name].write_text(FASTHTTP_LOCUSTFILE.format(plain=plain))
        # A near-empty run: one user for a moment, to learn the fixed start/stop cost.
        idle = _measure(stub.url, work, "idle", files["fasthttp_ping"], users=1, duration=0.5)
        fixed = idle["cpu"]
        results = {
            "ours_streaming": _measure(stub.url, work, "ours", None, fixed),
            "fasthttp_stream_body": _measure(
                stub.url, work, "fast", files["fasthttp_stream_body"], fixed
            ),
            "fasthttp_ping": _measure(stub.url, work, "ping", files["fasthttp_ping"], fixed),
        }
    reference = results["fasthttp_stream_body"]
    print(
        f"load generator cost: {USERS} users x {DURATION:g} s each, stub with no delays, "
        f"{MAX_TOKENS} tokens per streamed reply; fixed start-up CPU {fixed:.2f} s subtracted"
    )
    print(f"{'user':<24}{'req/s':>10}{'failed':>8}{'CPU ms/req':>12}{'req/s ratio':>13}"
          f"{'CPU ratio':>11}")  # fmt: skip
    for name, r in results.items():
        print(
            f"{name:<24}{r['rps']:>10.1f}{r['failures']:>8.0f}{r['cpu_ms_per_request']:>12.3f}"
            f"{r['rps'] / reference['rps']:>13.2f}"
            f"{r['cpu_ms_per_request'] / reference['cpu_ms_per_request']:>11.2f}"
        )
    ours = results["ours_streaming"]
    print(
        f"ours vs FastHttpUser on the same request: {ours['rps'] / reference['rps']:.2f}x the "
        f"requests/s at {ours['cpu_ms_per_request'] / reference['cpu_ms_per_request']:.2f}x "
        f"the CPU per request"
    )


if __name__ == "__main__":
    main()
