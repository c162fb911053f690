"""The schema registry: every released Avro schema, with a stable id.

``topics/schemas/registry.json`` lists every schema version baton has ever written, each
with its id (the 4 bytes after the magic byte on the wire), its file and the sha256 of its
content. Ids are never reused and released files never change, so any event baton ever
wrote can be read back: the reader resolves the writer's schema by id against the newest
version of the same event (Avro schema resolution).

Evolution rules (checked when a new version is written, and by the unit tests):

- add a field only with a default; remove only a field that had a default;
- never change a field's type, except widenings Avro resolves (int -> long -> double);
- never rename a field or an enum symbol; add enum symbols only at the end.

Run ``python -m topics._registry`` after changing an event model: it writes the new version
(next id) when the model's schema changed, after checking that it reads every older version.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
import fastavro.utils

from topics._avro import avro_schema, full_name
from topics._errors import ConfigurationError
from topics._events import (
    ApprovalDecision,
    ApprovalRequested,
    AuditAnchor,
    CacheEntry,
    ControlCommand,
    DeadLetter,
    Event,
    RunEvent,
    RunEventBatch,
    RunJournal,
    RunResult,
    SpendRecorded,
    StepRequested,
    StepResult,
    StreamChunk,
    TaskSubmitted,
    TimerFired,
    WorkflowDefinition,
)

__all__ = ["EVENT_TYPES", "SCHEMA_DIR", "SchemaEntry", "SchemaRegistry", "update_schemas"]

SCHEMA_DIR = Path(__file__).parent / "schemas"
_MANIFEST = "registry.json"

#: Every event type that travels on a topic.
EVENT_TYPES: tuple[type[Event], ...] = (
    TaskSubmitted,
    StepRequested,
    StepResult,
    RunResult,
    RunEvent,
    DeadLetter,
    ApprovalRequested,
    ApprovalDecision,
    WorkflowDefinition,
    ControlCommand,
    TimerFired,
    SpendRecorded,
    CacheEntry,
    RunEventBatch,
    RunJournal,
    StreamChunk,
    AuditAnchor,
)


def _sha256(schema: dict[str, Any]) -> str:
    canonical = json.dumps(schema, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class SchemaEntry:
    """One released schema version.

    Attributes:
        id: The id written on the wire.
        name: Avro full name, e.g. ``baton.events.TaskSubmitted``.
        version: 1 for the first version of that name, then 2, ...
        file: File name under the schema directory.
        schema: The schema as written in the file.
    """

    id: int
    name: str
    version: int
    file: str
    schema: dict[str, Any]

    @property
    def parsed(self) -> Any:
        """The schema parsed by fastavro (cached per entry)."""
        return _parse(json.dumps(self.schema, sort_keys=True))


@cache
def _parse(schema_json: str) -> Any:
    return fastavro.parse_schema(json.loads(schema_json))


class SchemaRegistry:
    """The released schemas, loaded from a schema directory."""

    def __init__(self, entries: list[SchemaEntry]) -> None:
        self._by_id = {entry.id: entry for entry in entries}
        self._by_name: dict[str, list[SchemaEntry]] = {}
        for entry in sorted(entries, key=lambda e: (e.name, e.version)):
            self._by_name.setdefault(entry.name, []).append(entry)

    @classmethod
    def load(cls, directory: Path = SCHEMA_DIR) -> SchemaRegistry:
        """Read the manifest and every schema file it lists, checking their content hashes.

        Raises:
            ConfigurationError: The manifest is missing, or a released file was changed.
        """
        manifest_path = directory / _MANIFEST
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigurationError(f"cannot read schema manifest {manifest_path}: {exc}") from exc
        entries = []
        for item in manifest["schemas"]:
            schema = json.loads((directory / item["file"]).read_text(encoding="utf-8"))
            if _sha256(schema) != item["sha256"]:
                raise ConfigurationError(
                    f"released schema {item['file']} (id {item['id']}) was modified: "
                    "released schemas are immutable, add a new version instead"
                )
            entries.append(
                SchemaEntry(item["id"], item["name"], item["version"], item["file"], schema)
            )
        return cls(entries)

    @property
    def entries(self) -> list[SchemaEntry]:
        """Every entry, by id."""
        return [self._by_id[i] for i in sorted(self._by_id)]

    def by_id(self, schema_id: int) -> SchemaEntry | None:
        """The entry with this id, or ``None``."""
        return self._by_id.get(schema_id)

    def versions(self, name: str) -> list[SchemaEntry]:
        """Every version of one name, oldest first."""
        return list(self._by_name.get(name, []))

    def latest(self, name: str) -> SchemaEntry:
        """The newest version of one name."""
        try:
            return self._by_name[name][-1]
        except KeyError:
            raise ConfigurationError(f"no schema registered for {name}") from None


def check_reads_old(new: dict[str, Any], old: dict[str, Any], samples: int = 50) -> None:
    """Check that a reader on ``new`` reads events written with ``old``.

    Writes random records with the old schema and resolves them against the new one.

    Raises:
        ConfigurationError: The new schema cannot read the old one's records.
    """
    old_parsed = fastavro.parse_schema(old)
    new_parsed = fastavro.parse_schema(new)
    for record in fastavro.utils.generate_many(old_parsed, samples):
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, old_parsed, record)
        buffer.seek(0)
        try:
            fastavro.schemaless_reader(buffer, old_parsed, new_parsed)
        except Exception as exc:  # fastavro raises several types for resolution errors
            raise ConfigurationError(
                f"{new.get('name')}: the new schema cannot read events written with the "
                f"old one ({type(exc).__name__}: {exc})"
            ) from exc


def update_schemas(directory: Path = SCHEMA_DIR) -> list[str]:
    """Write a new schema version for every event model whose schema changed.

    Returns:
        One line per schema written.
    """
    manifest_path = directory / _MANIFEST
    manifest = (
        json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest_path.exists()
        else {"schemas": []}
    )
    registry = SchemaRegistry.load(directory) if manifest["schemas"] else SchemaRegistry([])
    next_id = max((entry.id for entry in registry.entries), default=0) + 1
    written = []
    for event_type in EVENT_TYPES:
        name = full_name(event_type)
        schema = avro_schema(event_type)
        versions = registry.versions(name)
        if versions and versions[-1].schema == schema:
            continue
        for old in versions:
            check_reads_old(schema, old.schema)
        version = len(versions) + 1
        file = f"{event_type.__name__}.v{version}.avsc"
        (directory / file).write_text(json.dumps(schema, indent=2) + "\n", encoding="utf-8")
        manifest["schemas"].append(
            {
                "id": next_id,
                "name": name,
                "version": version,
                "file": file,
                "sha256": _sha256(schema),
            }
        )
        written.append(f"{file}: id {next_id}")
        next_id += 1
    if written:
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return written


if __name__ == "__main__":
    for line in update_schemas() or ["every schema is up to date"]:
        print(line)
