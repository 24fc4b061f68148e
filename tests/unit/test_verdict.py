from experiments.verdict import reach_verdict


def probe(name, output=None, status="succeeded", tolerance_met=True, module="probes.steady"):
    return {
        "activity": {
            "name": name,
            "type": "probe",
            "provider": {"type": "python", "module": module},
        },
        "status": status,
        "output": output,
        "tolerance_met": tolerance_met,
        "exception": None if status == "succeeded" else ["ActivityFailed: down\n"],
    }


def action(name, module, status="succeeded"):
    return {
        "activity": {
            "name": name,
            "type": "action",
            "provider": {"type": "python", "module": module},
        },
        "status": status,
        "output": None,
        "exception": None
        if status == "succeeded"
        else ["ActivityFailed: selector matches nothing\n"],
    }


AVAIL_OK = {
    "ok": True,
    "verdict": "inconclusive",
    "sli": 1.0,
    "good": 900,
    "total": 900,
    "target": 0.999,
    "window": "all",
    "source": "client",
}
AVAIL_BAD = {**AVAIL_OK, "ok": False, "verdict": "fail", "sli": 0.95, "good": 855}
FAULT = {"kind": "pod-kill", "victims": ["w"], "injected_at": 1.0, "removed_at": 2.0, "error": None}


def journal(before_ok=True, after_probes=None, runs=(), status="completed", deviated=False):
    return {
        "status": status,
        "deviated": deviated,
        "steady_states": {
            "before": {
                "steady_state_met": before_ok,
                "probes": [probe("availability-slo", AVAIL_OK, tolerance_met=before_ok)],
            },
            "after": {
                "steady_state_met": not deviated,
                "probes": after_probes or [probe("availability-slo", AVAIL_OK)],
            },
        },
        "run": list(runs),
    }


def test_clean_run_passes_and_collects_slos():
    v = reach_verdict(journal(), [FAULT])
    assert v["verdict"] == "passed" and v["reasons"] == []
    assert [s["phase"] for s in v["slos"]] == ["before", "after"]


def test_missed_slo_after_the_method_deviates():
    j = journal(
        after_probes=[probe("availability-slo", AVAIL_BAD, tolerance_met=False)], deviated=True
    )
    v = reach_verdict(j, [FAULT])
    assert v["verdict"] == "deviated"
    assert any("95.000%" in r for r in v["reasons"])


def test_hypothesis_failing_before_the_method_is_a_failed_run():
    v = reach_verdict(journal(before_ok=False, status="failed"), [])
    assert v["verdict"] == "failed"
    assert "before the method" in v["reasons"][0]


def test_a_failed_fault_action_fails_the_run():
    v = reach_verdict(journal(runs=[action("kill", "experiments.faults", "failed")]), [])
    assert v["verdict"] == "failed"
    assert "selector matches nothing" in v["reasons"][0]


def test_a_probe_that_could_not_measure_fails_the_run():
    j = journal(after_probes=[probe("prometheus-up", None, status="failed")])
    assert reach_verdict(j, [])["verdict"] == "failed"


def test_a_fault_left_active_fails_the_run():
    v = reach_verdict(journal(), [{**FAULT, "removed_at": None}])
    assert v["verdict"] == "failed" and "still active" in v["reasons"][0]


def test_interruption_outranks_everything():
    j = journal(
        status="interrupted",
        after_probes=[probe("availability-slo", AVAIL_BAD, tolerance_met=False)],
    )
    assert reach_verdict(j, [FAULT])["verdict"] == "interrupted"


def test_abort_before_the_method_is_failed_with_its_reason():
    v = reach_verdict(
        {"status": "interrupted", "run": []},
        [],
        aborted_reason="selector matches nothing: role=tpu",
    )
    assert v["verdict"] == "failed" and "role=tpu" in v["reasons"][0]


def test_inconclusive_slo_passes_with_a_note():
    v = reach_verdict(journal(), [FAULT])
    assert v["verdict"] == "passed"
    assert len(v["notes"]) == 1 and "too few requests" in v["notes"][0]


def test_a_failed_named_check_in_the_method_deviates():
    check = {"ok": False, "check": "linearizability", "summary": "illegal: key k0"}
    runs = [probe("history-is-linearizable", check, module="probes.linearizability")]
    runs[0]["activity"]["type"] = "probe"
    v = reach_verdict(journal(runs=runs), [FAULT])
    assert v["verdict"] == "deviated"
    assert "linearizability: illegal: key k0" in v["reasons"][0]


def test_an_aborted_run_is_failed_even_when_every_probe_passed():
    v = reach_verdict(journal(status="aborted"), [FAULT])
    assert v["verdict"] == "failed" and "aborted" in v["reasons"][0]
