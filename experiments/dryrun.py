"""`inference-chaos validate EXPERIMENT`: what a run would do, with nothing injected.

The experiment is checked as `chaos run` would check it, its configuration loaded (with
`--var` overrides), and every fault action resolved against the live target through the same
code path a run takes (faults.preflight), so the selectors, the namespaces and the blast radius
are judged for real. What comes out is, per fault, the victims and, on Kubernetes, the
manifests the backend would create, as YAML.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from chaoslib import substitute
from chaoslib.configuration import load_configuration
from chaoslib.exceptions import ActivityFailed

SKIPPED = ("recover", "recover_all", "list_faults", "pause_fault", "resume_fault")


class DryRunError(ValueError):
    """The first problem found, as one line naming the activity."""


def fault_activities(experiment: dict[str, Any]) -> list[dict[str, Any]]:
    """The method's and rollbacks' fault actions (experiments.faults), in order."""
    out = []
    for activity in (experiment.get("method") or []) + (experiment.get("rollbacks") or []):
        provider = activity.get("provider") or {}
        if provider.get("type") != "python" or provider.get("module") != "experiments.faults":
            continue
        if provider.get("func") in SKIPPED:
            continue
        out.append(activity)
    return out


def plan(path: Path, overrides: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per fault action: name, func, kind, victims, params and manifests."""
    from experiments import faults

    experiment = yaml.safe_load(path.read_text())
    configuration = load_configuration(experiment.get("configuration") or {}, overrides)
    configuration.update(overrides)
    planned = []
    for activity in fault_activities(experiment):
        provider = activity["provider"]
        name = activity.get("name", provider["func"])
        arguments = substitute(dict(provider.get("arguments") or {}), configuration, {})
        try:
            result = faults.preflight(provider["func"], arguments, configuration)
        except ActivityFailed as exc:
            raise DryRunError(f"{path}: activity {name!r}: {exc}") from None
        planned.append({"activity": name, "func": provider["func"], **result})
    return planned


def render(planned: list[dict[str, Any]]) -> str:
    """YAML for a reader: a summary document per fault, then its manifests."""
    docs: list[Any] = []
    for entry in planned:
        docs.append(
            {
                "activity": entry["activity"],
                "fault": entry.get("kind"),
                "victims": entry.get("victims"),
                "params": entry.get("params"),
            }
        )
        docs.extend(entry.get("manifests") or [])
    return yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False)
