"""The fault models behind the proxy, driven by seeded randomness and a fake clock."""

from __future__ import annotations

import random
import statistics

import pytest

from resilience.linkfaults import (
    DelaySampler,
    LinkFault,
    RetransmissionModel,
    TokenBucket,
    combine,
)


class ScriptedRandom:
    """A stand-in for random.Random that returns the given draws in order."""

    def __init__(self, draws: list[float]) -> None:
        self._draws = iter(draws)

    def random(self) -> float:
        return next(self._draws)


def fault(**overrides: object) -> LinkFault:
    body: dict[str, object] = {"links": ["gateway->w0"], **overrides}
    return LinkFault.from_json(body, fault_id=str(overrides.get("id", "f1")))


def lag1_correlation(values: list[float]) -> float:
    return statistics.correlation(values[:-1], values[1:])


# ---- LinkFault: parsing and validation


def test_from_json_reads_every_field_and_round_trips() -> None:
    body = {
        "links": ["a->b", "a->c"],
        "direction": "to",
        "delay_ms": 200,
        "jitter_ms": 20.5,
        "correlation": 50,
        "loss": 1.5,
        "rate_bps": 50_000,
        "partition": None,
    }
    parsed = LinkFault.from_json(body, fault_id="net-1")
    assert parsed.id == "net-1"
    assert parsed.links == ("a->b", "a->c")
    assert (parsed.delay_ms, parsed.jitter_ms, parsed.correlation) == (200.0, 20.5, 50.0)
    assert (parsed.loss, parsed.rate_bps, parsed.direction) == (1.5, 50_000.0, "to")
    assert LinkFault.from_json(parsed.to_json()) == parsed


