"""Claim checks: payloads over a threshold travel as references to a blob store.

A JSON value (a task's input, a step's output or parameters, run state) whose JSON text is
larger than ``threshold`` bytes is written to a ``BlobStore`` and replaced, where it stood, by
a small reference::

    {"$baton_blob": "sha256:<hex of the JSON text>", "size": <bytes>, "run": "<run id>"}

Claiming works leaves first: a large string inside an object becomes a reference and the
object around it stays inline, so templates that read a document's title never touch the
store; a container still over the threshold once its children are claimed is claimed whole.
A reference is content-addressed (the hash of the bytes, checked on every read) and stored
per run (``runs/<run id>/<hex>``), so the payloads of a run can age out with the run
without touching another run's copy of the same bytes.

Resolving is the reverse: every reference in a value is read, verified (size and hash) and
parsed; what a blob holds may itself hold references (a container claimed whole).

Errors::

    BatonError
     ├── RetryableError
     │    └── BlobStoreUnavailable   the store did not answer (connection, 5xx, timeout)
     ├── PermanentError
     │    ├── BlobMissing            the reference names a blob the store does not have
     │    └── BlobCorrupt            the blob's bytes do not match the reference's hash or size
     └── ConfigurationError          a store that cannot be used as configured
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import orjson
from pydantic import JsonValue

from topics import MAX_JSON_DEPTH, PermanentError, RetryableError, loads_json

__all__ = [
    "DEFAULT_CLAIM_THRESHOLD",
    "REFERENCE_KEY",
    "BlobCorrupt",
    "BlobMissing",
    "BlobReference",
    "BlobStore",
    "BlobStoreUnavailable",
    "Claims",
    "LocalBlobStore",
]

#: Payloads above this many bytes of JSON travel by reference (256 KiB).
DEFAULT_CLAIM_THRESHOLD = 256 * 1024
#: The key that makes a JSON object a reference.
REFERENCE_KEY = "$baton_blob"
#: The largest blob read back: far above any payload a step makes, far below memory.
MAX_BLOB_BYTES = 256 * 1024 * 1024

_MARKER = REFERENCE_KEY.encode()
_HEX = re.compile(r"^[0-9a-f]{64}$")
#: A run id as ``topics.check_task_id`` allows it: never a path (``..``, ``/``).
_RUN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$")


class BlobMissing(PermanentError):
    """A reference names a blob the store does not have (never written, or aged out)."""


class BlobCorrupt(PermanentError):
    """A blob's bytes do not match its reference: another hash or size, or not JSON."""


class BlobStoreUnavailable(RetryableError):
    """The blob store did not answer; trying again may work."""


@dataclass(frozen=True)
class BlobReference:
    """Where a claimed payload is, and what its bytes must be.

    Attributes:
        digest: sha256 of the payload's JSON text, hex.
        size: Its length in bytes.
        run: The run it is stored under.
    """

    digest: str
    size: int
    run: str

    def to_json(self) -> dict[str, JsonValue]:
        """The reference as it travels in place of the payload."""
        return {REFERENCE_KEY: f"sha256:{self.digest}", "size": self.size, "run": self.run}

    @classmethod
    def parse(cls, value: object) -> BlobReference | None:
        """The reference a JSON value is, ``None`` when it is not one.

        Raises:
            BlobCorrupt: An object with the reference key that is not a well-formed reference
                (a hostile or broken producer): it must not reach a template as data.
        """
        if not isinstance(value, dict) or REFERENCE_KEY not in value:
            return None
        named, size, run = value.get(REFERENCE_KEY), value.get("size"), value.get("run")
        digest = named[7:] if isinstance(named, str) and named.startswith("sha256:") else ""
        if (
            not _HEX.match(digest)
            or isinstance(size, bool)
            or not isinstance(size, int)
            or not 0 <= size <= MAX_BLOB_BYTES
            or not isinstance(run, str)
            or not _RUN.match(run)
            or set(value) != {REFERENCE_KEY, "size", "run"}
        ):
            raise BlobCorrupt(f"a malformed blob reference: {orjson.dumps(value)[:200]!r}")
        return cls(digest, size, run)

    def key(self) -> str:
        """The blob's key in a store: ``runs/<run>/<digest>``."""
        return f"runs/{self.run}/{self.digest}"


