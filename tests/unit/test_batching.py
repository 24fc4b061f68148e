"""The continuous-batching latency model and KV admission, without any server."""

import pytest

from resilience.batching import (
    BatchingConfig,
    KvScheduler,
    LatencyModel,
    decode_step_seconds,
    prefill_seconds,
    step_seconds,
)
from resilience.jsonconfig import coerce_field

NO_JITTER = BatchingConfig(jitter_fraction=0.0)


def test_prefill_grows_with_prompt_tokens() -> None:
    times = [prefill_seconds(NO_JITTER, n) for n in (1, 100, 1000, 4000)]
    assert times == sorted(times) and len(set(times)) == 4
    slope = (times[3] - times[2]) / 3000
    assert slope == pytest.approx(NO_JITTER.prefill_s_per_token)


def test_decode_step_grows_with_batch_size() -> None:
    times = [decode_step_seconds(NO_JITTER, b) for b in (1, 8, 32, 64)]
    assert times == sorted(times) and len(set(times)) == 4
    assert times[0] >= NO_JITTER.decode_step_base_s


def test_step_adds_prefill_of_new_sequences_to_the_decode_of_running_ones() -> None:
    decode_only = step_seconds(NO_JITTER, 10)
    with_prefill = step_seconds(NO_JITTER, 10, [500, 20])
    expected_extra = prefill_seconds(NO_JITTER, 500) + prefill_seconds(NO_JITTER, 20)
    assert with_prefill == pytest.approx(decode_only + expected_extra)
    # A step with only new sequences costs their prefill and no decode overhead.
    assert step_seconds(NO_JITTER, 0, [100]) == pytest.approx(prefill_seconds(NO_JITTER, 100))


def test_jitter_is_bounded_and_reproducible_with_a_seed() -> None:
    config = BatchingConfig(jitter_fraction=0.1, seed=7)
    base = step_seconds(config, 16)
    run_a = LatencyModel(config)
    run_b = LatencyModel(config)
    seq_a = [run_a.step_seconds(16) for _ in range(200)]
    seq_b = [run_b.step_seconds(16) for _ in range(200)]
    assert seq_a == seq_b
    assert all(0.9 * base <= t <= 1.1 * base for t in seq_a)
    assert len(set(seq_a)) > 100  # it does vary
    other = LatencyModel(config, seed="worker-b")
    assert [other.step_seconds(16) for _ in range(200)] != seq_a


def test_kv_capacity_queues_the_excess_in_fifo_order() -> None:
    sched: KvScheduler[str] = KvScheduler(capacity_tokens=1000, max_num_seqs=64)
    for name in "abcde":
        sched.submit(name, prompt_tokens=100, max_tokens=200)  # 300 tokens each
    assert sched.admit() == ["a", "b", "c"]
    assert (sched.num_running, sched.num_waiting) == (3, 2)
    assert sched.used_tokens == 900
    assert sched.usage == pytest.approx(0.9)
    assert sched.admit() == []  # still no room for d
    assert sched.finish("b")
    assert sched.admit() == ["d"]
    assert list(sched.waiting) == ["e"]


def test_head_of_line_blocks_smaller_sequences_behind_it() -> None:
    sched: KvScheduler[str] = KvScheduler(capacity_tokens=1000, max_num_seqs=64)
    sched.submit("small", 100, 100)
    sched.submit("big", 500, 300)
    sched.submit("tiny", 10, 10)
    assert sched.admit() == ["small", "big"]
    sched.submit("huge", 500, 400)
    sched.finish("small")
    # 800 in use; "tiny" fits but waits behind "huge", as vLLM's FCFS does.
    assert sched.admit() == ["tiny"]
    assert sched.admit() == []
    sched.finish("big")
    assert sched.admit() == ["huge"]


