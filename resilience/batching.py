"""A small, deterministic model of continuous batching on one GPU.

The simulated worker (`resilience.worker`) runs this model in an asyncio loop; everything here is
pure so the latency maths can be tested without a server. The shape follows vLLM's scheduler:

- A step either decodes one token for every running sequence or also prefills newly admitted
  ones. Prefill cost grows with prompt tokens and stalls the step (no chunked prefill), which is
  why a burst of arrivals shows up as inter-token-latency spikes for everyone already running.
- A decode step costs a fixed launch overhead plus a little per running sequence, so throughput
  per sequence falls as the batch grows.
- Every sequence reserves ``prompt + max_tokens`` KV-cache tokens on admission. When the cache
  (or ``max_num_seqs``) is full the rest wait in strict FIFO order, as vLLM's FCFS policy does.
"""

import dataclasses
import random
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from resilience.jsonconfig import dataclass_from_json

__all__ = [
    "BatchingConfig",
    "KvScheduler",
    "LatencyModel",
    "decode_step_seconds",
    "prefill_seconds",
    "step_seconds",
]


@dataclass(frozen=True)
class BatchingConfig:
    """Every knob of the simulated worker; the defaults suit a fast loopback demo."""

    prefill_base_s: float = 0.002
    prefill_s_per_token: float = 0.0002
    decode_step_base_s: float = 0.015
    decode_step_per_seq_s: float = 0.0005
    kv_cache_tokens: int = 16384
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    max_model_len: int = 8192
    default_max_tokens: int = 64
    reasoning_tokens: int = 0
    jitter_fraction: float = 0.05
    seed: int = 0
    model_load_s: float = 0.2  # a task's model load (PUT /task) when the body names no load_s

    def __post_init__(self) -> None:
        for name in ("prefill_base_s", "prefill_s_per_token", "decode_step_per_seq_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.decode_step_base_s <= 0:
            raise ValueError("decode_step_base_s must be > 0 (a step can never be free)")
        for name in (
            "kv_cache_tokens",
            "max_num_seqs",
            "max_num_batched_tokens",
            "max_model_len",
            "default_max_tokens",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.reasoning_tokens < 0:
            raise ValueError("reasoning_tokens must be >= 0")
        if self.model_load_s < 0:
            raise ValueError("model_load_s must be >= 0")
        if not 0 <= self.jitter_fraction < 1:
            raise ValueError("jitter_fraction must be in [0, 1)")
        if self.max_model_len > self.kv_cache_tokens:
            # vLLM refuses to start when one full-length sequence cannot fit in the cache.
            raise ValueError("max_model_len must not exceed kv_cache_tokens")
        if self.default_max_tokens >= self.max_model_len:
            raise ValueError("default_max_tokens must be below max_model_len")

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> "BatchingConfig":
        """Build a config from a JSON object, refusing unknown keys and wrong types.

        A typo in an experiment's worker config must fail loudly rather than silently run the
        defaults.
        """
        if data is None:
            return cls()
        return dataclass_from_json(cls, data, "BatchingConfig")

    def to_json(self) -> dict[str, Any]:
        """Plain dict, the inverse of `from_json`."""
        return dataclasses.asdict(self)


def prefill_seconds(config: BatchingConfig, prompt_tokens: int) -> float:
    """Time to prefill one prompt; linear in its length (attention is cheap at demo sizes)."""
    return config.prefill_base_s + config.prefill_s_per_token * max(0, prompt_tokens)


def decode_step_seconds(config: BatchingConfig, batch_size: int) -> float:
    """Time of one decode step producing one token for each of ``batch_size`` sequences."""
    return config.decode_step_base_s + config.decode_step_per_seq_s * max(0, batch_size)


def step_seconds(
    config: BatchingConfig, decoding: int, prefill_prompts: Sequence[int] = ()
) -> float:
    """Noise-free duration of one engine step: decode the running batch, prefill the new ones."""
    total = decode_step_seconds(config, decoding) if decoding else 0.0
    for prompt_tokens in prefill_prompts:
        total += prefill_seconds(config, prompt_tokens)
    return total


class LatencyModel:
    """The latency formulas plus seeded jitter, so two runs with one seed time out identically."""

    def __init__(self, config: BatchingConfig, seed: int | str | None = None) -> None:
        self.config = config
        self._rng = random.Random(config.seed if seed is None else seed)

    def prefill_seconds(self, prompt_tokens: int) -> float:
        return prefill_seconds(self.config, prompt_tokens)

    def decode_step_seconds(self, batch_size: int) -> float:
        return decode_step_seconds(self.config, batch_size)

    def step_seconds(self, decoding: int, prefill_prompts: Sequence[int] = ()) -> float:
        """One step's duration with multiplicative jitter in ``1 ± jitter_fraction``."""
        base = step_seconds(self.config, decoding, prefill_prompts)
        jitter = self.config.jitter_fraction
        if jitter:
            base *= 1.0 + self._rng.uniform(-jitter, jitter)
        return base


T = TypeVar("T", bound=Hashable)


class KvScheduler(Generic[T]):
    """KV-cache admission: who runs, who waits, and how full the cache is.

    Items are opaque hashable handles (the worker's sequence objects). ``capacity_tokens`` may be
    lowered at run time (an HBM-pressure fault); sequences already running keep their blocks, as
    vLLM never evicts a running sequence without preemption, and new ones wait until space frees.
    """

    def __init__(self, capacity_tokens: int, max_num_seqs: int) -> None:
        if capacity_tokens < 0 or max_num_seqs < 1:
            raise ValueError("capacity_tokens must be >= 0 and max_num_seqs >= 1")
        self.capacity_tokens = capacity_tokens
        self.max_num_seqs = max_num_seqs
        self._running: dict[T, int] = {}
        self._waiting: dict[T, tuple[int, int]] = {}  # insertion order is the FIFO order
        self._used = 0

    @staticmethod
    def reservation(prompt_tokens: int, max_tokens: int) -> int:
        """KV tokens a sequence holds while it runs: its whole context, reserved up front."""
        return prompt_tokens + max_tokens

    def submit(self, item: T, prompt_tokens: int, max_tokens: int) -> None:
        """Queue a sequence; it runs once `admit` finds room for it."""
        if item in self._running or item in self._waiting:
            raise ValueError("sequence already submitted")
        self._waiting[item] = (self.reservation(prompt_tokens, max_tokens), prompt_tokens)

    def admit(self, prefill_token_budget: int | None = None) -> list[T]:
        """Move waiting sequences to running, oldest first, while the cache and budget allow.

        Strict FIFO: a large sequence at the head blocks smaller ones behind it (no starvation).
        The prefill budget bounds how many prompt tokens one step prefills (vLLM's
        ``max_num_batched_tokens``); the first admitted sequence always fits the budget.
        """
        admitted: list[T] = []
        prefill_tokens = 0
        while self._waiting and len(self._running) < self.max_num_seqs:
            item = next(iter(self._waiting))
            tokens, prompt_tokens = self._waiting[item]
            if self._used + tokens > self.capacity_tokens:
                break
            if (
                admitted
                and prefill_token_budget is not None
                and prefill_tokens + prompt_tokens > prefill_token_budget
            ):
                break
            del self._waiting[item]
            self._running[item] = tokens
            self._used += tokens
            prefill_tokens += prompt_tokens
            admitted.append(item)
        return admitted

    def finish(self, item: T) -> bool:
        """Release a sequence (done or aborted, running or waiting); False if unknown."""
        tokens = self._running.pop(item, None)
        if tokens is not None:
            self._used -= tokens
            return True
        return self._waiting.pop(item, None) is not None

    @property
    def running(self) -> Iterator[T]:
        return iter(self._running)

    @property
    def waiting(self) -> Iterator[T]:
        return iter(self._waiting)

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def used_tokens(self) -> int:
        return self._used

    @property
    def usage(self) -> float:
        """Reserved share of the cache, clamped to 0..1 (a shrunk cache may be over-full)."""
        if self.capacity_tokens <= 0:
            return 1.0 if self._used else 0.0
        return min(1.0, self._used / self.capacity_tokens)

    def has_work(self) -> bool:
        return bool(self._running or self._waiting)
