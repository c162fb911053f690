"""The S3-compatible blob store: claimed payloads as objects in a bucket (any S3 API).

botocore speaks the S3 wire format (SigV4, the XML errors, checksums) for AWS, MinIO, Ceph,
R2 and the rest; its calls are blocking, so each runs in a thread. Credentials come from
botocore's usual chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a profile, an
instance role): never from baton's settings, never logged.

Objects are ``<prefix>runs/<run id>/<sha256>`` (the payloads) and
``<prefix>finished/<YYYY-MM-DD>/<run id>`` (empty: a run with payloads ended that day). The
sweeper deletes a run's objects once its day is past retention; a bucket lifecycle rule on
``<prefix>runs/`` is a backstop for runs that never end (docs/payloads.md).

Needs the ``s3`` extra (``pip install 'baton[s3]'``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from processors._claims import BlobMissing, BlobStoreUnavailable, days_before, finished_key
from topics import ConfigurationError

__all__ = ["S3BlobStore"]

T = TypeVar("T")

_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})


class S3BlobStore:
    """Blobs in an S3 bucket.

    Args:
        bucket: The bucket (it must exist).
        prefix: Prepended to every key (``baton/``), so one bucket can serve several clusters.
        endpoint_url: The S3 API's address for a store that is not AWS (MinIO, ...);
            ``None`` for AWS itself.
        region: The signing region (``us-east-1`` when unset and the environment names none).
        client: A ready botocore S3 client (tests); made from the rest when ``None``.

    Raises:
        ConfigurationError: The ``s3`` extra is not installed.
    """

    name = "s3"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        client: Any = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        if client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError:
                raise ConfigurationError(
                    "blob_store: an s3:// store needs the s3 extra (pip install 'baton[s3]')"
                ) from None
            session = boto3.session.Session()
            client = session.client(
                "s3",
                endpoint_url=endpoint_url,
                region_name=region or session.region_name or "us-east-1",
                # One retry layer: baton's own. Bounded connect and read times.
                config=Config(
                    retries={"max_attempts": 1, "mode": "standard"},
                    connect_timeout=5,
                    read_timeout=60,
                    max_pool_connections=32,
                ),
            )
        self._client = client

    async def _call(self, what: str, call: Callable[[], T]) -> T:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return await asyncio.to_thread(call)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _MISSING:
                raise BlobMissing(f"{what}: not in bucket {self.bucket}") from None
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            if status >= 500 or status in (408, 429):
                raise BlobStoreUnavailable(f"{what}: S3 {status} {code}") from None
            raise ConfigurationError(
                f"{what}: bucket {self.bucket} refused: {code} (HTTP {status})"
            ) from None
        except BotoCoreError as exc:
            raise BlobStoreUnavailable(f"{what}: {type(exc).__name__}: {exc}") from None

    async def put(self, key: str, data: bytes) -> None:
        """Write an object (content-addressed: writing it again changes nothing)."""
        await self._call(
            f"put {key}",
            lambda: self._client.put_object(
                Bucket=self.bucket,
                Key=self.prefix + key,
                Body=data,
                ContentType="application/json",
            ),
        )

    async def get(self, key: str) -> bytes:
        """Read an object."""

        def read() -> bytes:
            answer = self._client.get_object(Bucket=self.bucket, Key=self.prefix + key)
            return bytes(answer["Body"].read())

        return await self._call(f"blob {key}", read)

    async def finished(self, run: str, at: datetime) -> None:
        """Note the run's end: an empty object under its day."""
        await self.put(finished_key(run, at), b"")

    async def finished_before(self, cutoff: datetime) -> list[str]:
        """Runs noted on days before the cutoff's."""
        base = f"{self.prefix}finished/"
        days = [p.rstrip("/").rsplit("/", 1)[-1] for p in await self._listed(base, "/")]
        runs: list[str] = []
        for day in days_before(cutoff, days):
            runs += [key.rsplit("/", 1)[-1] for key in await self._listed(f"{base}{day}/")]
        return runs

    async def forget(self, run: str) -> None:
        """Delete the run's objects, then its notes."""
        keys = await self._listed(f"{self.prefix}runs/{run}/")
        base = f"{self.prefix}finished/"
        for day in await self._listed(base, "/"):
            keys += [k for k in await self._listed(day) if k.rsplit("/", 1)[-1] == run]
        for start in range(0, len(keys), 1000):
            chunk = [{"Key": k} for k in keys[start : start + 1000]]
            await self._call(
                f"delete the blobs of run {run}",
                lambda chunk=chunk: self._client.delete_objects(  # type: ignore[misc]
                    Bucket=self.bucket, Delete={"Objects": chunk, "Quiet": True}
                ),
            )

    async def _listed(self, prefix: str, delimiter: str | None = None) -> list[str]:
        """Keys under a prefix (or, with a delimiter, the common prefixes one level down)."""

        def listing() -> list[str]:
            paginator = self._client.get_paginator("list_objects_v2")
            extra = {"Delimiter": delimiter} if delimiter else {}
            found: list[str] = []
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, **extra):
                if delimiter:
                    found += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
                else:
                    found += [o["Key"] for o in page.get("Contents", [])]
            return found

        return await self._call(f"list {prefix}", listing)
