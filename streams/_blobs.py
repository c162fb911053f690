"""The blob store a worker's claim checks use, and the sweeper that ages payloads out.

``blob_store`` names the store: a directory (``file:///var/lib/baton/blobs`` or a plain
path) or a bucket (``s3://bucket/prefix``, at ``blob_endpoint_url`` for an S3 API that is
not AWS). Every worker of a cluster must name the same store: a payload one worker claims,
another resolves.

The sweeper deletes the payloads of runs that ended longer ago than ``run_retention``: the
coordinator notes a run that ended holding references under the day it ended, and the
sweeper, on each worker that runs a coordinator, looks at the days past retention every
``interval`` seconds. Deleting is idempotent, so several sweepers do no harm.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import unquote, urlsplit

from processors import BlobStore, LocalBlobStore
from topics import BatonError, ConfigurationError

__all__ = ["BlobSweeper", "open_blob_store"]

log = logging.getLogger(__name__)


def open_blob_store(url: str, *, endpoint_url: str | None = None) -> BlobStore:
    """The store a ``blob_store`` setting names.

    Raises:
        ConfigurationError: Not a directory path, ``file://`` or ``s3://`` URL; or an
            ``s3://`` store without the ``s3`` extra.
    """
    parts = urlsplit(url)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ConfigurationError(f"blob_store: {url!r} names no bucket (s3://BUCKET/prefix)")
        from processors._s3 import S3BlobStore

        return S3BlobStore(parts.netloc, parts.path.lstrip("/"), endpoint_url=endpoint_url)
    if parts.scheme == "file":
        return LocalBlobStore(Path(unquote(parts.path)))
    if parts.scheme == "" and url.strip():
        return LocalBlobStore(Path(url).expanduser())
    raise ConfigurationError(
        f"blob_store: {url!r} is neither a directory, a file:// URL nor an s3:// URL"
    )


class BlobSweeper:
    """Deletes the payloads of runs whose retention has passed.

    Args:
        store: The blob store.
        retention_s: How long a finished run is remembered (``run_retention``).
        interval: Seconds between sweeps.
        clock: The time.
    """

    def __init__(
        self,
        store: BlobStore,
        retention_s: float,
        *,
        interval: float = 3600.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.retention = timedelta(seconds=retention_s)
        self.interval = interval
        self.clock = clock
        self.swept = 0
        self._task: asyncio.Task[None] | None = None

    async def sweep(self) -> int:
        """Delete the payloads of every run noted on a day wholly past retention; how many.

        A run is kept until the whole day it ended on is past retention: up to a day longer
        than ``run_retention``, never shorter.
        """
        runs = await self.store.finished_before(self.clock() - self.retention)
        for run in runs:
            await self.store.forget(run)
        self.swept += len(runs)
        if runs:
            log.info("deleted the payloads of %d runs past retention", len(runs))
        return len(runs)

    async def start(self) -> None:
        """Sweep now and every ``interval`` seconds, in the background."""
        self._task = asyncio.create_task(self._every(), name="blob sweeper")

    async def stop(self) -> None:
        """Stop sweeping."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _every(self) -> None:
        while True:
            try:
                await self.sweep()
            except (BatonError, OSError) as exc:  # a store that is down: next time
                log.warning("blob sweep failed: %s", exc)
            await asyncio.sleep(self.interval)
