"""Validation of links-file entries, the body of ``PUT /links/{name}`` too."""

import json
from pathlib import Path

import pytest

from resilience.faultproxy import LinkSpec, load_links

ENTRY = {
    "name": "gateway->worker-n4-g0",
    "source": "gateway",
    "target": "worker-n4-g0",
    "listen_port": 41001,
    "upstream_host": "127.0.0.1",
    "upstream_port": 41002,
}


def test_a_complete_entry_round_trips() -> None:
    spec = LinkSpec.from_json(ENTRY)
    assert spec.name == ENTRY["name"] and spec.listen_port == 41001
    assert LinkSpec.from_json(ENTRY, name=ENTRY["name"]) == spec


def test_the_name_may_come_from_the_path_alone() -> None:
    body = {k: v for k, v in ENTRY.items() if k != "name"}
    assert LinkSpec.from_json(body, name="a->b").name == "a->b"
    with pytest.raises(ValueError, match="'name' must be a non-empty string"):
        LinkSpec.from_json(body)  # a links file has no path to take it from


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "other"}, "name in body 'other' differs from name in path"),
        ({"listen_port": None}, "'listen_port' must be a port number"),
        ({"listen_port": "41001"}, "'listen_port' must be a port number"),
        ({"listen_port": True}, "'listen_port' must be a port number"),
        ({"upstream_port": 0}, "'upstream_port' must be a port number"),
        ({"upstream_port": 70000}, "'upstream_port' must be a port number"),
        ({"source": ""}, "'source' must be a non-empty string"),
        ({"target": 5}, "'target' must be a non-empty string"),
        ({"labels": {}}, "unknown link field(s) ['labels']"),
    ],
)
def test_bad_fields_get_a_one_line_message(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as exc:
        LinkSpec.from_json({**ENTRY, **change}, name=ENTRY["name"])
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("missing", sorted(set(ENTRY) - {"name"}))
def test_every_field_but_the_name_is_required(missing: str) -> None:
    body = {k: v for k, v in ENTRY.items() if k != missing}
    with pytest.raises(ValueError, match=f"'{missing}' must be"):
        LinkSpec.from_json(body, name=ENTRY["name"])


def test_not_an_object_is_refused() -> None:
    with pytest.raises(ValueError, match="a link must be a JSON object, got list"):
        LinkSpec.from_json([ENTRY])


def test_the_links_file_uses_the_same_checks(tmp_path: Path) -> None:
    path = tmp_path / "links.json"
    path.write_text(json.dumps([ENTRY]))
    assert load_links(path) == [LinkSpec.from_json(ENTRY)]
    path.write_text(json.dumps([{**ENTRY, "upstream_port": "x"}]))
    with pytest.raises(ValueError, match="'upstream_port' must be a port number"):
        load_links(path)
