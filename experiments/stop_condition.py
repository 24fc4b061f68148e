"""A run's stop condition: abort the method when the SLO's error budget burns too fast.

    stop_condition:
      slo: 0.999            # availability target; error budget = 1 - slo
      max_burn_rate: 14.4   # abort when the error ratio over `window` > max_burn_rate * (1 - slo)
      window: 30s
      min_requests: 20      # not judged on fewer requests in the window
      poll: 1s

What AWS FIS stop conditions and Chaos Mesh's StatusCheck abort do: a chaos run that hurts
users more than it is worth is cut short. A watcher thread polls the burn rate
(`probes.burn_rate`, through Prometheus, so it works on every target) during the method. On a
breach it records why in the run, sets `run.interrupted` (every fault hold wakes and removes
its fault, no new fault is injected), removes every fault and stops the load itself, and the
control stops the method before its next activity; the verdict is then `aborted`.

The window never reaches back before the method started, so errors of an earlier run on the
same cluster do not count. Prometheus failures while polling are counted, not fatal, unless
Prometheus stays unanswered for longer than the window: a run that cannot see its users any
more is stopped too (Chaos Mesh counts an unreachable status check as failed), since faults
would otherwise go on unwatched.

Values may be `${name}` placeholders of the experiment's configuration.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from chaoslib import substitute
from chaoslib.exceptions import ActivityFailed

from experiments.context import RunContext
from experiments.faults import parse_seconds
from probes.burn_rate import burn_rate_queries, measure_burn_rate, prom_range

__all__ = ["StopCondition", "Watcher", "validate", "preflight", "start_watching", "stop_watching"]

log = logging.getLogger("experiments.stop_condition")
KEY = "stop_condition"
DEFAULTS: dict[str, Any] = {
    "slo": 0.999,
    "max_burn_rate": 14.4,
    "window": "30s",
    "min_requests": 20,
    "poll": "1s",
}
MIN_WINDOW_S = 2.0  # increase() needs two scrapes in the window (the embedded cluster's is 1s)
MIN_POLL_S = 0.1
MAX_SAMPLES = 3600  # samples kept for the journal: an hour of method at one poll a second
_WATCHER = "stop_condition_watcher"  # run.load key of the run's Watcher
_CONDITION = "stop_condition"  # run.load key of the validated StopCondition


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class StopCondition:
    """A validated stop condition; times in seconds."""

    slo: float
    max_burn_rate: float
    window_s: float
    min_requests: int
    poll_s: float

    @property
    def max_error_ratio(self) -> float:
        return self.max_burn_rate * (1.0 - self.slo)

    @classmethod
    def from_spec(cls, spec: Any) -> StopCondition:
        """Read the experiment's `stop_condition`; a bad value is a one-line ActivityFailed
        naming the key."""
        if not isinstance(spec, Mapping):
            raise ActivityFailed(f"{KEY}: expected a mapping of {', '.join(DEFAULTS)}")
        unknown = sorted(str(k) for k in spec if k not in DEFAULTS)
        if unknown:
            raise ActivityFailed(
                f"{KEY}: unknown key(s) {', '.join(unknown)}; known: {', '.join(DEFAULTS)}"
            )
        values = {**DEFAULTS, **spec}
        slo = _number(values["slo"], "slo")
        if not 0.0 < slo < 1.0:
            raise ActivityFailed(f"{KEY}.slo: must be within (0, 1), e.g. 0.999; got {slo!r}")
        burn = _number(values["max_burn_rate"], "max_burn_rate")
        if not burn > 0:
            raise ActivityFailed(f"{KEY}.max_burn_rate: must be > 0, got {burn!r}")
        if burn * (1.0 - slo) >= 1.0:
            raise ActivityFailed(
                f"{KEY}.max_burn_rate: {burn:g} can never be exceeded with slo {slo:g} "
                f"(at most {1 / (1 - slo):.4g}x, when every request fails)"
            )
        window = _seconds(values["window"], "window")
        if window < MIN_WINDOW_S:
            raise ActivityFailed(
                f"{KEY}.window: must be at least {MIN_WINDOW_S:g}s (two scrapes), got "
                f"{values['window']!r}"
            )
        minimum = values["min_requests"]
        if isinstance(minimum, bool) or not isinstance(minimum, int) or minimum < 1:
            raise ActivityFailed(
                f"{KEY}.min_requests: must be a whole number >= 1, got {minimum!r}"
            )
        poll = _seconds(values["poll"], "poll")
        if not MIN_POLL_S <= poll <= window:
            raise ActivityFailed(
                f"{KEY}.poll: must be within {MIN_POLL_S:g}s and the window ({window:g}s), "
                f"got {values['poll']!r}"
            )
        return cls(slo, burn, window, minimum, poll)

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "error_budget": 1.0 - self.slo,
            "max_error_ratio": self.max_error_ratio,
            "promql": burn_rate_queries(self.window_s),
        }


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool):
        raise ActivityFailed(f"{KEY}.{key}: {value!r} is not a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ActivityFailed(f"{KEY}.{key}: {value!r} is not a number") from None


def _seconds(value: Any, key: str) -> float:
    if isinstance(value, bool):
        raise ActivityFailed(f"{KEY}.{key}: cannot read {value!r} as a duration")
    return parse_seconds(value, f"{KEY}.{key}")


def parse(
    experiment: Mapping[str, Any], configuration: Mapping[str, Any] | None
) -> StopCondition | None:
    """The experiment's stop condition with placeholders filled, or None when it has none."""
    spec = (experiment or {}).get(KEY)
    if spec is None:
        return None
    spec = substitute(spec, dict(configuration or {}), {}) if isinstance(spec, Mapping) else spec
    return StopCondition.from_spec(spec)


