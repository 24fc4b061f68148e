"""RaftConfig from `--config` JSON and the replica's `--peers` map: typos fail loudly."""

from __future__ import annotations

import pytest

from resilience.raft.__main__ import parse_peers
from resilience.raft.config import RaftConfig


def test_defaults_replace_a_lost_leader_well_under_a_second() -> None:
    config = RaftConfig()
    assert config.heartbeat_interval_s == 0.05
    assert (config.election_timeout_min_s, config.election_timeout_max_s) == (0.15, 0.30)


def test_json_overrides_known_keys() -> None:
    config = RaftConfig.from_json('{"heartbeat_interval_s": 0.02, "snapshot_threshold": 50}')
    assert config.heartbeat_interval_s == 0.02 and config.snapshot_threshold == 50
    assert RaftConfig.from_json({"fsync": False}).fsync is False


@pytest.mark.parametrize(
    "bad",
    [
        '{"heartbeat_ms": 50}',  # unknown key
        '{"snapshot_threshold": "10"}',  # wrong type
        '{"pre_vote": 1}',  # an int is not a bool
        '{"election_timeout_min_s": 0.3, "election_timeout_max_s": 0.2}',
        '{"heartbeat_interval_s": 0.2}',  # not below the election timeout
        '{"write_deadline_s": 0}',
        "[]",
    ],
)
def test_bad_configs_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        RaftConfig.from_json(bad)


def test_peers_map_ids_to_urls_and_excludes_self() -> None:
    assert parse_peers('{"2": "http://a", "3": "http://b"}', own_id=1) == {
        2: "http://a",
        3: "http://b",
    }
    with pytest.raises(ValueError):
        parse_peers('{"1": "http://a"}', own_id=1)
    with pytest.raises(ValueError):
        parse_peers('["http://a"]', own_id=1)
