"""Earlier nights and regressions: reading the history folder, the median of the last 7 nights,
each figure's direction and tolerance, and the sparkline geometry the suite page draws."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from reports.sparklines import sparkline
from reports.trends import (
    DEFAULT_TOLERANCES,
    find_regressions,
    load_history,
    resolve_tolerances,
    worst_allowed,
)

T0 = 1_800_000_000.0
DAY = 86_400.0


def night(started_at: float, **figures: Any) -> dict[str, Any]:
    experiments = [{"name": "exp", "verdict": "passed", "figures": figures}]
    return {"suite": "nightly", "started_at": started_at, "experiments": experiments}


def nights(figure: str, values: list[Any]) -> list[dict[str, Any]]:
    """One night per value, oldest first, the last one the day before T0."""
    return [night(T0 - (len(values) - i) * DAY, **{figure: v}) for i, v in enumerate(values)]


def regressions(tonight: dict[str, Any], history: list[dict[str, Any]], tolerances=None) -> list:
    return find_regressions(night(T0, **tonight), history, tolerances)


# --- history ----------------------------------------------------------------------------------


def test_history_is_read_recursively_sorted_and_bad_files_are_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "2027-01-03").mkdir()
    (tmp_path / "2027-01-03" / "summary.json").write_text(json.dumps(night(T0 + 3)))
    (tmp_path / "old.json").write_text(json.dumps(night(T0 + 1)))
    (tmp_path / "copy-of-old.json").write_text(json.dumps(night(T0 + 1)))  # counted once
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x.json").write_text(json.dumps(night(T0 + 2)))
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "no-start.json").write_text(json.dumps({"experiments": []}))
    (tmp_path / "journal.json").write_text(json.dumps({"status": "completed", "run": []}))
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "notes.txt").write_text("not json at all")
    with caplog.at_level(logging.WARNING, logger="reports.trends"):
        history = load_history(tmp_path)
    assert [n["started_at"] for n in history] == [T0 + 1, T0 + 2, T0 + 3]
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "broken.json" in warned and "no-start.json" in warned
    assert "journal.json" not in warned and "list.json" not in warned  # not summaries: quiet


def test_no_history_folder() -> None:
    assert load_history(None) == []


def test_a_missing_history_folder_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="reports.trends"):
        assert load_history(tmp_path / "nope") == []
    assert "does not exist" in caplog.text


# --- regressions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("figure", "earlier", "tonight", "regressed"),
    [
        ("ttft_p95_s", 0.050, 0.0601, True),  # +20.2% > +20%
        ("ttft_p95_s", 0.050, 0.0599, False),
        ("ttft_p95_s", 0.050, 0.020, False),  # faster is never a regression
        ("time_to_migrate_s", 0.40, 0.49, True),
        ("time_to_new_leader_s", 0.70, 0.80, False),
        ("detection_s", 0.10, 0.13, False),  # +30% but only 30 ms: jitter
        ("detection_s", 0.10, 0.16, True),
        ("rto_s", 2.0, 2.5, True),
        ("availability", 0.9990, 0.9978, True),  # -0.12 pp
        ("availability", 0.9990, 0.9985, False),  # -0.05 pp
        ("availability", 0.9990, 0.9999, False),  # higher is better
        ("balance", 0.014, 0.035, True),  # +2.1 pp absolute
        ("balance", 0.014, 0.030, False),
        ("balance", 0.050, 0.010, False),
        ("rpo_s", 0.0, 0.2, True),  # RPO above 0
        ("rpo_s", 0.0, 0.0, False),
        ("linearizable", True, False, True),
        ("linearizable", True, None, False),  # unknown is not a regression
        ("linearizable", False, False, False),
        ("linearizable", False, True, False),
    ],
)
def test_each_figure_regresses_in_its_own_direction_beyond_its_tolerance(
    figure: str, earlier: Any, tonight: Any, regressed: bool
) -> None:
    found = regressions({figure: tonight}, nights(figure, [earlier] * 7))
    assert bool(found) is regressed
    if regressed:
        (r,) = found
        assert (r["experiment"], r["figure"], r["value"], r["nights"]) == (
            "exp",
            figure,
            tonight,
            7,
        )
        assert r["baseline"] == pytest.approx(earlier) and r["summary"]


def test_a_value_exactly_at_the_tolerance_holds() -> None:
    assert not regressions({"balance": 0.05}, nights("balance", [0.03] * 7))
    assert not regressions({"ttft_p50_s": 0.12}, nights("ttft_p50_s", [0.1] * 7))


def test_the_baseline_is_the_median_of_the_last_7_nights_only() -> None:
    # three very slow nights long ago, then 7 nights around 0.1 s; tonight 0.13 s
    values = [1.0, 1.0, 1.0, 0.09, 0.1, 0.11, 0.1, 0.5, 0.1, 0.1]
    (r,) = regressions({"ttft_p99_s": 0.13}, nights("ttft_p99_s", values))
    assert r["baseline"] == pytest.approx(0.1) and r["nights"] == 7
    assert r["change"] == pytest.approx(0.3)
    assert r["tolerance"] == {"relative": 0.2, "absolute": 0.01}
    assert r["summary"].startswith("TTFT p99 130 ms vs median 100 ms of 7 night(s) (+30.0%")


def test_fewer_than_7_nights_use_what_there_is_and_none_judges_nothing() -> None:
    (r,) = regressions({"rto_s": 3.0}, nights("rto_s", [2.0]))
    assert (r["baseline"], r["nights"]) == (2.0, 1)
    assert regressions({"rto_s": 3.0}, nights("rto_s", [2.0, 4.0, 3.0])) == []  # median 3.0
    assert regressions({"rto_s": 30.0}, []) == []


def test_nights_that_did_not_measure_the_figure_are_passed_over() -> None:
    history = nights("rto_s", [2.0, 2.0]) + [night(T0 - 0.5 * DAY, ttft_p50_s=0.1)]
    (r,) = regressions({"rto_s": 3.0}, history)
    assert r["nights"] == 2


def test_tonight_and_later_nights_in_the_history_are_not_its_baseline() -> None:
    history = nights("rto_s", [2.0]) + [night(T0, rto_s=3.0), night(T0 + DAY, rto_s=3.0)]
    (r,) = regressions({"rto_s": 3.0}, history)
    assert (r["baseline"], r["nights"]) == (2.0, 1)


def test_a_tie_of_true_and_false_nights_counts_as_linearizable() -> None:
    assert regressions({"linearizable": False}, nights("linearizable", [True, False]))


def test_other_experiments_are_not_mixed_in() -> None:
    history = nights("rto_s", [2.0] * 3)
    for n in history:
        n["experiments"][0]["name"] = "another"
    assert regressions({"rto_s": 9.0}, history) == []


def test_availability_regression_is_worded_in_percentage_points() -> None:
    (r,) = regressions({"availability": 0.997}, nights("availability", [0.999] * 7))
    assert r["change"] == pytest.approx(-0.002) and r["tolerance"] == {"absolute": 0.001}
    assert "vs median 99.9%" in r["summary"] and "(−0.2 pp, tolerance 0.1 pp)" in r["summary"]


def test_a_zero_baseline_has_no_relative_change() -> None:
    (r,) = regressions({"detection_s": 0.2}, nights("detection_s", [0.0] * 3))
    assert r["change"] is None and "+200 ms" in r["summary"]


# --- tolerances -------------------------------------------------------------------------------


def test_overrides_replace_the_defaults_per_figure() -> None:
    history = nights("ttft_p95_s", [0.1] * 7)
    assert regressions({"ttft_p95_s": 0.13}, history)
    assert not regressions({"ttft_p95_s": 0.13}, history, {"ttft_p95_s": {"relative": 0.5}})
    rules = resolve_tolerances({"balance": {"absolute": 0.1}})
    assert rules["balance"] == {"absolute": 0.1} and rules["rto_s"] == DEFAULT_TOLERANCES["rto_s"]


def test_both_amounts_must_be_exceeded() -> None:
    history = nights("ttft_p50_s", [0.01] * 7)
    both = {"ttft_p50_s": {"relative": 0.2, "absolute": 0.005}}
    assert not regressions({"ttft_p50_s": 0.014}, history, both)  # +40% but only +4 ms
    assert regressions({"ttft_p50_s": 0.016}, history, both)


@pytest.mark.parametrize(
    "bad",
    [
        {"ttft_p95": {"relative": 0.1}},
        {"rto_s": 0.2},
        {"rto_s": {"percent": 20}},
        {"rto_s": {}},
        {"rto_s": {"relative": -0.1}},
        {"rto_s": {"absolute": "1s"}},
        {"linearizable": {"absolute": 1}},
        ["rto_s"],
    ],
)
def test_bad_tolerances_are_refused(bad: Any) -> None:
    with pytest.raises(ValueError):
        resolve_tolerances(bad)


def test_worst_allowed_value_follows_the_direction() -> None:
    assert worst_allowed("ttft_p95_s", 0.1, {"relative": 0.2}) == pytest.approx(0.12)
    assert worst_allowed("availability", 0.999, {"absolute": 0.001}) == pytest.approx(0.998)
    assert worst_allowed("linearizable", True, {"absolute": 0}) is None


# --- sparklines -------------------------------------------------------------------------------


def test_sparkline_places_tonight_last_and_higher_values_higher() -> None:
    spark = sparkline([1.0, 2.0, 3.0], 4.0, baseline=2.0, limit=2.4, width=100, height=50)
    xs = [x for x, _ in spark.earlier]
    assert xs == sorted(xs) and spark.current is not None and spark.current[0] > xs[-1]
    ys = [y for _, y in [*spark.earlier, spark.current]]
    assert ys == sorted(ys, reverse=True)  # SVG y grows downwards
    assert all(0 <= y <= 50 for y in ys) and all(0 <= x <= 100 for x in [*xs, spark.current[0]])
    assert spark.band is not None and spark.band[0] < spark.band[1]
    assert spark.baseline_y == max(spark.band)  # the band reaches up from the baseline
    assert len(spark.line.split()) == 4


def test_a_flat_or_single_sparkline_is_drawn_in_the_box() -> None:
    flat = sparkline([0.5, 0.5], 0.5, baseline=0.5)
    assert len({y for _, y in flat.earlier}) == 1
    assert 0 < flat.earlier[0][1] < flat.height
    alone = sparkline([], 0.3)
    assert alone.earlier == [] and alone.current is not None
    assert alone.current[0] > alone.width / 2 and alone.baseline_y is None and alone.band is None
    booleans = sparkline([True, False], None)
    assert booleans.current is None and booleans.earlier[0][1] < booleans.earlier[1][1]
