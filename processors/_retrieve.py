"""The ``retrieve`` processor: context for a step from a local collection or a search endpoint.

Every source answers the same shape, best first::

    {"query": "...", "documents": [{"id", "text", "score", "source", "metadata"}, ...]}

A ``local`` source ranks its own documents (BM25, see ``_sources``). An ``http`` source is a
search endpoint called like an HTTP tool: the host is fixed by configuration, secrets come from
the environment by name, the step's idempotency key is sent, errors are classified the same way
and retried by the same one in-process layer; its answer is mapped to documents with the
source's ``results`` expressions (JMESPath).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import httpx
import jmespath
from jmespath.exceptions import JMESPathError
from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

from processors._processor import StepOutput, parse_params
from processors._sources import LocalCollection
from processors._tool import HttpCall, call_with_retries, redact
from processors._tools import (
    HttpSourceSpec,
    LocalSourceSpec,
    ResultFields,
    ToolFailed,
    ToolUnavailable,
    UnknownSource,
)
from topics import StepKind, StepRequested

__all__ = ["RetrieveParams", "RetrieveProcessor"]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class RetrieveParams(BaseModel):
    """What the coordinator sends a ``retrieve`` step (templates already rendered)."""

    model_config = ConfigDict(frozen=True)

    source: str = Field(min_length=1, description="Source name in tools.yaml `sources`.")
    query: str = Field(max_length=10_000, description="What to look for.")
    top_k: int = Field(default=5, ge=1, le=100, description="How many documents at most.")

    @field_validator("query")
    @classmethod
    def _has_words(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the query is empty")
        return value


class RetrieveProcessor:
    """Runs ``retrieve`` steps.

    Args:
        sources: The sources steps may name (``ToolRegistry.sources``).
        http_client: Shared client for search endpoints; it must not retry on its own.
        environ: Where secrets are read, by the names header templates give.
        sleep: How waits between in-process retries are spent.
        clock: The current time, to keep retries inside the step's deadline.
        max_retry_wait: The longest single wait (seconds) sat out in-process.
    """

    kind = StepKind.retrieve

    def __init__(
        self,
        sources: Mapping[str, LocalSourceSpec | HttpSourceSpec],
        http_client: httpx.AsyncClient,
        environ: Mapping[str, str],
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], datetime] = _utcnow,
        max_retry_wait: float = 30.0,
    ) -> None:
        self._sources = dict(sources)
        self._client = http_client
        self._environ = environ
        self._sleep = sleep
        self._clock = clock
        self._max_retry_wait = max_retry_wait
        # Read on first use, then kept: one collection per local source for the process.
        self._collections = {
            name: LocalCollection(spec.path, spec.glob, spec.max_chunk_chars)
            for name, spec in self._sources.items()
            if isinstance(spec, LocalSourceSpec)
        }

    async def run(self, request: StepRequested) -> StepOutput:
        """Look the query up in the step's source.

        Raises:
            InvalidParams: The params are not a retrieve step's.
            UnknownSource: The source is not configured (the message lists the known ones).
            ConfigurationError: A local source's directory is gone, or a secret is unset.
            ToolRequestRefused: The rendered search request would leave its ``base_url``.
            RetryableError: Still failing after the in-process retries (its subclasses say how).
            PermanentError: The endpoint refused the call, or answered in another shape.
        """
        params = parse_params(RetrieveParams, request)
        spec = self._sources.get(params.source)
        if spec is None:
            known = ", ".join(sorted(self._sources)) or "none"
            raise UnknownSource(
                f"source {params.source!r} is not configured (known: {known})"
            ) from None
        if isinstance(spec, LocalSourceSpec):
            found = await asyncio.to_thread(
                self._collections[params.source].search, params.query, params.top_k
            )
            documents: list[JsonValue] = [
                passage.document(score, params.source) for passage, score in found
            ]
        else:
            documents = await self._search(request, params, spec)
        return StepOutput({"query": params.query, "documents": documents})

    async def _search(
        self, request: StepRequested, params: RetrieveParams, spec: HttpSourceSpec
    ) -> list[JsonValue]:
        what = f"source {params.source!r}"
        context = {"query": params.query, "top_k": params.top_k}
        prepared = HttpCall.prepare(spec, context, self._environ, request.idempotency_key, what)

        async def search() -> list[JsonValue]:
            answer = await prepared.send(self._client)
            if not answer.is_json:
                raise ToolUnavailable(f"{prepared.where}: the answer is not JSON")
            documents = _documents(answer.value, spec.results, params, prepared.where)
            return redact(documents, prepared.secrets)

        return await call_with_retries(
            search,
            request=request,
            retries=spec.retries,
            sleep=self._sleep,
            clock=self._clock,
            max_retry_wait=self._max_retry_wait,
        )


def _documents(
    answer: JsonValue, fields: ResultFields, params: RetrieveParams, where: str
) -> list[JsonValue]:
    items = _select(fields.items, answer, where)
    if items is None:
        return []
    if not isinstance(items, list):
        raise ToolFailed(
            f"{where}: results {fields.items!r} is a {type(items).__name__}, not a list"
        )
    documents: list[JsonValue] = []
    for rank, item in enumerate(items[: params.top_k]):
        at = f"{where}: result {rank}"
        text = _select(fields.text, item, at)
        if not isinstance(text, str):
            raise ToolFailed(f"{at}: text {fields.text!r} is not a string")
        identifier = _select(fields.id, item, at)
        if isinstance(identifier, bool) or not isinstance(identifier, str | int | None):
            raise ToolFailed(f"{at}: id {fields.id!r} is not a string or integer")
        score = _select(fields.score, item, at) if fields.score else None
        if score is None:
            score = round(1.0 / (1 + rank), 6)
        if (
            isinstance(score, bool)
            or not isinstance(score, int | float)
            or not math.isfinite(score)
        ):
            raise ToolFailed(f"{at}: score {fields.score!r} is not a number")
        metadata = _select(fields.metadata, item, at) if fields.metadata else None
        if metadata is not None and not isinstance(metadata, dict):
            raise ToolFailed(f"{at}: metadata {fields.metadata!r} is not an object")
        documents.append(
            {
                "id": str(rank) if identifier is None else str(identifier),
                "text": text,
                "score": float(score),
                "source": params.source,
                "metadata": metadata or {},
            }
        )
    return documents


def _select(expression: str, value: Any, where: str) -> Any:
    try:
        return jmespath.search(expression, value)
    except JMESPathError as exc:
        raise ToolFailed(f"{where}: {expression!r}: {exc}") from None