def test_max_num_seqs_bounds_the_batch_even_with_cache_to_spare() -> None:
    sched: KvScheduler[int] = KvScheduler(capacity_tokens=10**6, max_num_seqs=4)
    for i in range(10):
        sched.submit(i, 10, 10)
    assert sched.admit() == [0, 1, 2, 3]
    assert sched.num_waiting == 6


def test_prefill_budget_limits_admissions_per_step_but_never_starves() -> None:
    sched: KvScheduler[str] = KvScheduler(capacity_tokens=10**6, max_num_seqs=64)
    sched.submit("a", 600, 10)
    sched.submit("b", 600, 10)
    sched.submit("c", 5000, 10)
    assert sched.admit(prefill_token_budget=1000) == ["a"]
    assert sched.admit(prefill_token_budget=1000) == ["b"]
    assert sched.admit(prefill_token_budget=1000) == ["c"]  # alone, even above budget


def test_abort_frees_the_reservation_of_running_and_waiting_sequences() -> None:
    sched: KvScheduler[str] = KvScheduler(capacity_tokens=300, max_num_seqs=8)
    sched.submit("a", 100, 200)
    sched.submit("b", 100, 200)
    sched.admit()
    assert sched.finish("b")  # a waiting one
    assert sched.num_waiting == 0
    assert sched.finish("a")
    assert sched.used_tokens == 0 and not sched.has_work()
    assert not sched.finish("a")  # already gone


def test_shrinking_capacity_keeps_running_sequences_and_holds_new_ones() -> None:
    sched: KvScheduler[str] = KvScheduler(capacity_tokens=1000, max_num_seqs=8)
    sched.submit("a", 100, 400)
    sched.submit("b", 100, 300)
    assert sched.admit() == ["a", "b"]
    sched.capacity_tokens = 600  # HBM pressure
    assert sched.num_running == 2
    assert sched.usage == 1.0  # clamped
    sched.submit("c", 50, 50)
    assert sched.admit() == []
    sched.finish("a")
    assert sched.admit() == ["c"]


def test_submitting_twice_is_refused() -> None:
    sched: KvScheduler[str] = KvScheduler(100, 1)
    sched.submit("a", 1, 1)
    with pytest.raises(ValueError):
        sched.submit("a", 1, 1)


def test_config_from_json_overrides_defaults_and_round_trips() -> None:
    config = BatchingConfig.from_json({"kv_cache_tokens": 20000, "decode_step_base_s": 1})
    assert config.kv_cache_tokens == 20000
    assert config.decode_step_base_s == 1.0 and isinstance(config.decode_step_base_s, float)
    assert config.max_num_seqs == BatchingConfig().max_num_seqs
    assert BatchingConfig.from_json(config.to_json()) == config
    assert BatchingConfig.from_json(None) == BatchingConfig()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"kv_cache_tokns": 1}, "unknown BatchingConfig key"),
        ({"max_num_seqs": True}, "max_num_seqs must be int"),
        ({"max_num_seqs": 2.5}, "max_num_seqs must be int"),
        ({"decode_step_base_s": "fast"}, "decode_step_base_s must be float"),
        ({"decode_step_base_s": float("nan")}, "finite"),
        ({"decode_step_base_s": 0}, "decode_step_base_s must be > 0"),
        ({"jitter_fraction": 1.0}, "jitter_fraction"),
        ({"kv_cache_tokens": 1000}, "max_model_len must not exceed kv_cache_tokens"),
        ({"reasoning_tokens": -1}, "reasoning_tokens"),
        ([1, 2], "JSON object"),
    ],
)
def test_config_from_json_rejects_bad_input_clearly(data: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BatchingConfig.from_json(data)  # type: ignore[arg-type]


def test_coerce_field_handles_optional_and_str() -> None:
    assert coerce_field("t", float | None, None) is None
    assert coerce_field("t", float | None, 3) == 3.0
    assert coerce_field("s", str, "x") == "x"
    with pytest.raises(ValueError, match="flag must be bool"):
        coerce_field("flag", bool, 1)
