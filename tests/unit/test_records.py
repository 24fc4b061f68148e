"""Records maths (vLLM benchmark_serving definitions), JSON lines, summaries, settings."""

from __future__ import annotations

import json

import pytest

from loadtests.metrics import LoadgenMetrics
from loadtests.records import (
    LoadRecord,
    distribution,
    percentile,
    read_records,
    select_window,
    summarize,
    write_records,
)
from loadtests.settings import LoadSettings
from loadtests.sink import RecordSink

T0 = 1_700_000_000.0


def streamed(
    sent: float = T0,
    ttft: float = 0.1,
    gaps: tuple[float, ...] = (0.02, 0.03, 0.05),
    tail: float = 0.01,
    tokens: int | None = None,
    visible_from: int = 0,
) -> LoadRecord:
    """A successful record whose chunks arrive ttft after send, then after each gap."""
    times = [sent + ttft]
    for gap in gaps:
        times.append(times[-1] + gap)
    return LoadRecord(
        id=f"r{sent}",
        sent_at=sent,
        first_chunk_at=sent + ttft / 2,
        first_token_at=times[0],
        first_visible_token_at=times[visible_from] if visible_from < len(times) else None,
        chunk_times=times,
        done_at=times[-1] + tail,
        output_tokens=len(times) if tokens is None else tokens,
        prompt_tokens=12,
        status=200,
        ok=True,
        served_by="w0",
    )


def failed(sent: float = T0, after: float = 0.5, error: str = "HTTP 503") -> LoadRecord:
    return LoadRecord(
        id=f"f{sent}",
        sent_at=sent,
        done_at=sent + after,
        status=503,
        ok=False,
        error=error,
    )


def test_ttft_itl_tpot_e2e_follow_vllm_definitions():
    record = streamed(ttft=0.1, gaps=(0.02, 0.03, 0.05), tail=0.01)
    assert record.ttft == pytest.approx(0.1)
    assert record.itls == pytest.approx([0.02, 0.03, 0.05])
    assert record.e2e == pytest.approx(0.1 + 0.1 + 0.01)
    # (E2E - TTFT) / (output tokens - 1) = (0.21 - 0.1) / 3
    assert record.tpot == pytest.approx(0.11 / 3)


def test_tpot_uses_usage_tokens_not_chunk_count():
    # A server may pack several tokens per chunk: usage says 7 tokens over 4 chunks.
    record = streamed(gaps=(0.02, 0.03, 0.05), tail=0.0, tokens=7)
    assert record.tpot == pytest.approx((record.e2e - record.ttft) / 6)


def test_single_token_has_ttft_but_no_tpot_or_itl():
    record = streamed(ttft=0.2, gaps=(), tail=0.005)
    assert record.output_tokens == 1
    assert record.ttft == pytest.approx(0.2)
    assert record.itls == []
    assert record.tpot is None


def test_time_to_first_visible_token_waits_for_content_after_reasoning():
    record = streamed(ttft=0.1, gaps=(0.02, 0.03, 0.05), visible_from=2)
    assert record.ttft == pytest.approx(0.1)
    assert record.ttfvt == pytest.approx(0.1 + 0.02 + 0.03)


def test_failed_request_has_no_token_metrics_but_a_time_to_failure():
    record = failed(after=0.5)
    assert record.ttft is None and record.tpot is None and record.ttfvt is None
    assert record.itls == []
    assert record.e2e == pytest.approx(0.5)


def test_percentile_matches_linear_interpolation():
    values = [float(v) for v in range(1, 11)]  # 1..10, shuffled below
    shuffled = values[5:] + values[:5]
    assert percentile(shuffled, 50) == pytest.approx(5.5)
    assert percentile(shuffled, 90) == pytest.approx(9.1)
    assert percentile(shuffled, 99) == pytest.approx(9.91)
    assert percentile(shuffled, 0) == 1.0
    assert percentile(shuffled, 100) == 10.0
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_distribution_of_empty_sample_is_all_none():
    out = distribution([])
    assert out["count"] == 0
    assert out["p50"] is None and out["p99"] is None and out["mean"] is None