def validate(
    run: RunContext, experiment: Mapping[str, Any], configuration: Mapping[str, Any] | None
) -> StopCondition | None:
    """Check the experiment's stop condition before anything runs and keep it in the run."""
    condition = parse(experiment, configuration)
    run.load.pop(_CONDITION, None)
    if condition is not None:
        run.load[_CONDITION] = condition
    return condition


def preflight(run: RunContext, configuration: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Prometheus must answer the stop condition's queries before a fault is injected."""
    condition = run.load.get(_CONDITION)
    if condition is None:
        return None
    try:
        return measure_burn_rate(
            condition.window_s,
            condition.slo,
            condition.max_burn_rate,
            condition.min_requests,
            timeout_s=5.0,
            configuration=dict(configuration or {}),
        )
    except ActivityFailed as exc:
        raise ActivityFailed(f"{KEY}: {exc}") from None


Measure = Callable[..., dict[str, Any]]


class Watcher:
    """Polls the burn rate in a thread and trips once: records, interrupts, cleans up.

    `measure` and `on_breach` are seams for tests; by default they are the Prometheus probe and
    removing every fault plus stopping the load.
    """

    def __init__(
        self,
        condition: StopCondition,
        run: RunContext,
        configuration: dict[str, Any],
        measure: Measure = measure_burn_rate,
        on_breach: Callable[[], dict[str, Any]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.condition = condition
        self.run = run
        self.configuration = configuration
        self._measure = measure
        self._on_breach = on_breach or self._remove_faults_and_load
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started_at = clock()
        self.ended_at: float | None = None
        self.last_answer_at = self.started_at  # the preflight proved Prometheus answered
        self.polls = 0
        self.judged_polls = 0
        self.prometheus_errors = 0
        self.last_error: str | None = None
        self.max_burn_rate_seen: float | None = None
        self.samples: list[list[Any]] = []
        self.stopped_by: dict[str, Any] | None = None

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        self.started_at = self.last_answer_at = self._clock()
        self._thread = threading.Thread(target=self._loop, name="stop-condition", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
        if self.ended_at is None:
            self.ended_at = self._clock()

    @property
    def active(self) -> bool:
        return self._thread is not None and not self._stop.is_set()

    def _loop(self) -> None:
        while not self._stop.is_set() and self.stopped_by is None:
            began = time.monotonic()
            try:
                self.poll_once()
            except Exception as exc:  # the watcher must never die silently mid-run
                log.exception("stop condition poll failed")
                self._note_error(f"{type(exc).__name__}: {exc}")
            self._stop.wait(max(0.0, self.condition.poll_s - (time.monotonic() - began)))

    # -- one poll --------------------------------------------------------------------------

    def poll_once(self) -> dict[str, Any] | None:
        """Measure once and trip on a breach, or on Prometheus unanswered beyond the window."""
        if self.stopped_by is not None:
            return None
        now = self._clock()
        # never reach back before the method started (an earlier run's errors are not ours);
        # whole seconds, so the reason reads "over 6s", not "over 5003ms"
        since = math.ceil(max(MIN_WINDOW_S, now - self.started_at))
        window = min(self.condition.window_s, float(since))
        self.polls += 1
        try:
            result = self._measure(
                window,
                self.condition.slo,
                self.condition.max_burn_rate,
                self.condition.min_requests,
                at=now,
                timeout_s=min(2.0, max(0.5, self.condition.poll_s)),
                configuration=self.configuration,
            )
        except ActivityFailed as exc:
            self._note_error(str(exc))
            blind = self._clock() - self.last_answer_at
            if blind > self.condition.window_s:
                self._trip(
                    "prometheus-unanswered",
                    f"stop condition: Prometheus unanswered for {blind:.1f}s "
                    f"(> window {prom_range(self.condition.window_s)}) "
                    f"at +{self._clock() - self.started_at:.1f}s: {exc}",
                    None,
                )
            return None
        self.last_answer_at = self._clock()
        rate = result.get("burn_rate")
        if result.get("judged"):
            self.judged_polls += 1
            if rate is not None and (
                self.max_burn_rate_seen is None or rate > self.max_burn_rate_seen
            ):
                self.max_burn_rate_seen = rate
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append(
                [
                    round(now - self.started_at, 3),
                    rate,
                    result.get("requests"),
                    result.get("judged"),
                ]
            )
        if result.get("breached"):
            self._trip(
                "burn-rate",
                f"stop condition: burn rate {rate:.1f}x > {self.condition.max_burn_rate:g}x "
                f"over {prom_range(window)} at +{now - self.started_at:.1f}s",
                result,
            )
        return result

    def _note_error(self, message: str) -> None:
        self.prometheus_errors += 1
        self.last_error = message
        log.warning("stop condition: %s", message)

    # -- the breach ------------------------------------------------------------------------

    def _trip(self, kind: str, reason: str, result: Mapping[str, Any] | None) -> None:
        at = self._clock()
        stopped_by: dict[str, Any] = {
            "kind": kind,
            "reason": reason,
            "at": at,
            "after_s": round(at - self.started_at, 3),
        }
        if result is not None:
            stopped_by.update(
                {k: result.get(k) for k in ("burn_rate", "error_ratio", "requests", "errors")}
            )
            stopped_by["window_s"] = result.get("window_s")
            stopped_by["summary"] = result.get("summary")
        self.stopped_by = stopped_by
        self.run.load["stopped_by"] = stopped_by
        self.run.interrupted.set()  # every fault hold wakes and removes its fault
        _say(f"inference-chaos: {reason}; removing every fault and stopping the load")
        try:
            stopped_by["cleanup"] = self._on_breach()
        except Exception as exc:  # recorded; the control's own cleanup tries again
            stopped_by["cleanup"] = {"errors": [f"{type(exc).__name__}: {exc}"]}
        stopped_by["cleaned_up_at"] = self._clock()

    def _remove_faults_and_load(self) -> dict[str, Any]:
        from experiments import faults
        from loadtests import actions as load_actions

        outcome: dict[str, Any] = {"errors": []}
        try:
            outcome["removed"] = faults.recover_all(configuration=self.configuration)["removed"]
        except ActivityFailed as exc:
            outcome["errors"].append(f"recovering faults: {exc}")
        try:
            stopped = load_actions.stop_load(configuration=self.configuration)
            outcome["load_stopped"] = bool(stopped.get("stopped"))
        except Exception as exc:  # no load may have been started
            outcome["errors"].append(f"stopping the load: {exc}")
        return outcome

    # -- what the journal keeps ------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        stopped = self.stopped_by or {}
        return {
            "config": self.condition.to_json(),
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "polls": self.polls,
            "judged_polls": self.judged_polls,
            "prometheus_errors": self.prometheus_errors,
            "last_prometheus_error": self.last_error,
            "max_burn_rate_seen": self.max_burn_rate_seen,
            "breached": self.stopped_by is not None,
            "breached_at": stopped.get("at"),
            "burn_rate": stopped.get("burn_rate"),
            "stopped_by": self.stopped_by,
            "samples": self.samples,
        }


# -- the control's hooks ---------------------------------------------------------------------


def start_watching(run: RunContext | None, configuration: dict[str, Any]) -> Watcher | None:
    """Start polling when the run has a stop condition (before the method)."""
    if run is None or run.load.get(_CONDITION) is None:
        return None
    previous = run.load.get(_WATCHER)
    if previous is not None:
        previous.stop()
    watcher = Watcher(run.load[_CONDITION], run, configuration)
    run.load[_WATCHER] = watcher
    watcher.start()
    return watcher


def stop_watching(run: RunContext | None) -> dict[str, Any] | None:
    """Stop polling (after the method, idempotent); the journal's `stop_condition` entry."""
    watcher = run.load.get(_WATCHER) if run is not None else None
    if watcher is None:
        return None
    watcher.stop()
    return watcher.to_json()


def interrupt_reason(run: RunContext | None) -> str | None:
    """Why the method must not go on: the breach, while the watcher is on; else None."""
    watcher = run.load.get(_WATCHER) if run is not None else None
    if watcher is None or watcher.stopped_by is None or watcher.ended_at is not None:
        return None
    return str(watcher.stopped_by["reason"])
