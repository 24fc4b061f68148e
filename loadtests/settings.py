"""The load run's parameters and their environment variables.

The harness and the Locust subprocess share nothing but the environment, so both sides read
and write the parameters through this one class: the runner calls `to_env()`, the locustfile
calls `from_env()`. Locust-free, so the harness can import it without gevent's monkey-patching.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

SHAPES = ("constant", "ramp", "spike")

# Field name -> environment variable.
ENV_NAMES: dict[str, str] = {
    "records_path": "INFERENCE_CHAOS_RECORDS",
    "metrics_port": "INFERENCE_CHAOS_METRICS_PORT",
    "shape": "INFERENCE_CHAOS_SHAPE",
    "users": "INFERENCE_CHAOS_USERS",
    "duration": "INFERENCE_CHAOS_DURATION",
    "ramp": "INFERENCE_CHAOS_RAMP",
    "spike_users": "INFERENCE_CHAOS_SPIKE_USERS",
    "spike_at": "INFERENCE_CHAOS_SPIKE_AT",
    "spike_duration": "INFERENCE_CHAOS_SPIKE_DURATION",
    "spawn_rate": "INFERENCE_CHAOS_SPAWN_RATE",
    "max_tokens": "INFERENCE_CHAOS_MAX_TOKENS",
    "sessions": "INFERENCE_CHAOS_SESSIONS",
    "session_skew": "INFERENCE_CHAOS_SESSION_SKEW",
    "think_time": "INFERENCE_CHAOS_THINK_TIME",
    "model": "INFERENCE_CHAOS_MODEL",
    "timeout": "INFERENCE_CHAOS_TIMEOUT",
    "deadline": "INFERENCE_CHAOS_DEADLINE",
}


@dataclass(slots=True)
class LoadSettings:
    """What one load run does. Durations and times are seconds.

    Shape `spike` runs `users` users, jumps to `spike_users` at `spike_at` seconds for
    `spike_duration` seconds (a flood), then falls back to `users`.

    `think_time` is the pause between a user's requests (0: back to back). `deadline` is a Unix
    time at which the Locust process exits whatever it is doing: the last guard against a load
    generator that outlives its run.
    """

    users: int = 16
    duration: float = 60.0
    shape: str = "constant"
    ramp: float = 0.0
    spike_users: int = 0
    spike_at: float = 0.0
    spike_duration: float = 0.0
    spawn_rate: float | None = None
    max_tokens: int = 32
    sessions: int = 200
    session_skew: float = 1.0
    think_time: float = 0.0
    model: str = "deepseek-sim"
    timeout: float = 30.0
    records_path: str | None = None
    metrics_port: int | None = None
    deadline: float | None = None

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {', '.join(SHAPES)}, got {self.shape!r}")
        if self.users < 1:
            raise ValueError("users must be at least 1")
        if self.duration <= 0:
            raise ValueError("duration must be positive")
        if self.ramp < 0 or self.think_time < 0:
            raise ValueError("ramp and think_time cannot be negative")
        if self.shape == "spike" and (
            self.spike_users <= self.users or self.spike_at < 0 or self.spike_duration <= 0
        ):
            raise ValueError(
                "a spike needs spike_users > users, spike_at >= 0 and spike_duration > 0"
            )
        if self.max_tokens < 1 or self.sessions < 1:
            raise ValueError("max_tokens and sessions must be at least 1")

    @property
    def effective_spawn_rate(self) -> float:
        """Users started per second: all within a second unless told otherwise, but at most
        100 a second, above which Locust warns that spawning itself disturbs the run."""
        peak = max(self.users, self.spike_users)
        return self.spawn_rate if self.spawn_rate else float(min(peak, 100))

    def to_env(self) -> dict[str, str]:
        """Every variable, set explicitly (empty for unset) so nothing leaks from the parent."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[ENV_NAMES[f.name]] = "" if value is None else str(value)
        return out

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LoadSettings:
        environ = os.environ if environ is None else environ
        kwargs: dict[str, object] = {}
        for f in fields(cls):
            raw = environ.get(ENV_NAMES[f.name], "").strip()
            if not raw:
                continue
            kind = str(f.type)
            if kind.startswith("int"):
                kwargs[f.name] = int(raw)
            elif kind.startswith("float"):
                kwargs[f.name] = float(raw)
            else:
                kwargs[f.name] = raw
        return cls(**kwargs)  # type: ignore[arg-type]
