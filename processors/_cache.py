"""The response cache: a model's answer served again for the same call, without calling it.

A call is identified by its **cache key**, a sha256 over the canonical JSON (sorted keys) of
everything that decides the answer: the route name, the route's provider and model, the
messages, the sampling parameters (temperature, the completion cap actually sent), the
output schema and the tools offered. Change any of them and the key changes.

Only calls whose answer is meant to be repeatable are cached: temperature 0 (the default
of ``llm`` steps and agent turns), a step that did not opt out (``cache: false``), and a
route that is not a free ``scripted`` one (a local stand-in model: a hit would save nothing,
and benchmarks use those routes to measure baton itself).

``ResponseCache`` is all ``ModelClient`` needs: ``get`` and ``put``. ``MemoryResponseCache``
keeps entries in this process (tests, one-process use); the worker's cache
(``streams._cache``) shares them through a compacted topic and keeps its entries in one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Protocol

import orjson
from pydantic import BaseModel, JsonValue

from processors._catalog import RouteSpec
from topics import CacheEntry

__all__ = ["CACHE_KEY_VERSION", "MemoryResponseCache", "ResponseCache", "cache_key", "cacheable"]

#: Part of every key: bumped when what goes into a key changes, so old entries stop matching.
CACHE_KEY_VERSION = 1


def _utcnow() -> datetime:
    return datetime.now(UTC)


class ResponseCache(Protocol):
    """Where ``ModelClient`` keeps answers and looks them up.

    Neither method raises: a cache that cannot answer misses, one that cannot keep an entry
    drops it (and says so in the log). A cache is an optimisation, never a reason to fail.
    """

    async def get(self, key: str) -> CacheEntry | None:
        """The entry for ``key`` if there is one younger than the cache's TTL."""
        ...

    async def put(self, entry: CacheEntry) -> None:
        """Keep an entry (under ``entry.key``), replacing any earlier one."""
        ...


def cacheable(route: RouteSpec, temperature: float) -> bool:
    """Whether a call on ``route`` at ``temperature`` may be answered from the cache."""
    if temperature != 0:
        return False
    free = route.input_usd_per_mtok == 0 and route.output_usd_per_mtok == 0
    return not (route.provider == "scripted" and free)


def cache_key(
    route_name: str,
    route: RouteSpec,
    messages: Sequence[BaseModel | Mapping[str, JsonValue]],
    *,
    temperature: float,
    max_tokens: int | None,
    output_schema: Mapping[str, JsonValue] | None,
    tools: Sequence[BaseModel | Mapping[str, JsonValue]] | None,
) -> str:
    """The cache key of one model call: sha256 hex of its canonical JSON.

    Args:
        route_name: The route name the step gave.
        route: That route (its provider and model are part of the key).
        messages: The conversation.
        temperature: Sampling temperature.
        max_tokens: The step's completion cap; the route's ``max_output_tokens`` stands in
            when it is ``None``, as it does in the call.
        output_schema: The JSON Schema the answer must satisfy, if any.
        tools: The tools offered, if any (an empty list is the same as none).
    """
    call = {
        "version": CACHE_KEY_VERSION,
        "route": route_name,
        "provider": route.provider,
        "model": route.model,
        "messages": [_plain(m) for m in messages],
        "temperature": float(temperature),
        "max_tokens": route.output_cap(max_tokens),
        "output_schema": output_schema,
        "tools": [_plain(t) for t in tools] if tools else None,
    }
    return hashlib.sha256(orjson.dumps(call, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _plain(item: BaseModel | Mapping[str, JsonValue]) -> JsonValue:
    if isinstance(item, BaseModel):
        dumped: JsonValue = item.model_dump(mode="json")
        return dumped
    return dict(item)


class MemoryResponseCache:
    """Entries in this process, served while younger than the TTL.

    The latest entry put under a key wins, whatever its age (as on a compacted topic): an
    entry that arrives already expired removes the key. Expired entries are dropped as they
    are found, and swept from the oldest kept on every ``put``, so memory holds about one
    TTL's worth of entries.

    Args:
        ttl_s: Seconds an entry is served after its ``created_at``; must be positive.
        clock: The current time.
    """

    def __init__(self, ttl_s: float, clock: Callable[[], datetime] = _utcnow) -> None:
        if ttl_s <= 0:
            raise ValueError(f"the TTL must be positive, not {ttl_s}")
        self.ttl = timedelta(seconds=ttl_s)
        self._clock = clock
        self._entries: dict[str, CacheEntry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def fresh(self, entry: CacheEntry) -> bool:
        """Whether ``entry`` may still be served."""
        return self._clock() - entry.created_at < self.ttl

    async def get(self, key: str) -> CacheEntry | None:
        """The entry for ``key`` if it is younger than the TTL."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if not self.fresh(entry):
            del self._entries[key]
            return None
        return entry

    async def put(self, entry: CacheEntry) -> None:
        """Keep an entry, replacing any earlier one under its key."""
        self.remember(entry)

    def remember(self, entry: CacheEntry) -> None:
        """``put``, for callers that are not coroutines (a topic reader)."""
        self._entries.pop(entry.key, None)
        if self.fresh(entry):
            self._entries[entry.key] = entry  # re-inserted last: the dict is oldest first
        self._sweep()

    def forget(self, key: str) -> None:
        """Drop the entry under ``key`` (a tombstone on the topic)."""
        self._entries.pop(key, None)

    def _sweep(self) -> None:
        # Entries arrive about in age order; stop at the first fresh one (the rest are
        # checked when they are read).
        while self._entries:
            oldest = next(iter(self._entries))
            if self.fresh(self._entries[oldest]):
                break
            del self._entries[oldest]