def test_defaults_are_both_directions_and_no_effect() -> None:
    parsed = LinkFault.from_json({"id": "x", "links": ["l"]})
    assert parsed.direction == "both"
    assert parsed.is_noop
    assert not fault(delay_ms=1).is_noop


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"links": ["l"], "delay": 5}, "unknown field"),
        ({"links": ["l"], "delay_ms": -1}, "must not be negative"),
        ({"links": ["l"], "jitter_ms": -0.5}, "must not be negative"),
        ({"links": ["l"], "direction": "sideways"}, "'direction' must be one of"),
        ({"links": ["l"], "partition": "drop"}, "'partition' must be null or one of"),
        ({"links": ["l"], "correlation": 101}, "at most 100"),
        ({"links": ["l"], "loss": 150}, "at most 100"),
        ({"links": ["l"], "rate_bps": 0}, "'rate_bps' must be > 0"),
        ({"links": ["l"], "delay_ms": "200"}, "must be a finite number"),
        ({"links": ["l"], "delay_ms": True}, "must be a finite number"),
        ({"links": []}, "non-empty list of link names"),
        ({"links": "l"}, "non-empty list of link names"),
        ({"links": ["l"], "id": "other"}, "differs from id in path"),
    ],
)
def test_invalid_bodies_are_rejected_with_a_clear_message(
    body: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        LinkFault.from_json(body, fault_id="f1")


def test_an_id_is_required() -> None:
    with pytest.raises(ValueError, match="'id'"):
        LinkFault.from_json({"links": ["l"]})
    with pytest.raises(ValueError, match="JSON object"):
        LinkFault.from_json(["l"])  # type: ignore[arg-type]


def test_direction_follows_chaos_mesh_seen_from_the_target() -> None:
    to_target = fault(direction="from")
    from_target = fault(direction="to")
    both = fault(direction="both")
    assert to_target.affects("gateway->w0", "upstream")
    assert not to_target.affects("gateway->w0", "downstream")
    assert from_target.affects("gateway->w0", "downstream")
    assert not from_target.affects("gateway->w0", "upstream")
    assert both.affects("gateway->w0", "upstream") and both.affects("gateway->w0", "downstream")
    assert not both.affects("gateway->w1", "upstream")


# ---- delay with correlated jitter (netem semantics)


def test_delay_without_jitter_is_constant() -> None:
    sampler = DelaySampler(150, 0, 0, random.Random(1))
    assert {sampler.sample() for _ in range(100)} == {0.150}


def test_jitter_stays_within_delay_plus_or_minus_jitter_and_centres_on_delay() -> None:
    sampler = DelaySampler(100, 30, 0, random.Random(2))
    samples = [sampler.sample() for _ in range(20_000)]
    assert min(samples) >= 0.070 and max(samples) <= 0.130
    assert statistics.mean(samples) == pytest.approx(0.100, abs=0.001)
    # uniform(-30, 30) ms has a standard deviation of 30/sqrt(3) ms
    assert statistics.stdev(samples) == pytest.approx(0.030 / 3**0.5, rel=0.05)


def test_delay_is_never_negative_even_when_jitter_exceeds_it() -> None:
    sampler = DelaySampler(10, 50, 25, random.Random(3))
    samples = [sampler.sample() for _ in range(10_000)]
    assert min(samples) == 0.0
    assert all(s >= 0.0 for s in samples)
    assert max(samples) > 0.040


def test_correlation_100_keeps_the_jitter_offset_constant() -> None:
    sampler = DelaySampler(100, 40, 100, random.Random(4))
    samples = [sampler.sample() for _ in range(1_000)]
    steps = [abs(b - a) for a, b in zip(samples, samples[1:], strict=False)]
    assert max(steps) < 1e-9
    assert samples[0] != 0.100  # the offset itself is random, only its change is zero


def test_correlation_0_gives_independent_samples() -> None:
    sampler = DelaySampler(100, 40, 0, random.Random(5))
    samples = [sampler.sample() for _ in range(20_000)]
    assert abs(lag1_correlation(samples)) < 0.03


@pytest.mark.parametrize("correlation", [25, 75, 95])
def test_correlation_sets_the_lag1_autocorrelation(correlation: int) -> None:
    sampler = DelaySampler(100, 40, correlation, random.Random(6))
    samples = [sampler.sample() for _ in range(40_000)]
    assert lag1_correlation(samples) == pytest.approx(correlation / 100, abs=0.04)


def test_high_correlation_makes_consecutive_samples_close() -> None:
    loose = DelaySampler(100, 40, 0, random.Random(7))
    tight = DelaySampler(100, 40, 90, random.Random(7))

    def mean_step(sampler: DelaySampler) -> float:
        samples = [sampler.sample() for _ in range(5_000)]
        return statistics.mean(abs(b - a) for a, b in zip(samples, samples[1:], strict=False))

    assert mean_step(tight) < mean_step(loose) / 5


# ---- loss as TCP experiences it


def test_no_loss_costs_nothing() -> None:
    model = RetransmissionModel(0, random.Random(8))
    assert model.penalty(1000) == (0.0, False)


def test_one_lost_segment_costs_one_rto() -> None:
    model = RetransmissionModel(50, ScriptedRandom([0.1, 0.9]), rto_s=0.2)  # lost, then through
    assert model.penalty(100) == (pytest.approx(0.2), False)


def test_consecutive_losses_double_the_rto() -> None:
    draws = [0.0, 0.0, 0.0, 0.99]  # lost, retransmission lost twice, then through
    model = RetransmissionModel(50, ScriptedRandom(draws), rto_s=0.2)
    assert model.penalty(100) == (pytest.approx(0.2 + 0.4 + 0.8), False)


def test_rto_is_configurable_and_capped() -> None:
    model = RetransmissionModel(100, random.Random(9), rto_s=0.05, rto_max_s=0.3, max_retries=6)
    extra, gave_up = model.penalty(10)
    assert gave_up
    assert extra == pytest.approx(0.05 + 0.1 + 0.2 + 0.3 + 0.3 + 0.3)


def test_loss_rate_matches_the_percentage_per_segment() -> None:
    rng = random.Random(10)
    model = RetransmissionModel(10, rng, rto_s=0.2)
    small = [model.penalty(100)[0] > 0 for _ in range(20_000)]
    assert statistics.mean(small) == pytest.approx(0.10, abs=0.01)
    # a 10-segment chunk is late when any of its segments is lost: 1 - 0.9**10 = 0.651
    large = [model.penalty(10 * 1448)[0] > 0 for _ in range(20_000)]
    assert statistics.mean(large) == pytest.approx(1 - 0.9**10, abs=0.015)


# ---- bandwidth


def test_token_bucket_lets_a_burst_through_then_paces() -> None:
    bucket = TokenBucket(rate_bps=1000, burst_bytes=100)
    assert bucket.reserve(100, now=0.0) == 0.0
    assert bucket.reserve(500, now=0.0) == pytest.approx(0.5)
    # 0.1 s later 100 bytes of credit came back, but 500 were still owed
    assert bucket.reserve(100, now=0.1) == pytest.approx(0.6)


def test_token_bucket_credit_is_capped_at_the_burst() -> None:
    bucket = TokenBucket(rate_bps=1000, burst_bytes=100)
    bucket.reserve(100, now=0.0)
    assert bucket.reserve(100, now=100.0) == 100.0
    assert bucket.reserve(10, now=100.0) == pytest.approx(100.010)


def test_token_bucket_sustains_its_rate_over_a_transfer() -> None:
    bucket = TokenBucket(rate_bps=50_000)
    departures = [bucket.reserve(1448, now=0.0) for _ in range(70)]  # ~100 kB at once
    expected = (70 * 1448 - bucket.burst_bytes) / 50_000
    assert departures[-1] == pytest.approx(expected)
    assert departures == sorted(departures)


def test_token_bucket_rejects_a_zero_rate() -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate_bps=0)


