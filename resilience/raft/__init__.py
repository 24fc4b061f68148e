"""The Raft-replicated metadata store of the system under test (DESIGN section 4).

Run a replica with ``python -m resilience.raft``; the contract is docs/internals.md,
"The metadata store (Raft)".
"""
