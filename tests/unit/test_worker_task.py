"""The worker's task seam without a server: body validation, the load timer, the metric."""

import asyncio
import re
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from resilience.batching import BatchingConfig
from resilience.worker import GpuState, RequestError, TaskSlot, parse_task_request
from resilience.worker_metrics import WorkerMetrics


def _task_series(metrics: WorkerMetrics) -> dict[str, float]:
    """worker_task_serving samples by task label."""
    text = metrics.render().decode()
    return {
        sample.labels["task"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "worker_task_serving"
        for sample in family.samples
    }


class _Gpu:
    """A GPU state the test can flip while a load runs."""

    def __init__(self) -> None:
        self.state = GpuState()

    def __call__(self) -> GpuState:
        return self.state


def _slot() -> tuple[TaskSlot, WorkerMetrics, _Gpu]:
    metrics = WorkerMetrics("m", "node-0", "0")
    gpu = _Gpu()
    return TaskSlot(metrics, gpu), metrics, gpu


def test_a_body_without_load_s_takes_the_config_default() -> None:
    assert parse_task_request({"id": "task-3"}, 0.2) == ("task-3", 0.2)
    assert parse_task_request({"id": "task-3", "load_s": None}, 0.7) == ("task-3", 0.7)
    assert parse_task_request({"id": "t", "load_s": 1}, 0.2) == ("t", 1.0)
    assert parse_task_request({"id": "t", "load_s": 0}, 0.2) == ("t", 0.0)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "JSON object"),
        ({}, "'id'"),
        ({"id": ""}, "'id'"),
        ({"id": 3}, "'id'"),
        ({"id": "t", "load_s": -1}, "'load_s'"),
        ({"id": "t", "load_s": "1"}, "'load_s'"),
        ({"id": "t", "load_s": True}, "'load_s'"),
        ({"id": "t", "load_s": float("inf")}, "'load_s'"),
        ({"id": "t", "gpus": [0]}, "unknown task key(s): gpus"),
    ],
)
def test_bad_task_bodies_are_refused(body: object, message: str) -> None:
    with pytest.raises(RequestError, match=re.escape(message)) as exc:
        parse_task_request(body, 0.2)
    assert exc.value.status == 400


def test_the_config_knob_defaults_to_a_fifth_of_a_second_and_refuses_negatives() -> None:
    assert BatchingConfig().model_load_s == 0.2
    assert BatchingConfig.from_json({"model_load_s": 1}).model_load_s == 1.0
    with pytest.raises(ValueError, match="model_load_s"):
        BatchingConfig(model_load_s=-0.1)


def test_a_load_goes_from_loading_to_serving_after_load_s() -> None:
    async def scenario() -> None:
        slot, metrics, _ = _slot()
        assert (slot.status.id, slot.status.state) == (None, "idle")
        assert _task_series(metrics) == {}
        started = time.time()
        status = slot.load("task-1", 0.1)
        assert (status.id, status.state) == ("task-1", "loading")
        assert slot.loading and status.since >= started
        assert _task_series(metrics) == {"task-1": 0.0}
        await asyncio.sleep(0.05)
        assert slot.status.state == "loading"
        await asyncio.sleep(0.1)
        assert (slot.status.id, slot.status.state) == ("task-1", "serving")
        assert slot.status.since - started >= 0.09
        assert _task_series(metrics) == {"task-1": 1.0}

    asyncio.run(scenario())


def test_a_second_load_replaces_the_first_and_its_series() -> None:
    async def scenario() -> None:
        slot, metrics, _ = _slot()
        slot.load("task-1", 0.0)
        await asyncio.sleep(0.01)
        assert slot.status.state == "serving"
        slot.load("task-2", 0.1)
        assert (slot.status.id, slot.status.state) == ("task-2", "loading")
        assert _task_series(metrics) == {"task-2": 0.0}  # task-1's 1 must not linger
        slot.load("task-3", 0.05)  # replaces a load in progress: task-2 never serves
        await asyncio.sleep(0.15)
        assert (slot.status.id, slot.status.state) == ("task-3", "serving")
        assert _task_series(metrics) == {"task-3": 1.0}

    asyncio.run(scenario())


def test_unload_cancels_a_load_and_removes_the_series() -> None:
    async def scenario() -> None:
        slot, metrics, _ = _slot()
        slot.load("task-1", 0.05)
        status = slot.unload()
        assert (status.id, status.state) == (None, "idle")
        await asyncio.sleep(0.1)
        assert slot.status.state == "idle"  # the cancelled load did not come back
        assert _task_series(metrics) == {}

    asyncio.run(scenario())


def test_a_gpu_lost_during_the_load_fails_it_back_to_idle() -> None:
    async def scenario() -> None:
        slot, metrics, gpu = _slot()
        slot.load("task-1", 0.05)
        gpu.state = GpuState(healthy=False, xid=79)
        await asyncio.sleep(0.1)
        assert (slot.status.id, slot.status.state) == (None, "idle")
        assert _task_series(metrics) == {}

    asyncio.run(scenario())


def test_a_hung_gpu_stalls_the_load_until_it_recovers() -> None:
    async def scenario() -> None:
        slot, _, gpu = _slot()
        gpu.state = GpuState(hang=True)
        slot.load("task-1", 0.02)
        await asyncio.sleep(0.2)
        assert slot.status.state == "loading"
        gpu.state = GpuState()
        await asyncio.sleep(0.1)
        assert slot.status.state == "serving"

    asyncio.run(scenario())
