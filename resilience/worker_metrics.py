"""Prometheus metrics of one simulated worker, under the names real exporters use.

vLLM's names and buckets (``vllm:...``, label ``model_name``) and dcgm-exporter's
(``DCGM_FI_DEV_...``, labels ``gpu``, ``UUID``, ``device``, ``modelName``, ``Hostname``) are copied
so that every PromQL query the probes use runs unchanged against a real cluster. Each worker owns
its own `CollectorRegistry`, so several can live in one process (tests) without clashing.

Hot-path methods bind their label children once at start-up: an observation is then one lock
and a bucket search, cheap enough to do per token.
"""

import uuid
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

__all__ = ["METRICS_CONTENT_TYPE", "FINISHED_REASONS", "WorkerMetrics", "synthetic_gpu_uuid"]

# Bucket boundaries from vllm/v1/metrics/loggers.py, so histogram_quantile() answers alike.
TTFT_BUCKETS: Sequence[float] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS: Sequence[float] = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
E2E_BUCKETS: Sequence[float] = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
    50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip

# The classic text format: every name here is legacy-valid, and Prometheus 2.x knows this version.
METRICS_CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

FINISHED_REASONS = ("stop", "length", "abort")
GPU_MODEL_NAME = "NVIDIA H100 80GB HBM3"


def synthetic_gpu_uuid(node: str, gpu: str) -> str:
    """A stable, GPU-looking UUID per (node, gpu), so series survive worker restarts."""
    return f"GPU-{uuid.uuid5(uuid.NAMESPACE_URL, f'inference-chaos/{node}/{gpu}')}"


class WorkerMetrics:
    """The vLLM and DCGM series of one worker, plus the calls the engine makes to move them."""

    def __init__(self, model_name: str, node: str, gpu: str) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        reg = self.registry
        vllm = ["model_name"]
        self._running = Gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches.",
            vllm, registry=reg,
        )  # fmt: skip
        self._waiting = Gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed.",
            vllm, registry=reg,
        )  # fmt: skip
        self._kv_usage = Gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
            vllm, registry=reg,
        )  # fmt: skip
        self._ttft = Histogram(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
            vllm, buckets=TTFT_BUCKETS, registry=reg,
        )  # fmt: skip
        self._itl = Histogram(
            "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
            vllm, buckets=ITL_BUCKETS, registry=reg,
        )  # fmt: skip
        self._e2e = Histogram(
            "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
            vllm, buckets=E2E_BUCKETS, registry=reg,
        )  # fmt: skip
        self._success = Counter(
            "vllm:request_success", "Count of successfully processed requests.",
            [*vllm, "finished_reason"], registry=reg,
        )  # fmt: skip
        self._prompt_tokens = Counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", vllm, registry=reg
        )
        self._generation_tokens = Counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", vllm, registry=reg
        )

        labels = {"model_name": model_name}
        self.running = self._running.labels(**labels)
        self.waiting = self._waiting.labels(**labels)
        self.kv_usage = self._kv_usage.labels(**labels)
        self.ttft = self._ttft.labels(**labels)
        self.itl = self._itl.labels(**labels)
        self.e2e = self._e2e.labels(**labels)
        self.prompt_tokens = self._prompt_tokens.labels(**labels)
        self.generation_tokens = self._generation_tokens.labels(**labels)
        self.success = {r: self._success.labels(model_name, r) for r in FINISHED_REASONS}
        # Materialise every child so the series exist (at 0) from the first scrape.
        for child in self.success.values():
            child.inc(0)

        dcgm_labels = ["gpu", "UUID", "device", "modelName", "Hostname"]
        dcgm_values = {
            "gpu": str(gpu),
            "UUID": synthetic_gpu_uuid(node, str(gpu)),
            "device": f"nvidia{gpu}",
            "modelName": GPU_MODEL_NAME,
            "Hostname": node,
        }

        def dcgm(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, dcgm_labels, registry=reg).labels(**dcgm_values)

        self.gpu_util = dcgm("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).")
        self.fb_used = dcgm("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).")
        self.fb_free = dcgm("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).")
        self.gpu_temp = dcgm("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).")
        self.sm_clock = dcgm("DCGM_FI_DEV_SM_CLOCK", "SM clock frequency (in MHz).")
        self.xid = dcgm("DCGM_FI_DEV_XID_ERRORS", "Value of the last XID error encountered.")
        self.ecc_dbe = dcgm(
            "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "Total number of double-bit volatile ECC errors."
        )
        self.ecc_sbe = dcgm(
            "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "Total number of single-bit volatile ECC errors."
        )
        self.power = dcgm("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).")

        # Ours, not vLLM's: which task (model replica) the controllers placed here.
        self._task_serving = Gauge(
            "worker_task_serving", "1 while the worker serves the task, 0 while it loads it.",
            ["task"], registry=reg,
        )  # fmt: skip

    # Engine hot path -----------------------------------------------------------------------

    def request_finished(self, reason: str, e2e_seconds: float) -> None:
        """Count a finished request; vLLM counts aborts under the same counter."""
        self.success[reason].inc()
        self.e2e.observe(e2e_seconds)

    # Scrape time ----------------------------------------------------------------------------

    def set_scheduler(self, running: int, waiting: int, kv_usage: float) -> None:
        self.running.set(running)
        self.waiting.set(waiting)
        self.kv_usage.set(kv_usage)

    def set_gpu(
        self,
        *,
        util_percent: float,
        fb_used_mib: float,
        fb_total_mib: float,
        temperature_c: float,
        sm_clock_mhz: float,
        xid: int,
        ecc_dbe: int,
        ecc_sbe: int,
        power_w: float,
    ) -> None:
        self.gpu_util.set(round(util_percent))
        # dcgm-exporter reports these as integers.
        self.fb_used.set(round(fb_used_mib))
        self.fb_free.set(max(0, round(fb_total_mib - fb_used_mib)))
        self.gpu_temp.set(round(temperature_c))
        self.sm_clock.set(round(sm_clock_mhz))
        self.xid.set(xid)
        self.ecc_dbe.set(ecc_dbe)
        self.ecc_sbe.set(ecc_sbe)
        self.power.set(round(power_w, 3))

    def set_task(self, task_id: str | None, serving: bool) -> None:
        """Show only the current task's series: a stale 1 would claim a replica that moved."""
        self._task_serving.clear()
        if task_id is not None:
            self._task_serving.labels(task=task_id).set(1 if serving else 0)

    def render(self) -> bytes:
        """Prometheus text exposition of every series."""
        return generate_latest(self.registry)
