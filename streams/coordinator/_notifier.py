"""The approval webhook: tells a URL about every approval request and escalation.

Best effort, after the request is committed: three tries with a backoff, then a warning in
the log. The request itself is on ``approvals.requested`` whatever happens here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import httpx
from tenacity import AsyncRetrying, stop_after_attempt, wait_exponential

from topics import ApprovalRequested

__all__ = ["ApprovalNotifier"]

log = logging.getLogger(__name__)


class ApprovalNotifier:
    """POSTs each approval request to the webhook, one at a time, in order.

    Args:
        url: The webhook.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._queue: asyncio.Queue[ApprovalRequested] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def notify(self, request: ApprovalRequested) -> None:
        """Queue a request (committed) for the webhook."""
        self._queue.put_nowait(request)

    def start(self) -> None:
        """Start sending."""
        self._task = asyncio.create_task(self._run(), name="approval-webhook")

    async def stop(self) -> None:
        """Stop sending (what is queued is dropped: the topic has it)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            while True:
                request = await self._queue.get()
                body = {"event": "approval_requested", **request.model_dump(mode="json")}
                try:
                    async for attempt in AsyncRetrying(
                        stop=stop_after_attempt(3),
                        wait=wait_exponential(multiplier=0.5, max=5),
                        reraise=True,
                    ):
                        with attempt:
                            response = await http.post(self.url, json=body)
                            response.raise_for_status()
                except (httpx.HTTPError, OSError) as exc:
                    log.warning("webhook for %s failed: %s", request.approval_id, exc)
