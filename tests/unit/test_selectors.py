import random

import pytest

from experiments.selectors import Candidate, Selector, SelectorError


def cluster() -> list[Candidate]:
    out = [
        Candidate(f"worker-n{n}-g{g}", {"role": "worker", "node": f"node-{n}", "gpu": str(g)})
        for n in range(4)
        for g in range(2)
    ]
    out.append(Candidate("gateway", {"role": "gateway", "node": "node-0"}))
    return out


def test_labels_and_nodes_narrow_the_candidates():
    sel = Selector.from_spec({"labelSelectors": {"role": "worker"}, "nodes": ["node-1"]}, "all")
    assert [c.name for c in sel.select(cluster())] == ["worker-n1-g0", "worker-n1-g1"]


def test_mode_one_picks_exactly_one_matching_candidate():
    sel = Selector.from_spec({"labelSelectors": {"role": "worker"}}, "one")
    for seed in range(20):
        picked = sel.select(cluster(), random.Random(seed))
        assert len(picked) == 1 and picked[0].labels["role"] == "worker"


def test_mode_one_spreads_over_candidates():
    sel = Selector.from_spec({"labelSelectors": {"role": "worker"}}, "one")
    seen = {sel.select(cluster(), random.Random(seed))[0].name for seed in range(60)}
    assert len(seen) > 4


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("all", None, 8),
        ("fixed", "3", 3),
        ("fixed", "20", 8),
        ("fixed-percent", "50", 4),
        ("fixed-percent", "10", 1),
    ],
)
def test_counting_modes(mode, value, expected):
    sel = Selector.from_spec({"labelSelectors": {"role": "worker"}}, mode, value)
    assert len(sel.select(cluster(), random.Random(1))) == expected


def test_random_max_percent_stays_within_its_bound():
    sel = Selector.from_spec({"labelSelectors": {"role": "worker"}}, "random-max-percent", "50")
    sizes = {len(sel.select(cluster(), random.Random(s))) for s in range(50)}
    assert sizes <= {1, 2, 3, 4} and len(sizes) > 1


def test_no_match_is_an_error_not_a_no_op():
    sel = Selector.from_spec({"labelSelectors": {"role": "tpu"}}, "all")
    with pytest.raises(SelectorError, match="matches nothing.*role=tpu"):
        sel.select(cluster())


def test_namespace_outside_the_target_matches_nothing():
    sel = Selector.from_spec({"namespaces": ["other"]}, "all")
    with pytest.raises(SelectorError, match="matches nothing"):
        sel.select(cluster())


@pytest.mark.parametrize(
    ("selector", "mode", "value", "message"),
    [
        ({"labels": {"a": "b"}}, "one", None, "unknown selector key"),
        ({}, "some", None, "unknown mode"),
        ({}, "fixed", None, "needs a value"),
        ({}, "fixed", "x", "not a number"),
        ({}, "fixed", "0", "whole number"),
        ({}, "fixed-percent", "150", "percent"),
        ("worker", "one", None, "must be a mapping"),
    ],
)
def test_malformed_selectors_are_rejected(selector, mode, value, message):
    with pytest.raises(SelectorError, match=message):
        Selector.from_spec(selector, mode, value)


def test_to_spec_uses_chaos_mesh_keys():
    sel = Selector.from_spec(
        {
            "labelSelectors": {"role": "worker"},
            "nodes": ["node-2"],
            "pods": {"default": ["worker-n2-g0"]},
        },
        "one",
    )
    assert sel.to_spec() == {
        "labelSelectors": {"role": "worker"},
        "nodes": ["node-2"],
        "pods": ["worker-n2-g0"],
    }