# ---- several faults on one flow


def test_no_applicable_fault_gives_no_policy() -> None:
    rng = random.Random(11)
    faults = [fault(id="a", delay_ms=10, direction="to"), fault(id="b")]  # b changes nothing
    assert combine(faults, "gateway->w0", "upstream", rng) is None
    assert combine(faults, "other", "downstream", rng) is None
    assert combine(faults, "gateway->w0", "downstream", rng) is not None


def test_delays_add_up() -> None:
    faults = [fault(id="a", delay_ms=100), fault(id="b", delay_ms=50)]
    policy = combine(faults, "gateway->w0", "upstream", random.Random(12))
    assert policy is not None
    assert policy.sample_delay() == pytest.approx(0.150)
    assert policy.fault_ids == ("a", "b")


def test_the_worst_loss_and_the_narrowest_rate_win() -> None:
    faults = [
        fault(id="a", loss=100, rate_bps=1000),
        fault(id="b", loss=0, rate_bps=50),
        fault(id="c", delay_ms=5),
    ]
    policy = combine(faults, "gateway->w0", "downstream", random.Random(13))
    assert policy is not None
    assert policy.rate_bps == 50
    assert policy.partition is None
    assert policy.departure(10, now=0.0).gave_up  # 100% loss from fault a


def test_a_partition_wins_and_reset_beats_blackhole() -> None:
    rng = random.Random(14)
    delayed_blackhole = [fault(id="a", delay_ms=100), fault(id="b", partition="blackhole")]
    policy = combine(delayed_blackhole, "gateway->w0", "upstream", rng)
    assert policy is not None and policy.partition == "blackhole"
    both = [*delayed_blackhole, fault(id="c", partition="reset")]
    policy = combine(both, "gateway->w0", "upstream", rng)
    assert policy is not None and policy.partition == "reset"


def test_departure_is_rate_then_delay_then_retransmission() -> None:
    draws = [0.9, 0.0, 0.9]  # first chunk passes; second chunk lost once, then through
    faults = [fault(id="a", delay_ms=100, rate_bps=1000, loss=50)]
    policy = combine(faults, "gateway->w0", "upstream", ScriptedRandom(draws), rto_s=0.2)  # type: ignore[arg-type]
    assert policy is not None
    burst = 1448  # the default burst at 1000 B/s is one segment
    first = policy.departure(burst, now=0.0)
    assert first.at == pytest.approx(0.100) and not first.gave_up
    second = policy.departure(500, now=0.0)  # waits 0.5 s for tokens, 0.1 s delay, 0.2 s RTO
    assert second.at == pytest.approx(0.5 + 0.1 + 0.2)
