"""A real Prometheus for the embedded cluster: binary lookup, generated config, command line.

Everything is on loopback, scraped every second, with data in the cluster's run folder so a
`down` removes it. Targets come from file-based service discovery so the load generator can
add itself while a run is going on.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import yaml

MISSING = (
    "prometheus binary not found on PATH: install the Debian package 'prometheus' "
    "(apt-get install prometheus) or run scripts/setup.sh"
)


# Shipped in the package (pyproject package-data); absolute, since Prometheus resolves a relative
# rule path against the config file's folder, which is the run folder.
ALERT_RULES = Path(__file__).resolve().parent / "alerts" / "inference-chaos.rules.yml"


class PrometheusMissing(RuntimeError):
    pass


def find_prometheus() -> str:
    """Path of the prometheus binary, or PrometheusMissing with the package to install."""
    path = shutil.which("prometheus")
    if not path:
        raise PrometheusMissing(MISSING)
    return path


def render_config(
    targets_dir: str | Path,
    scrape_interval: str = "1s",
    rule_files: Sequence[str | Path] = (ALERT_RULES,),
) -> str:
    """Prometheus config: file_sd targets in `targets_dir`, the harness's alert rules loaded."""
    config = {
        "global": {
            "scrape_interval": scrape_interval,
            "evaluation_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
        },
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [
            {
                "job_name": "inference-chaos",
                "file_sd_configs": [{"files": [f"{targets_dir}/*.json"], "refresh_interval": "5s"}],
            }
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)


def prometheus_argv(binary: str, port: int, run_dir: str) -> list[str]:
    return [
        binary,
        f"--config.file={run_dir}/prometheus.yml",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--storage.tsdb.path={run_dir}/prometheus-data",
        "--storage.tsdb.retention.time=1d",
        "--log.level=warn",
    ]