class BlobStore(Protocol):
    """Where claimed payloads are kept. Keys are ``runs/<run id>/<sha256 hex>``.

    A run's blobs are deleted together, after the run has finished and its retention passed:
    ``finished`` notes when a run ended (by day), ``finished_before`` lists the runs whose
    day is over, ``forget`` deletes a run's blobs and its note.
    """

    #: What references and log lines call the store (``local``, ``s3``).
    name: str

    async def put(self, key: str, data: bytes) -> None:
        """Write a blob (a key is written once; writing it again changes nothing)."""
        ...

    async def get(self, key: str) -> bytes:
        """Read a blob.

        Raises:
            BlobMissing: There is none under the key.
            BlobStoreUnavailable: The store did not answer.
        """
        ...

    async def finished(self, run: str, at: datetime) -> None:
        """Note that a run holding blobs ended at ``at``."""
        ...

    async def finished_before(self, cutoff: datetime) -> list[str]:
        """Runs noted as ended on a day wholly before ``cutoff``."""
        ...

    async def forget(self, run: str) -> None:
        """Delete every blob of a run, and the note that it ended."""
        ...


def finished_key(run: str, at: datetime) -> str:
    """Where a run's end is noted: ``finished/<YYYY-MM-DD>/<run id>`` (UTC day)."""
    return f"finished/{at.astimezone(UTC):%Y-%m-%d}/{run}"


def days_before(cutoff: datetime, days: Iterable[str]) -> list[str]:
    """The ``YYYY-MM-DD`` names of days that ended before ``cutoff``."""
    last = (cutoff.astimezone(UTC) - timedelta(days=1)).strftime("%Y-%m-%d")
    return sorted(d for d in days if re.match(r"^\d{4}-\d{2}-\d{2}$", d) and d <= last)


class LocalBlobStore:
    """Blobs as files under a directory: development, tests, one machine.

    Every worker of a cluster must see the same directory (the coordinator claims, the
    processors resolve), so this store is for workers on one machine or a shared volume.

    Args:
        root: The directory (created when missing).
    """

    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*key.split("/"))

    async def put(self, key: str, data: bytes) -> None:
        """Write a blob: to a temporary file first, so a reader never sees half of it."""
        await asyncio.to_thread(self._write, self._path(key), data)

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".put-")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    async def get(self, key: str) -> bytes:
        """Read a blob."""
        try:
            return await asyncio.to_thread(self._path(key).read_bytes)
        except FileNotFoundError:
            raise BlobMissing(f"blob {key} is not in the local store {self.root}") from None
        except OSError as exc:
            raise BlobStoreUnavailable(f"blob {key}: {exc}") from None

    async def finished(self, run: str, at: datetime) -> None:
        """Note the run's end (an empty file under its day)."""
        await asyncio.to_thread(self._write, self._path(finished_key(run, at)), b"")

    async def finished_before(self, cutoff: datetime) -> list[str]:
        """Runs noted on days before the cutoff's."""

        def scan() -> list[str]:
            base = self.root / "finished"
            if not base.is_dir():
                return []
            days = days_before(cutoff, (p.name for p in base.iterdir()))
            return [run.name for day in days for run in sorted((base / day).iterdir())]

        return await asyncio.to_thread(scan)

    async def forget(self, run: str) -> None:
        """Delete the run's directory and its notes."""

        def remove() -> None:
            folder = self.root / "runs" / run
            if folder.is_dir():
                for blob in folder.iterdir():
                    blob.unlink(missing_ok=True)
                folder.rmdir()
            base = self.root / "finished"
            if base.is_dir():
                for day in base.iterdir():
                    (day / run).unlink(missing_ok=True)
                    if not any(day.iterdir()):
                        day.rmdir()

        await asyncio.to_thread(remove)


