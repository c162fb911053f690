"""Claim checks: large payloads become verified references to a blob store, and back.

The local store is a real directory; the S3 store talks to moto's S3 server on loopback
through boto3 (the real wire format).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from processors import (
    BlobCorrupt,
    BlobMissing,
    BlobReference,
    BlobStore,
    Claims,
    LocalBlobStore,
    TransformProcessor,
    execute,
)
from processors._claims import holds_reference
from processors._s3 import S3BlobStore
from streams._blobs import BlobSweeper, open_blob_store
from streams._config import load_settings
from streams._processing import _Resolving
from tests.fakes.steps import DISPATCHED_AT, step_request
from tests.s3_server import S3Server, s3_server
from topics import ConfigurationError, StepKind, StepStatus

THRESHOLD = 4096
NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs")
    server: S3Server = request.getfixturevalue("s3")
    prefix = f"t-{hashlib.sha256(str(tmp_path).encode()).hexdigest()[:12]}"
    return S3BlobStore(server.bucket, prefix, client=server.client())


def document(size: int) -> dict[str, object]:
    return {
        "query": "contract",
        "documents": [{"id": "c.md#0", "text": "x" * size, "metadata": {"title": "The contract"}}],
    }


async def test_a_small_value_is_not_claimed(store: BlobStore) -> None:
    claims = Claims(store, THRESHOLD)
    value = {"text": "short", "n": [1, 2, 3]}
    assert await claims.claim("run-1", value) is value


async def test_a_large_string_becomes_a_reference_named_by_its_hash(store: BlobStore) -> None:
    claims = Claims(store, THRESHOLD)
    value = document(50_000)
    claimed = await claims.claim("run-1", value)
    assert isinstance(claimed, dict)
    first = claimed["documents"][0]  # type: ignore[index]
    # The rest stays inline: templates that read the title never need the store.
    assert first["metadata"] == {"title": "The contract"}  # type: ignore[index]
    text = orjson.dumps("x" * 50_000)
    assert first["text"] == {  # type: ignore[index]
        "$baton_blob": f"sha256:{hashlib.sha256(text).hexdigest()}",
        "size": len(text),
        "run": "run-1",
    }
    assert len(orjson.dumps(claimed)) < THRESHOLD
    # Another worker (its own memory) reads it back from the store.
    assert await Claims(store, THRESHOLD).resolve(claimed) == value


async def test_many_medium_values_are_claimed_as_a_whole(store: BlobStore) -> None:
    claims = Claims(store, THRESHOLD)
    value = {"items": [f"{i}:" + "y" * 1000 for i in range(20)]}
    claimed = await claims.claim("run-1", value)
    assert isinstance(claimed, dict)
    assert BlobReference.parse(claimed["items"]) is not None
    assert await Claims(store, THRESHOLD).resolve(claimed) == value


async def test_a_missing_blob_is_named_in_the_error(store: BlobStore) -> None:
    reference = BlobReference("ab" * 32, 10, "run-9").to_json()
    with pytest.raises(BlobMissing, match="runs/run-9/abab"):
        await Claims(store, THRESHOLD).resolve({"doc": reference})


async def test_an_altered_blob_is_refused(store: BlobStore) -> None:
    claims = Claims(store, THRESHOLD)
    claimed = await claims.claim("run-1", "z" * 10_000)
    reference = BlobReference.parse(claimed)
    assert reference is not None
    # Same size, other bytes: only the hash can tell.
    forged = orjson.dumps("q" * 10_000)
    if isinstance(store, LocalBlobStore):
        (store.root / reference.key()).write_bytes(forged)
    else:
        await store.put(reference.key(), forged)
    with pytest.raises(BlobCorrupt, match="does not match its hash"):
        await Claims(store, THRESHOLD).resolve(claimed)


@pytest.mark.parametrize(
    "reference",
    [
        {"$baton_blob": "md5:abc", "size": 1, "run": "r"},
        {"$baton_blob": "sha256:" + "0" * 64, "size": -1, "run": "r"},
        {"$baton_blob": "sha256:" + "0" * 64, "size": 1, "run": "../../etc"},
        {"$baton_blob": "sha256:" + "0" * 64, "size": 1, "run": "r", "extra": 1},
    ],
)
async def test_a_malformed_reference_is_refused(
    tmp_path: Path, reference: dict[str, object]
) -> None:
    with pytest.raises(BlobCorrupt, match="malformed"):
        await Claims(LocalBlobStore(tmp_path), THRESHOLD).resolve([reference])


async def test_the_sweeper_deletes_runs_past_retention_and_keeps_the_rest(
    store: BlobStore,
) -> None:
    claims = Claims(store, THRESHOLD)
    shared = "s" * 10_000  # the same payload in two runs: each run has its own copy
    old = await claims.claim("old-run", shared)
    live = await claims.claim("live-run", shared)
    recent = await claims.claim("recent-run", "r" * 10_000)
    await store.finished("old-run", NOW - timedelta(days=9))
    await store.finished("recent-run", NOW - timedelta(days=2))
    sweeper = BlobSweeper(store, timedelta(days=7).total_seconds(), clock=lambda: NOW)
    assert await sweeper.sweep() == 1
    reader = Claims(store, THRESHOLD)
    with pytest.raises(BlobMissing):
        await reader.resolve(old)
    assert await reader.resolve(live) == shared
    assert await reader.resolve(recent) == "r" * 10_000
    assert await sweeper.sweep() == 0


async def test_a_run_reads_only_its_own_blobs(tmp_path: Path) -> None:
    claims = Claims(LocalBlobStore(tmp_path), THRESHOLD)
    claimed = await claims.claim("tenant-a-run", "secret " * 2000)
    assert await claims.resolve(claimed, "tenant-a-run") == "secret " * 2000
    with pytest.raises(BlobCorrupt, match="a run reads only its own blobs"):
        await claims.resolve({"stolen": claimed}, "tenant-b-run")


def test_the_blob_store_setting_names_a_directory_or_a_bucket(tmp_path: Path) -> None:
    assert isinstance(open_blob_store(str(tmp_path)), LocalBlobStore)
    assert isinstance(open_blob_store(f"file://{tmp_path}"), LocalBlobStore)
    s3 = open_blob_store("s3://bucket/baton", endpoint_url="http://127.0.0.1:9")
    assert isinstance(s3, S3BlobStore) and s3.prefix == "baton/"
    with pytest.raises(ConfigurationError, match="blob_store"):
        open_blob_store("ftp://host/x")
    settings = load_settings({"BATON_BLOB_STORE": str(tmp_path), "BATON_CLAIM_THRESHOLD": "2048"})
    claims = settings.claims()
    assert claims is not None and claims.threshold == 2048
    assert load_settings({}).claims() is None
    with pytest.raises(ConfigurationError, match="claim_threshold"):
        load_settings({"BATON_CLAIM_THRESHOLD": "10"})


def test_holds_reference_finds_a_nested_reference() -> None:
    assert not holds_reference({"a": ["b"]})
    assert holds_reference({"a": [BlobReference("0" * 64, 1, "r").to_json()]})


async def test_a_processor_sees_the_payload_and_a_missing_one_fails_the_attempt(
    tmp_path: Path,
) -> None:
    claims = Claims(LocalBlobStore(tmp_path), THRESHOLD)
    text = "clause " * 2000
    context = await claims.claim("run-1", {"steps": {"fetch": {"output": text}}})
    request = step_request(
        StepKind.transform, {"output": "{{ steps.fetch.output | length }}"}, context
    )
    transform = _Resolving(TransformProcessor(), Claims(LocalBlobStore(tmp_path), THRESHOLD))
    result = await execute(transform, request, worker="w", now=lambda: DISPATCHED_AT)
    assert result.status is StepStatus.ok and result.output == len(text)

    lost = step_request(
        StepKind.transform,
        {"output": "{{ steps.fetch.output }}"},
        {"steps": {"fetch": {"output": BlobReference("cd" * 32, 9, "run-1").to_json()}}},
    )
    result = await execute(transform, lost, worker="w", now=lambda: DISPATCHED_AT)
    assert result.status is StepStatus.failed and result.error is not None
    assert (result.error.error_class, result.error.retryable) == ("BlobMissing", False)
    assert "runs/run-1/cdcd" in result.error.message
