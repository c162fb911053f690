"""Listing runs: what ``GET /v1/runs`` filters, how it pages, and one worker's share.

Each coordinator lists the runs it remembers (in flight, and finished within
``BATON_RUN_RETENTION``) on the partitions it owns; the worker asked merges the others'
answers into one page. Runs are ordered newest first (by when they started, then by run id),
and a page ends with a **cursor**, the ordering key of its last run: the next page is the
runs after it. Because the order is a total one over every worker, each worker returns at
most ``limit`` runs after the cursor and the merge of those is exactly the page.

A finished run is remembered as its stored record; ``RunLister`` keeps the outline it made
of each run's version, so listing again decodes only the runs that changed.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from streams._access import Identity
from streams.coordinator import RunState
from streams.coordinator._store import PartitionStore, StoredRun
from topics import RunStatus

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "RunLister",
    "RunOutline",
    "RunQuery",
    "QueryError",
    "merge_pages",
]

DEFAULT_LIMIT = 50
#: The most runs one page holds.
MAX_LIMIT = 200
STATUSES = ("running", *(status.value for status in RunStatus))
_MAX_TEXT = 200


class QueryError(ValueError):
    """A query parameter that is not valid; the message names it."""


def _key(started_at: datetime, run_id: str) -> tuple[int, str]:
    return int(started_at.timestamp() * 1_000_000), run_id


def encode_cursor(key: tuple[int, str]) -> str:
    """The cursor that names a place in the order (opaque to callers)."""
    return base64.urlsafe_b64encode(f"{key[0]}.{key[1]}".encode()).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[int, str]:
    """The place a cursor names.

    Raises:
        QueryError: It is not a cursor a page gave.
    """
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        micros, _, run_id = raw.partition(".")
        if not run_id:
            raise ValueError(raw)
        return int(micros), run_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise QueryError(f"cursor: {text[:40]!r} is not a cursor a page of runs gave") from None


@dataclass(frozen=True, slots=True)
class RunQuery:
    """What ``GET /v1/runs`` asks for; every filter ``None`` means "any".

    Attributes:
        status: ``running``, or how the run ended.
        workflow: The workflow's name.
        tenant: The run's tenant (the caller must act for it).
        since: Runs started at or after this time.
        text: Part of the run id or the workflow's name (any case).
        limit: Runs per page, 1 to ``MAX_LIMIT``.
        after: The cursor's place: runs after it.
    """

    status: str | None = None
    workflow: str | None = None
    tenant: str | None = None
    since: datetime | None = None
    text: str | None = None
    limit: int = DEFAULT_LIMIT
    after: tuple[int, str] | None = None

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> RunQuery:
        """The query a request's parameters make.

        Raises:
            QueryError: An unknown parameter or a bad value, named.
        """
        known = {"status", "workflow", "tenant", "since", "q", "limit", "cursor"}
        unknown = sorted(set(params) - known)
        if unknown:
            raise QueryError(f"{unknown[0]}: not a filter (filters: {', '.join(sorted(known))})")
        for name in known - {"limit", "cursor", "since"}:
            if len(params.get(name, "")) > _MAX_TEXT:
                raise QueryError(f"{name}: longer than {_MAX_TEXT} characters")
        status = params.get("status") or None
        if status is not None and status not in STATUSES:
            raise QueryError(f"status: {status!r} is not one of {', '.join(STATUSES)}")
        since = None
        if params.get("since"):
            try:
                since = datetime.fromisoformat(params["since"])
            except ValueError:
                raise QueryError(
                    f"since: {params['since'][:40]!r} is not an ISO-8601 time"
                ) from None
            since = since if since.tzinfo is not None else since.replace(tzinfo=UTC)
        limit = DEFAULT_LIMIT
        if params.get("limit"):
            text = params["limit"]
            if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
                raise QueryError(f"limit: {text[:20]!r} is not a number from 1 to {MAX_LIMIT}")
            limit = int(text)
        cursor = params.get("cursor")
        return cls(
            status=status,
            workflow=params.get("workflow") or None,
            tenant=params.get("tenant") or None,
            since=since,
            text=(params.get("q") or "").strip().lower() or None,
            limit=limit,
            after=decode_cursor(cursor) if cursor else None,
        )

    def params(self) -> dict[str, str]:
        """The parameters that ask another worker the same query."""
        out = {
            "status": self.status,
            "workflow": self.workflow,
            "tenant": self.tenant,
            "since": self.since.isoformat() if self.since else None,
            "q": self.text,
            "limit": str(self.limit),
            "cursor": encode_cursor(self.after) if self.after else None,
        }
        return {name: value for name, value in out.items() if value is not None}


@dataclass(frozen=True, slots=True)
class RunOutline:
    """What a list shows of one run."""

    run_id: str
    workflow: str
    tenant: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    tokens: int
    cost_usd: str
    reason: str | None
    waiting_for: tuple[str, ...]
    labels: Mapping[str, str]

    @classmethod
    def of(cls, state: RunState) -> RunOutline:
        """The outline of a run's state (or of its summary)."""
        return cls(
            run_id=state.run_id,
            workflow=state.workflow,
            tenant=state.tenant,
            status=state.status.value if state.status else "running",
            started_at=state.started_at,
            finished_at=state.finished_at,
            tokens=state.usage.input_tokens + state.usage.output_tokens,
            cost_usd=str(state.usage.cost_usd),
            reason=state.reason,
            waiting_for=tuple(
                step.approval.approval_id
                for step in state.steps.values()
                if step.approval is not None and not state.finished
            ),
            labels=dict(state.labels),
        )

    @property
    def key(self) -> tuple[int, str]:
        """Its place in the order (newest first: a list sorts by this, descending)."""
        return _key(self.started_at, self.run_id)

    def matches(self, query: RunQuery, identity: Identity) -> bool:
        """Whether the caller may see the run and the query asks for it."""
        if not identity.acts_for(self.tenant):
            return False
        if query.tenant is not None and self.tenant != query.tenant:
            return False
        if query.status is not None and self.status != query.status:
            return False
        if query.workflow is not None and self.workflow != query.workflow:
            return False
        if query.since is not None and self.started_at < query.since:
            return False
        if query.text is not None and not (
            query.text in self.run_id.lower() or query.text in self.workflow.lower()
        ):
            return False
        return query.after is None or self.key < query.after

    def view(self) -> dict[str, Any]:
        """The JSON form of a listed run."""
        return {
            "run_id": self.run_id,
            "workflow": self.workflow,
            "tenant": self.tenant,
            "status": self.status,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "tokens": self.tokens,
            "cost_usd": self.cost_usd,
            "reason": self.reason,
            "waiting_for": list(self.waiting_for),
            "labels": dict(self.labels),
        }


