"""`python -m probes.linearizability FILE [--model ...] [--timeout ...]`: check one history."""

import sys

from probes.linearizability.cli import run

sys.exit(run())
