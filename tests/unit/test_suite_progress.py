"""What the nightly suite shows while it runs: in a terminal and in a CI log."""

from __future__ import annotations

import io

from experiments.suite_progress import (
    PhaseTracker,
    Progress,
    bar,
    clock,
    remaining_s,
    status_line,
    verdict_line,
)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_clock_reads_like_a_stopwatch():
    assert clock(0) == "0:00"
    assert clock(75.4) == "1:15"
    assert clock(3725) == "1:02:05"
    assert clock(None) == "?"


def test_the_bar_fills_with_the_fraction_and_stays_in_bounds():
    assert bar(0.5, 10) == "[#####-----]"
    assert bar(1.7, 4) == "[####]" and bar(-1, 4) == "[----]"


def test_remaining_counts_what_is_left_of_the_current_and_all_later_experiments():
    estimates = [60.0, 30.0, 40.0]
    assert remaining_s(estimates, 0, 20.0) == 40.0 + 30.0 + 40.0
    assert remaining_s(estimates, 1, 45.0) == 0.0 + 40.0  # overran its estimate: never negative
    assert remaining_s(estimates, 3, 0.0) == 0.0


def test_the_status_line_says_experiment_phase_elapsed_and_left():
    line = status_line(2, 14, "worker-kill", "method: kill-one-worker", 250, 570, width=10)
    assert line.startswith("[3/14] worker-kill  method: kill-one-worker  4:10 elapsed, ~9:30 left")
    assert line.endswith("[###-------]  30%")
    plain = status_line(2, 14, "worker-kill", "method", 250, 570, with_bar=False)
    assert "[#" not in plain and plain.endswith("~9:30 left")


def test_a_verdict_line_gives_the_first_reason_when_it_did_not_pass():
    passed = {"name": "worker-kill", "verdict": "passed", "duration_s": 52.14, "reasons": []}
    assert verdict_line(0, 2, passed) == "[1/2] worker-kill  PASS  52.1s"
    deviated = {
        "name": "network-delay",
        "verdict": "deviated",
        "duration_s": 60,
        "reasons": ["SLO missed: availability 99.1%", "hypothesis not met"],
    }
    assert verdict_line(1, 2, deviated) == (
        "[2/2] network-delay  DEVIATED  60.0s  (SLO missed: availability 99.1%; +1 more)"
    )


def test_the_phase_follows_chaos_toolkit_s_own_lines():
    tracker = PhaseTracker()
    lines = [
        "[2026-11-29 00:20:28 INFO] Running experiment: A GPU worker dies",
        "[2026-11-29 00:20:28 INFO] Steady state hypothesis: Every worker serves",
        "[2026-11-29 00:20:28 INFO] Probe: cluster-healthy",
        "[2026-11-29 00:20:30 INFO] Steady state hypothesis is met!",
        "[2026-11-29 00:20:30 INFO] Playing your experiment's method now...",
        "[2026-11-29 00:20:30 INFO] Action: start-streaming-load [in background]",
        "[2026-11-29 00:20:38 INFO] Action: kill-one-worker",
        "[2026-11-29 00:20:50 INFO] Steady state hypothesis: Every worker serves",
        "[2026-11-29 00:20:50 INFO] Probe: availability-slo",
        "[2026-11-29 00:20:52 INFO] Let's rollback...",
        "[2026-11-29 00:20:52 INFO] Rollback: remove-every-fault",
        "[2026-11-29 00:20:52 INFO] Action: remove-every-fault",
        "inference-chaos: verdict PASSED",
    ]
    phases = [p for p in (tracker.feed(line) for line in lines) if p]
    assert phases == [
        "hypothesis before",
        "hypothesis before: cluster-healthy",
        "method",
        "method: start-streaming-load",
        "method: kill-one-worker",
        "hypothesis after",
        "hypothesis after: availability-slo",
        "rollbacks",
        "report",
    ]


def test_without_a_terminal_every_change_is_a_plain_line():
    log = io.StringIO()
    progress = Progress(["worker-kill", "raft-leader-kill"], [60.0, 30.0], stream=log)
    progress.start(0)
    progress.set_phase("method: kill-one-worker")
    progress.set_phase("method: kill-one-worker")  # no change, no line
    progress.finish(0, {"name": "worker-kill", "verdict": "passed", "duration_s": 55.0})
    progress.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and "\x1b" not in log.getvalue()
    assert lines[0].startswith("[1/2] worker-kill  starting")
    assert lines[1].startswith("[1/2] worker-kill  method: kill-one-worker")
    assert lines[2] == "[1/2] worker-kill  PASS  55.0s"
    assert len(lines) == 3
    assert progress.estimates == [55.0, 30.0]  # the finished one counts with its real time


def test_in_a_terminal_the_status_line_is_redrawn_in_place_under_the_verdicts():
    term = Terminal()
    progress = Progress(["worker-kill", "raft-leader-kill"], [60.0, 30.0], stream=term)
    progress.start(0)
    progress.set_phase("method")
    progress.finish(0, {"name": "worker-kill", "verdict": "failed", "duration_s": 5.0})
    progress.close()
    out = term.getvalue()
    assert out.count("\r\x1b[2K") >= 3
    assert "] worker-kill  method  " in out and "%" in out
    assert "\r\x1b[2K[1/2] worker-kill  FAILED  5.0s\n" in out
    assert out.endswith("\r\x1b[2K")  # closing leaves a clean line, no status behind
