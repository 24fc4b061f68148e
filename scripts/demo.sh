#!/usr/bin/env bash
# The main command: install what is missing, then kill a worker of the embedded cluster under
# streaming load and print the verdict and the path of the HTML report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/inference-chaos run "${1:-experiments/worker-kill.yaml}"
