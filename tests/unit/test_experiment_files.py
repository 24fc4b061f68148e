"""Every experiment in the catalogue is valid for Chaos Toolkit and says what it checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from inference_chaos.cli import check_experiment

ROOT = Path(__file__).resolve().parents[2]
CATALOGUE = sorted((ROOT / "experiments").glob("*.yaml"))
TASK_EXPERIMENTS = {
    "gpu-xid79-migration",
    "gpu-ecc-remediation",
    "gpu-throttle",
    "hbm-pressure",
    "node-crash",
    "node-drain",
    "zone-failover",
    "traffic-spike",
    "controller-leader-kill",
}


def test_the_catalogue_has_every_experiment_the_issues_name():
    names = {p.stem for p in CATALOGUE}
    assert TASK_EXPERIMENTS <= names


@pytest.mark.parametrize("path", CATALOGUE, ids=lambda p: p.stem)
def test_experiment_is_valid_and_rolls_everything_back(path):
    assert check_experiment(path) is None
    experiment = yaml.safe_load(path.read_text())
    assert experiment["runtime"]["rollbacks"]["strategy"] == "always"
    rollbacks = {r["provider"]["func"] for r in experiment["rollbacks"]}
    assert "recover_all" in rollbacks
    assert "nightly" in experiment["tags"]
    if path.stem in TASK_EXPERIMENTS:
        assert experiment["configuration"]["tasks"] > 0
        if "start_load" in {a["provider"].get("func") for a in experiment["method"]}:
            assert "stop_load" in rollbacks