class RunLister:
    """Lists one worker's runs, keeping the outline it made of each stored run's version."""

    def __init__(self) -> None:
        self._made: dict[str, tuple[int, RunOutline]] = {}

    def page(
        self, stores: Iterable[PartitionStore], query: RunQuery, identity: Identity
    ) -> tuple[list[dict[str, Any]], bool]:
        """The first ``query.limit`` matching runs of these stores, and whether more match."""
        found: list[RunOutline] = []
        seen: set[str] = set()
        for store in stores:
            for run_id, run in store.remembered():
                seen.add(run_id)
                outline = self._outline(run_id, store.version(run_id), run)
                if outline is not None and outline.matches(query, identity):
                    found.append(outline)
        for gone in self._made.keys() - seen:
            del self._made[gone]
        found.sort(key=lambda outline: outline.key, reverse=True)
        return [outline.view() for outline in found[: query.limit]], len(found) > query.limit

    def _outline(self, run_id: str, version: int, run: RunState | StoredRun) -> RunOutline | None:
        if isinstance(run, RunState):
            return RunOutline.of(run)
        made = self._made.get(run_id)
        if made is not None and made[0] == version:
            return made[1]
        try:
            outline = RunOutline.of(run.state())
        except ValueError:  # a record a takeover could not read is dead-lettered when touched
            return None
        self._made[run_id] = (version, outline)
        return outline


def merge_pages(
    pages: Iterable[tuple[list[dict[str, Any]], bool]], limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    """One page from every worker's: the first ``limit`` runs, and the next page's cursor."""
    runs: list[dict[str, Any]] = []
    more = False
    for items, has_more in pages:
        runs.extend(items)
        more = more or has_more
    runs.sort(key=_view_key, reverse=True)
    more = more or len(runs) > limit
    runs = runs[:limit]
    return runs, encode_cursor(_view_key(runs[-1])) if more and runs else None


def _view_key(view: Mapping[str, Any]) -> tuple[int, str]:
    return _key(datetime.fromisoformat(str(view["started_at"])), str(view["run_id"]))
