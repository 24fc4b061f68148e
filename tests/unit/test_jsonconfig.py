"""The one JSON-object-to-dataclass parser that configs and the worker's fault seam share."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from resilience.gateway import GatewayConfig
from resilience.jsonconfig import dataclass_from_json
from resilience.worker import GpuState


@dataclass(frozen=True)
class Knobs:
    """String annotations (this module uses `from __future__ import annotations`)."""

    rate: float = 1.0
    count: int = 2
    name: str = "x"
    flag: bool = False
    limit: float | None = None

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError("count must be >= 0")


def test_builds_from_defaults_and_coerces_int_to_float() -> None:
    knobs = dataclass_from_json(Knobs, {"rate": 3, "limit": None, "flag": True}, "knobs")
    assert knobs == Knobs(rate=3.0, flag=True)
    assert isinstance(knobs.rate, float)


def test_partial_update_keeps_the_other_fields_of_base() -> None:
    base = Knobs(name="kept", count=7)
    updated = dataclass_from_json(Knobs, {"limit": 2}, "knobs", base=base)
    assert updated == Knobs(name="kept", count=7, limit=2.0)
    assert base.limit is None  # the base is never changed


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1], "knobs must be a JSON object, got list"),
        ({"rat": 1, "zzz": 2}, "unknown knobs key\\(s\\): rat, zzz; known keys: count, flag"),
        ({"count": True}, "knobs: count must be int, got True"),
        ({"rate": "fast"}, "knobs: rate must be float, got 'fast'"),
        ({"rate": float("inf")}, "knobs: rate must be a finite number"),
        ({"flag": 1}, "knobs: flag must be bool, got 1"),
        ({"count": -1}, "count must be >= 0"),
    ],
)
def test_bad_input_names_the_object_and_the_key(data: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclass_from_json(Knobs, data, "knobs")


def test_gateway_config_resolves_string_annotations() -> None:
    config = GatewayConfig.from_json('{"slow_factor": 4, "health_path": "/ready"}')
    assert config.slow_factor == 4.0 and isinstance(config.slow_factor, float)
    assert config.health_path == "/ready"
    with pytest.raises(ValueError, match="gateway config: vnodes must be int"):
        GatewayConfig.from_json({"vnodes": 1.5})


def test_gpu_state_update_is_all_or_nothing() -> None:
    state = GpuState()
    hot = state.updated({"temperature_c": 91, "xid": 79})
    assert (hot.temperature_c, hot.xid, hot.healthy) == (91.0, 79, True)
    assert state.temperature_c is None
    with pytest.raises(ValueError, match="unknown GPU fault update key"):
        state.updated({"xid": 48, "temperature": 90})
    with pytest.raises(ValueError, match="slowdown must be > 0"):
        hot.updated({"slowdown": 0})