def test_summary_counts_failures_and_keeps_them_out_of_latency():
    good = [streamed(sent=T0 + i, ttft=0.1 + i / 100) for i in range(4)]
    bad = failed(sent=T0 + 1.5, after=9.0, error="connect error: refused")
    summary = summarize(good + [bad])
    assert summary["requests"] == 5
    assert summary["ok"] == 4 and summary["failed"] == 1
    assert summary["success_share"] == pytest.approx(0.8)
    assert summary["errors"] == {"connect error: refused": 1}
    assert summary["ttft"]["count"] == 4
    assert summary["ttft"]["p50"] == pytest.approx(0.115)
    assert summary["e2e"]["max"] < 1.0  # the failed request's 9 s is not a latency sample
    assert summary["itl"]["count"] == 4 * 3
    # Window: first send T0 to last end (the failed one, T0 + 1.5 + 9.0).
    assert summary["wall_seconds"] == pytest.approx(10.5)
    assert summary["output_tokens"] == 16
    assert summary["output_tokens_per_second"] == pytest.approx(16 / 10.5)
    json.dumps(summary)  # plain JSON-able data


def test_summary_of_nothing_is_well_formed():
    summary = summarize([])
    assert summary["requests"] == 0
    assert summary["success_share"] is None
    assert summary["output_tokens_per_second"] is None
    json.dumps(summary)


def test_window_selects_by_send_time():
    records = [streamed(sent=T0 + i) for i in range(10)]
    chosen = select_window(records, T0 + 2, T0 + 5)
    assert [r.sent_at for r in chosen] == [T0 + 2, T0 + 3, T0 + 4]
    assert summarize(records, T0 + 2, T0 + 5)["requests"] == 3


def test_json_round_trip_and_unknown_keys(tmp_path):
    record = streamed()
    again = LoadRecord.from_json(record.to_json())
    assert again == record
    data = record.to_dict() | {"added_in_a_later_version": 1}
    assert LoadRecord.from_dict(data) == record
    assert set(json.loads(record.to_json())) == {
        "id",
        "sent_at",
        "first_chunk_at",
        "first_token_at",
        "first_visible_token_at",
        "chunk_times",
        "done_at",
        "output_tokens",
        "prompt_tokens",
        "status",
        "ok",
        "error",
        "served_by",
    }


def test_truncated_last_line_is_skipped(tmp_path):
    path = tmp_path / "records.jsonl"
    records = [streamed(sent=T0 + i) for i in range(3)]
    write_records(path, records)
    whole = path.read_text()
    # A writer killed in the middle of a fourth line.
    path.write_text(whole + streamed(sent=T0 + 3).to_json()[:37])
    assert read_records(path) == records


def test_corrupt_line_in_the_middle_raises(tmp_path):
    path = tmp_path / "records.jsonl"
    lines = [streamed(sent=T0).to_json(), "{not json", streamed(sent=T0 + 1).to_json()]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="line 2"):
        read_records(path)


def test_missing_file_reads_as_no_records(tmp_path):
    assert read_records(tmp_path / "absent.jsonl") == []


def test_sink_appends_flushed_lines(tmp_path):
    path = tmp_path / "records.jsonl"
    with RecordSink(path) as sink:
        sink.append(streamed(sent=T0))
        # Flushed per record: readable while the sink is still open.
        assert [r.sent_at for r in read_records(path)] == [T0]
        sink.append(failed(sent=T0 + 1))
    assert [r.ok for r in read_records(path)] == [True, False]


def test_metrics_count_outcomes_tokens_and_latency():
    metrics = LoadgenMetrics()
    metrics.observe(streamed(ttft=0.05))
    metrics.observe(failed())
    value = metrics.registry.get_sample_value
    assert value("loadgen_requests_total", {"outcome": "ok"}) == 1
    assert value("loadgen_requests_total", {"outcome": "error"}) == 1
    assert value("loadgen_output_tokens_total") == 4
    assert value("loadgen_time_to_first_token_seconds_count") == 1
    assert value("loadgen_time_to_first_token_seconds_bucket", {"le": "0.04"}) == 0
    assert value("loadgen_time_to_first_token_seconds_bucket", {"le": "0.06"}) == 1
    assert value("loadgen_e2e_seconds_count") == 1


def test_settings_survive_the_environment_round_trip():
    settings = LoadSettings(
        users=3, duration=7.5, shape="ramp", ramp=2, max_tokens=9, records_path="/tmp/r"
    )
    env = settings.to_env()
    assert env["INFERENCE_CHAOS_USERS"] == "3"
    assert env["INFERENCE_CHAOS_METRICS_PORT"] == ""
    assert LoadSettings.from_env(env) == settings


def test_settings_reject_nonsense():
    with pytest.raises(ValueError):
        LoadSettings(shape="sawtooth")
    with pytest.raises(ValueError):
        LoadSettings(users=0)
