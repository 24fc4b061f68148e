"""Load shapes: how many users run at each moment, and when the run ends.

Imports Locust, so only the locustfile (inside the Locust subprocess) may import this module.
Every shape ends the run at `duration`: the load generator stops by itself. A shape also ends
the run early once `request_stop()` was called: in headless mode Locust installs its own
SIGTERM handler only after the shape has finished, so the locustfile routes SIGTERM here and
the run ends the graceful way (in-flight requests complete, the summary is printed).
"""

from __future__ import annotations

import math

from locust import LoadTestShape

from loadtests.settings import LoadSettings

_stop_requested = False


def request_stop() -> None:
    """End the run at the next tick (Locust ticks shapes once a second)."""
    global _stop_requested
    _stop_requested = True


class ConstantShape(LoadTestShape):
    """`users` users (started at `spawn_rate` per second) until `duration`."""

    abstract = True  # chosen by `shape_class_for`, never picked up by Locust on its own
    bound_settings: LoadSettings | None = None

    def __init__(self, settings: LoadSettings | None = None):
        super().__init__()
        self.settings = settings or self.bound_settings or LoadSettings.from_env()

    def tick(self) -> tuple[int, float] | None:
        s = self.settings
        if _stop_requested or self.get_run_time() >= s.duration:
            return None
        return s.users, s.effective_spawn_rate


class RampShape(ConstantShape):
    """From 1 user to `users` linearly over `ramp` seconds, then hold until `duration`."""

    abstract = True

    def tick(self) -> tuple[int, float] | None:
        s = self.settings
        elapsed = self.get_run_time()
        if _stop_requested or elapsed >= s.duration:
            return None
        if s.ramp <= 0 or elapsed >= s.ramp:
            return s.users, s.effective_spawn_rate
        target = 1 + math.floor((s.users - 1) * elapsed / s.ramp)
        # Locust ticks once a second: start each step's users within that second.
        return target, max(1.0, (s.users - 1) / s.ramp)


class SpikeShape(ConstantShape):
    """`users` users, a flood of `spike_users` from `spike_at` for `spike_duration`, then back:
    the load an autoscaler must see coming (users arrive within a second, as in a real flood)."""

    abstract = True

    def tick(self) -> tuple[int, float] | None:
        s = self.settings
        elapsed = self.get_run_time()
        if _stop_requested or elapsed >= s.duration:
            return None
        in_spike = s.spike_at <= elapsed < s.spike_at + s.spike_duration
        return (s.spike_users if in_spike else s.users), s.effective_spawn_rate


def shape_class_for(settings: LoadSettings) -> type[LoadTestShape]:
    """A concrete shape class bound to the settings, for the locustfile to expose.

    Locust instantiates shape classes without arguments, hence the settings on the class.
    """
    base = {"constant": ConstantShape, "ramp": RampShape, "spike": SpikeShape}[settings.shape]
    name = base.__name__.replace("Shape", "LoadShape")
    return type(name, (base,), {"abstract": False, "bound_settings": settings})
