"""Run one replica of the Raft metadata store.

python -m resilience.raft --id N --host 127.0.0.1 --client-port P --peer-port Q
    --peers '{"2": "http://127.0.0.1:R", ...}' --data-dir DIR [--config JSON]

`--peers` maps every other replica's id to the URL this replica reaches its peer port by (in
the embedded cluster, a fault-proxy link). Ready when GET /status on the client port is 200.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
from pathlib import Path

from resilience.raft.config import RaftConfig
from resilience.raft.server import serve


def parse_peers(text: str, own_id: int) -> dict[int, str]:
    """`{"id": "url"}` -> {id: url}; ids are integers other than this replica's own."""
    raw = json.loads(text)
    if not isinstance(raw, dict):
        raise ValueError("--peers must be a JSON object mapping replica ids to URLs")
    peers = {int(peer_id): str(url) for peer_id, url in raw.items()}
    if own_id in peers:
        raise ValueError(f"--peers lists this replica's own id {own_id}")
    return peers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m resilience.raft", description=__doc__)
    parser.add_argument("--id", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--client-port", type=int, required=True)
    parser.add_argument("--peer-port", type=int, required=True)
    parser.add_argument("--peers", default="{}", help="JSON object: peer id -> peer URL")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--config", default="{}", help="JSON object overriding RaftConfig")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("RAFT_LOG_LEVEL", "WARNING"),
        format=f"%(asctime)s raft-{args.id} %(name)s %(levelname)s %(message)s",
    )
    try:
        peers = parse_peers(args.peers, args.id)
        config = RaftConfig.from_json(args.config)
    except ValueError as exc:
        parser.error(str(exc))
    asyncio.run(
        serve(args.id, args.host, args.client_port, args.peer_port, peers, args.data_dir, config)
    )


if __name__ == "__main__":
    main()
