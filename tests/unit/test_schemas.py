"""The .avsc files: they agree with the models, they are immutable, and they evolve safely."""

from __future__ import annotations

import io
import json
import shutil
import struct
from pathlib import Path
from typing import Any

import fastavro
import pytest

from tests.samples import full_events
from topics import (
    EVENT_TYPES,
    Codec,
    ConfigurationError,
    Event,
    SchemaRegistry,
    TaskSubmitted,
    avro_schema,
)
from topics._avro import full_name
from topics._registry import SCHEMA_DIR, check_reads_old, update_schemas

REGISTRY = SchemaRegistry.load()


def _fields(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in schema["fields"]}


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=lambda t: t.__name__)
def test_model_and_avsc_agree_field_by_field(event_type: type[Event]) -> None:
    committed = REGISTRY.latest(full_name(event_type)).schema
    derived = avro_schema(event_type)
    assert list(_fields(committed)) == list(event_type.model_fields), "field names and order"
    for name, field in _fields(derived).items():
        assert _fields(committed)[name] == field, (
            f"{event_type.__name__}.{name} differs from its .avsc: run `python -m topics._registry`"
        )
    assert committed == derived


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=lambda t: t.__name__)
def test_optional_model_fields_have_avro_defaults(event_type: type[Event]) -> None:
    committed = _fields(REGISTRY.latest(full_name(event_type)).schema)
    for name, info in event_type.model_fields.items():
        assert ("default" in committed[name]) == (not info.is_required()), name


def test_every_schema_file_is_registered_and_ids_are_unique() -> None:
    files = {p.name for p in SCHEMA_DIR.glob("*.avsc")}
    registered = [entry.file for entry in REGISTRY.entries]
    assert sorted(registered) == sorted(files)
    ids = [entry.id for entry in REGISTRY.entries]
    assert len(ids) == len(set(ids))
    for event_type in EVENT_TYPES:
        versions = REGISTRY.versions(full_name(event_type))
        assert [v.version for v in versions] == list(range(1, len(versions) + 1))


def test_schemas_are_up_to_date(tmp_path: Path) -> None:
    copy = tmp_path / "schemas"
    shutil.copytree(SCHEMA_DIR, copy)
    assert update_schemas(copy) == [], "run `python -m topics._registry` and commit the result"


def test_a_modified_released_schema_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "schemas"
    shutil.copytree(SCHEMA_DIR, copy)
    path = copy / "TimerFired.v1.avsc"
    schema = json.loads(path.read_text())
    schema["fields"][0]["doc"] = "edited"
    path.write_text(json.dumps(schema))
    with pytest.raises(ConfigurationError, match=r"TimerFired.v1.avsc \(id \d+\) was modified"):
        SchemaRegistry.load(copy)


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=lambda t: t.__name__)
def test_every_newer_version_reads_every_older_one(event_type: type[Event]) -> None:
    versions = REGISTRY.versions(full_name(event_type))
    for newer_index, newer in enumerate(versions):
        for older in versions[:newer_index]:
            check_reads_old(newer.schema, older.schema)


# -- evolution: a reader on the new schema reads old events -----------------------------------


def _task_v1(current: dict[str, Any]) -> dict[str, Any]:
    """TaskSubmitted as it would have been before `budget` and `labels` were added."""
    old = json.loads(json.dumps(current))
    old["fields"] = [f for f in old["fields"] if f["name"] not in ("budget", "labels")]
    return old


def _registry_with_old_task(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    directory = tmp_path / "schemas"
    directory.mkdir()
    current = avro_schema(TaskSubmitted)
    old = _task_v1(current)
    (directory / "TaskSubmitted.v1.avsc").write_text(json.dumps(old))
    manifest = {
        "schemas": [
            {
                "id": 1,
                "name": "baton.events.TaskSubmitted",
                "version": 1,
                "file": "TaskSubmitted.v1.avsc",
                "sha256": __import__("topics._registry", fromlist=["_sha256"])._sha256(old),
            }
        ]
    }
    (directory / "registry.json").write_text(json.dumps(manifest))
    return directory, old


def test_a_new_version_is_added_with_the_next_id_and_reads_old_events(tmp_path: Path) -> None:
    directory, old = _registry_with_old_task(tmp_path)
    written = update_schemas(directory)
    assert "TaskSubmitted.v2.avsc: id 2" in written
    registry = SchemaRegistry.load(directory)
    assert registry.latest("baton.events.TaskSubmitted").id == 2

    # An event written by an old producer, on schema id 1 ...
    buffer = io.BytesIO()
    buffer.write(struct.pack(">bI", 0, 1))
    fastavro.schemaless_writer(
        buffer,
        fastavro.parse_schema(old),
        {
            "task_id": "old-1",
            "workflow": "w",
            "workflow_version": None,
            "input": {"x": 1},
            "tenant": "acme",
            "submitted_at": None,
        },
    )
    # ... is read by today's codec, with the new fields at their defaults.
    codec = Codec(registry)
    task = codec.decode(buffer.getvalue(), TaskSubmitted)
    assert task.task_id == "old-1" and task.input == {"x": 1} and task.tenant == "acme"
    assert task.budget is None and task.labels == {}
    # New events go out on the new id.
    assert codec.encode(full_events()[0])[:5] == struct.pack(">bI", 0, 2)


def test_json_and_money_defaults_get_their_logical_types_when_read_from_old_events() -> None:
    old = {
        "type": "record",
        "name": "RunResult",
        "namespace": "baton.events",
        "fields": [f for f in avro_schema(full_events()[3].__class__)["fields"]],
    }
    old["fields"] = [f for f in old["fields"] if f["name"] not in ("output", "usage")]
    registry = SchemaRegistry(
        [
            _entry(1, "baton.events.RunResult", 1, old),
            _entry(2, "baton.events.RunResult", 2, avro_schema(full_events()[3].__class__)),
            *[
                _entry(10 + i, full_name(t), 1, avro_schema(t))
                for i, t in enumerate(EVENT_TYPES)
                if t.__name__ != "RunResult"
            ],
        ]
    )
    event = full_events()[3].model_dump()
    buffer = io.BytesIO()
    buffer.write(struct.pack(">bI", 0, 1))
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(old), event)
    result = Codec(registry).decode(buffer.getvalue(), full_events()[3].__class__)
    assert result.output is None
    assert result.usage.cost_usd == 0 and result.usage.input_tokens == 0


def _entry(schema_id: int, name: str, version: int, schema: dict[str, Any]) -> Any:
    from topics import SchemaEntry

    return SchemaEntry(schema_id, name, version, f"{name}.v{version}.avsc", schema)


def test_an_incompatible_change_is_refused() -> None:
    current = avro_schema(TaskSubmitted)
    breaking = json.loads(json.dumps(current))
    breaking["fields"].append({"name": "priority", "type": "long"})  # no default
    with pytest.raises(ConfigurationError, match="cannot read events written with the old one"):
        check_reads_old(breaking, current)
