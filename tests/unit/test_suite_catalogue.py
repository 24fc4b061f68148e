"""The nightly suite's catalogue: which experiments, on which cluster, told what."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from experiments.suite_catalogue import (
    Entry,
    SuiteError,
    check_overrides,
    cluster_shape,
    estimate_s,
    parse_vars,
    resolve,
    select,
    var_file,
)

ROOT = Path(__file__).resolve().parents[2]
WORKER_KILL = ROOT / "experiments/worker-kill.yaml"


def entry(name: str, **config) -> Entry:
    return Entry(name=name, path=Path(f"{name}.yaml"), config=config, tags=["nightly"])


def write_experiment(folder: Path, name: str, tags: list[str], **config) -> Path:
    document = yaml.safe_load(WORKER_KILL.read_text())
    document["tags"] = tags
    document["configuration"].update(config)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_default_selection_is_every_nightly_experiment_in_file_name_order(tmp_path):
    write_experiment(tmp_path, "b-second", ["nightly", "worker"])
    write_experiment(tmp_path, "a-first", ["nightly"])
    write_experiment(tmp_path, "c-weekly", ["weekly"])
    assert [e.name for e in select([], tmp_path)] == ["a-first", "b-second"]


def test_the_real_catalogue_is_selected_whole():
    names = [e.name for e in select([])]
    assert names == sorted(names) and {"worker-kill", "raft-leader-kill"} <= set(names)
    assert all(e.problem is None for e in select([]))


def test_names_and_files_keep_the_order_given_without_duplicates(tmp_path):
    other = write_experiment(tmp_path, "custom", ["weekly"])
    chosen = select(["worker-kill", str(other), "worker-kill"])
    assert [e.name for e in chosen] == ["worker-kill", "custom"]
    assert chosen[0].path == WORKER_KILL and chosen[1].tags == ["weekly"]


def test_an_unknown_name_is_a_one_line_error_naming_the_known_ones():
    with pytest.raises(SuiteError) as caught:
        resolve("worker-kil")
    message = str(caught.value)
    assert "'worker-kil'" in message and "worker-kill" in message and "\n" not in message


def test_a_name_cannot_escape_the_catalogue_folder(tmp_path):
    with pytest.raises(SuiteError):
        resolve("../experiments/worker-kill", tmp_path)


def test_a_broken_file_is_kept_with_its_problem_not_refused(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("title: broken\nmethod: [\n")
    (chosen,) = select([str(broken)])
    assert chosen.problem and "malformed YAML" in chosen.problem and chosen.config == {}


def test_no_nightly_experiment_at_all_is_an_error(tmp_path):
    write_experiment(tmp_path, "weekly", ["weekly"])
    with pytest.raises(SuiteError, match="tagged 'nightly'"):
        select([], tmp_path)


def test_the_cluster_is_the_union_of_what_the_experiments_ask_for():
    entries = [
        entry("raft", nodes=2, gpus_per_node=1),
        entry("tasks", nodes=4, gpus_per_node=2, tasks=4),
        entry("wide", nodes=3, gpus_per_node=4),
    ]
    assert cluster_shape(entries) == {"nodes": 4, "gpus_per_node": 4, "tasks": 4, "task_gpus": 1}


def test_defaults_fill_what_no_experiment_declares_and_vars_win():
    assert cluster_shape([entry("plain")]) == {
        "nodes": 4,
        "gpus_per_node": 2,
        "tasks": 0,
        "task_gpus": 1,
    }
    shape = cluster_shape([entry("a", nodes=4, tasks=4)], {"nodes": 2, "tasks": 2})
    assert shape["nodes"] == 2 and shape["tasks"] == 2


def test_tasks_of_different_sizes_cannot_share_one_cluster():
    entries = [entry("a", tasks=2, task_gpus=1), entry("b", tasks=1, task_gpus=2)]
    with pytest.raises(SuiteError, match="different sizes"):
        cluster_shape(entries)


def test_a_shape_value_that_is_not_a_number_is_refused():
    with pytest.raises(SuiteError, match="nodes"):
        cluster_shape([entry("a", nodes="many")])


def test_the_var_file_sets_only_declared_keys():
    shape = {"nodes": 4, "gpus_per_node": 2, "tasks": 4, "task_gpus": 1}
    raft = entry("raft", nodes=2, gpus_per_node=1, fault_duration=3)
    assert var_file(raft, shape, {"fault_duration": 5, "load_users": 8}) == {
        "configuration": {"nodes": 4, "gpus_per_node": 2, "fault_duration": 5}
    }
    tasks = entry("tasks", nodes=4, gpus_per_node=2, tasks=4, load_users=16)
    assert var_file(tasks, shape, {"load_users": 8})["configuration"] == {
        "nodes": 4,
        "gpus_per_node": 2,
        "tasks": 4,
        "load_users": 8,
    }


def test_vars_are_typed_like_yaml():
    assert parse_vars(["load_users=8", "fault_duration=5s", "ratio=0.5", "flag=true", "e="]) == {
        "load_users": 8,
        "fault_duration": "5s",
        "ratio": 0.5,
        "flag": True,
        "e": "",
    }


@pytest.mark.parametrize("bad", ["novalue", "=3", "two words=1"])
def test_a_malformed_var_is_refused(bad):
    with pytest.raises(SuiteError, match="key=value"):
        parse_vars([bad])


def test_a_var_no_experiment_declares_is_a_typo():
    check_overrides([entry("a", load_users=8)], {"load_users": 4, "nodes": 2})
    with pytest.raises(SuiteError, match="load_user"):
        check_overrides([entry("a", load_users=8)], {"load_user": 4})


def test_the_estimate_prefers_past_nights_then_the_load_then_the_pauses():
    assert estimate_s({"load_duration": 36}, past=[50.0, 70.0, 60.0]) == 60.0
    assert estimate_s({"load_duration": 36}, overhead_s=20) == 56.0
    raft = {"warmup_s": 2, "fault_duration": "3s", "settle_s": 2}
    assert estimate_s(raft, overhead_s=20) == 27.0
    assert estimate_s({"fault_duration": "500ms"}, overhead_s=0) == 0.5
