"""Many keys' searches in one process, a slice of each in turn.

Porcupine runs one goroutine per key and stops them all at the first violation; a key
that is quickly shown illegal then answers for the whole history even while another key's
search is hard. Round-robin over resumable searches gives one Python process the same
property, and lets the checker hand unfinished keys to other processes.
"""

from __future__ import annotations

import time
from typing import Any

from probes.linearizability.history import Operation
from probes.linearizability.models import Model
from probes.linearizability.search import PartitionSearch, StopFlag
from probes.linearizability.verdict import KeyResult, key_result

__all__ = ["MAX_STATES", "Interleaver"]

# Memoised states held at once in one process. A state costs about 100 bytes plus its bitset
# (one bit per operation of its key, so a key of n operations counts 1 + n // 800 states)
# plus its value (kv strings), so this bounds a hopeless search to a GB or so instead of
# letting it take the machine before the deadline comes.
MAX_STATES = 4_000_000


class Interleaver:
    """Round-robin over the searches of several keys; results collect in `results`."""

    def __init__(
        self, parts: dict[Any, list[Operation]], model: Model, max_states: int = MAX_STATES
    ) -> None:
        self.active = [PartitionSearch(ops, model, key) for key, ops in parts.items()]
        self.results: dict[Any, KeyResult] = {}
        self.max_states = max_states
        self._weight = {key: 1 + len(ops) // 800 for key, ops in parts.items()}

    def run(self, until: float, stop: StopFlag | None = None) -> str | None:
        """Advance every key until all finish (None), one is illegal ("illegal"), `until`
        (monotonic) passes ("time"), `stop` is set ("stopped") or the searches hold more
        than `max_states` states ("states")."""
        ended: str | None = None
        held = {job.key: job.explored * self._weight[job.key] for job in self.active}
        total = sum(held.values())
        while self.active and ended is None:
            for job in self.active:
                outcome = job.advance()
                now = 0 if outcome is not None else job.explored * self._weight[job.key]
                total += now - held[job.key]
                held[job.key] = now
                if outcome is not None:
                    self.results[job.key] = key_result(job, outcome)
                    if outcome.result == "illegal":
                        ended = "illegal"
                if ended is None and time.monotonic() > until:
                    ended = "time"
                if ended is None and stop is not None and stop.is_set():
                    ended = "stopped"
                if ended is None and total > self.max_states:
                    ended = "states"
                if ended:
                    break
            self.active = [job for job in self.active if job.key not in self.results]
        return ended

    def release(self, keys: set[Any]) -> None:
        """Drop these keys' searches (another process takes them over)."""
        for job in self.active:
            if job.key in keys:
                job.abandon("handed over")
        self.active = [job for job in self.active if job.key not in keys]

    def why(self, ended: str | None) -> str:
        """The reason recorded on keys left unfinished by `run` ending with `ended`."""
        if ended == "time":
            return "deadline passed"
        if ended == "states":
            return f"search too large: over {self.max_states:,} states held in memory"
        return "not searched to the end: another key is not linearizable"

    def abandon_all(self, reason: str) -> None:
        """Record every unfinished key as unknown, with why."""
        for job in self.active:
            self.results[job.key] = key_result(job, job.abandon(reason))
        self.active = []