@dataclass
class _Pending:
    """What one claim walk found: blobs to write, and whether any reference is in the value."""

    writes: dict[str, bytes]
    referenced: bool = False


class Claims:
    """Claims and resolves the payloads of runs against one store.

    Args:
        store: Where blobs go.
        threshold: Payloads (JSON text) above this many bytes are claimed.
        cache_bytes: Resolved blobs kept in memory (by key, least recently used out): the
            coordinator resolves a run's payloads at every event of the run.
    """

    def __init__(
        self,
        store: BlobStore,
        threshold: int = DEFAULT_CLAIM_THRESHOLD,
        cache_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.store = store
        self.threshold = threshold
        self._cache: OrderedDict[str, tuple[int, JsonValue]] = OrderedDict()
        self._cached = 0
        self._cache_limit = cache_bytes
        #: Keys this process has written or read: not written again.
        self._known: OrderedDict[str, None] = OrderedDict()

    # -- claiming ---------------------------------------------------------------------------

    async def claim(self, run: str, value: JsonValue) -> JsonValue:
        """``value`` with every part over the threshold stored and replaced by a reference."""
        claimed, _ = await self.claim_noting(run, value)
        return claimed

    async def claim_noting(self, run: str, value: JsonValue) -> tuple[JsonValue, bool]:
        """``claim``, and whether the result holds any reference (new or not)."""
        if value is None or isinstance(value, bool | int | float):
            return value, False
        text = orjson.dumps(value)
        if len(text) <= self.threshold:
            return value, _MARKER in text
        pending = _Pending({})
        claimed, _ = self._walk(run, value, pending, 0)
        await self._write(pending.writes)
        return claimed, True

    async def claim_whole(self, run: str, value: JsonValue) -> JsonValue:
        """``value`` stored as one blob whatever its size (a record that is still too big)."""
        if value is None:
            return None
        pending = _Pending({})
        reference = self._stored(run, orjson.dumps(value), value, pending)
        await self._write(pending.writes)
        return reference

    def _walk(self, run: str, value: Any, pending: _Pending, depth: int) -> tuple[Any, int]:
        """The value with its large parts claimed, and the size of its JSON text."""
        if isinstance(value, str):
            text = orjson.dumps(value)
            if len(text) > self.threshold:
                reference = self._stored(run, text, value, pending)
                return reference, len(orjson.dumps(reference))
            return value, len(text)
        if isinstance(value, dict):
            if REFERENCE_KEY in value:
                pending.referenced = True
                return value, len(orjson.dumps(value))
            items = {k: self._walk(run, v, pending, depth + 1) for k, v in value.items()}
            out: Any = {k: v for k, (v, _) in items.items()}
            size = 2 + sum(len(orjson.dumps(k)) + 1 + n for k, (_, n) in items.items())
            size += max(0, len(items) - 1)
        elif isinstance(value, list):
            walked = [self._walk(run, v, pending, depth + 1) for v in value]
            out = [v for v, _ in walked]
            size = 2 + sum(n for _, n in walked) + max(0, len(walked) - 1)
        else:
            return value, len(orjson.dumps(value))
        if size > self.threshold and depth > 0:
            reference = self._stored(run, orjson.dumps(out), out, pending)
            return reference, len(orjson.dumps(reference))
        return out, size

    def _stored(self, run: str, text: bytes, value: Any, pending: _Pending) -> dict[str, Any]:
        reference = BlobReference(hashlib.sha256(text).hexdigest(), len(text), run)
        key = reference.key()
        if key not in self._known:
            pending.writes[key] = text
        self._remember(key, len(text), value)
        pending.referenced = True
        return reference.to_json()

    async def _write(self, writes: dict[str, bytes]) -> None:
        if not writes:
            return
        await asyncio.gather(*(self.store.put(k, v) for k, v in writes.items()))
        for key in writes:
            self._note(key)

    # -- resolving --------------------------------------------------------------------------

    async def resolve(self, value: JsonValue, run: str | None = None) -> JsonValue:
        """``value`` with every reference replaced by the payload it names.

        Args:
            value: The value.
            run: The run the value belongs to: a reference to another run's blob is refused
                (a task could otherwise read any run's payloads, another tenant's too).
                ``None`` (a downstream reader, ops) accepts any run.

        Raises:
            BlobMissing: A reference names a blob the store does not have.
            BlobCorrupt: A blob does not match its reference, a reference is malformed, or
                it names another run.
            BlobStoreUnavailable: The store did not answer.
        """
        if not isinstance(value, dict | list) or _MARKER not in orjson.dumps(value):
            return value
        resolved: JsonValue = await self._resolved(value, run, 0)
        return resolved

    async def _resolved(self, value: Any, run: str | None, depth: int) -> Any:
        if depth > MAX_JSON_DEPTH:
            raise BlobCorrupt(f"blob references nest deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(value, dict):
            reference = BlobReference.parse(value)
            if reference is not None:
                if run is not None and reference.run != run:
                    raise BlobCorrupt(
                        f"a reference to blob sha256:{reference.digest} of run "
                        f"{reference.run} in run {run}: a run reads only its own blobs"
                    )
                return await self._resolved(await self.fetch(reference), run, depth + 1)
            keys = list(value)
            values = await asyncio.gather(*(self._resolved(value[k], run, depth + 1) for k in keys))
            return dict(zip(keys, values, strict=True))
        if isinstance(value, list):
            return list(await asyncio.gather(*(self._resolved(v, run, depth + 1) for v in value)))
        return value

    async def fetch(self, reference: BlobReference) -> JsonValue:
        """The payload a reference names, verified (it may hold references itself).

        Raises:
            BlobMissing: The store does not have it.
            BlobCorrupt: Its bytes are not the reference's (hash or size), or not JSON.
            BlobStoreUnavailable: The store did not answer.
        """
        key = reference.key()
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached[1]
        data = await self.store.get(key)
        named = f"blob sha256:{reference.digest} of run {reference.run}"
        if len(data) != reference.size:
            raise BlobCorrupt(
                f"{named} is {len(data)} bytes in the {self.store.name} store, "
                f"the reference says {reference.size}"
            )
        if hashlib.sha256(data).hexdigest() != reference.digest:
            raise BlobCorrupt(
                f"{named} in the {self.store.name} store does not match its hash: "
                "it was altered or overwritten"
            )
        try:
            value = loads_json(data, what=named, max_bytes=MAX_BLOB_BYTES)
        except ValueError as exc:
            raise BlobCorrupt(f"{named} is not JSON: {exc}") from None
        self._note(key)
        self._remember(key, len(data), value)
        return value  # type: ignore[no-any-return]  # loads_json gives JSON

    # -- the memory of what was written and read ---------------------------------------------

    def _note(self, key: str) -> None:
        self._known[key] = None
        self._known.move_to_end(key)
        while len(self._known) > 100_000:
            self._known.popitem(last=False)

    def _remember(self, key: str, size: int, value: JsonValue) -> None:
        if size > self._cache_limit // 4:
            return
        if key in self._cache:
            self._cache.move_to_end(key)
            return
        self._cache[key] = (size, value)
        self._cached += size
        while self._cached > self._cache_limit:
            _, (dropped, _) = self._cache.popitem(last=False)
            self._cached -= dropped


def holds_reference(value: JsonValue) -> bool:
    """Whether a JSON value holds a blob reference anywhere."""
    return isinstance(value, dict | list) and _MARKER in orjson.dumps(value)
