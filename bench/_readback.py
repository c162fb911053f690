"""Reading a measurement's topics back after the fact: stamps for latencies, sizes per run.

Run events are decoded in one place only, ``run_events_of``: their record format is baton's
to change (several events per record, for one), and this is the function to adapt.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from dataclasses import replace as _replace

from bench._kafka import path_topics, read_topic
from bench._latency import RequestStamp, ResultStamp, RunStamp
from topics import (
    BUILTIN_KINDS,
    Codec,
    RunEvent,
    RunResult,
    StepRequested,
    StepResult,
    Topic,
    TopicCatalog,
)

__all__ = ["Readback", "read_back", "run_events_of"]


def run_events_of(value: bytes, codec: Codec) -> list[RunEvent]:
    """The run events one record of the run-events topic holds (a batch, or one event)."""
    return codec.run_events(value)


@dataclass
class Readback:
    """What a measurement's runs left on the topics.

    ``records`` and ``bytes`` count per (run id, topic role): what each run wrote.
    """

    requests: list[RequestStamp] = field(default_factory=list)
    results: list[ResultStamp] = field(default_factory=list)
    runs: list[RunStamp] = field(default_factory=list)
    records: Counter[tuple[str, str]] = field(default_factory=Counter)
    bytes: Counter[tuple[str, str]] = field(default_factory=Counter)
    run_ids: frozenset[str] = frozenset()

    @property
    def runs_counted(self) -> int:
        """How many runs were read back."""
        return len(self.run_ids)

    def add_shared(self, role: str, records: float, size: float, run_ids: list[str]) -> None:
        """Count records written for many runs at once (batches), an equal share each."""
        chosen = [run_id for run_id in run_ids if run_id in self.run_ids]
        if not chosen:
            return
        for run_id in chosen:
            self.records[(run_id, role)] += records / len(chosen)  # type: ignore[assignment]
            self.bytes[(run_id, role)] += size / len(chosen)  # type: ignore[assignment]

    def per_run(
        self, run_ids: Iterable[str] | None = None
    ) -> tuple[dict[str, float], dict[str, float]]:
        """Records and value bytes written per run, by topic role, over ``run_ids`` (all)."""
        chosen = self.run_ids if run_ids is None else frozenset(run_ids) & self.run_ids
        n = max(len(chosen), 1)
        counts: Counter[str] = Counter()
        sizes: Counter[str] = Counter()
        for (run_id, role), count in self.records.items():
            if run_id in chosen:
                counts[role] += count
                sizes[role] += self.bytes[(run_id, role)]
        records = {role: round(count / n, 2) for role, count in counts.items()}
        per_bytes = {role: round(size / n, 1) for role, size in sizes.items()}
        records["total"] = round(sum(counts.values()) / n, 2)
        per_bytes["total"] = round(sum(sizes.values()) / n, 1)
        return records, per_bytes


def _other_run_topics(catalog: TopicCatalog) -> list[tuple[str, Topic]]:
    """Every other topic keyed by run id (retries, dead letters, approvals, timers...)."""
    read = {t.name for t in path_topics(catalog)}
    read |= {catalog.steps(kind).name for kind in BUILTIN_KINDS}
    # The coordinator's own topics are written in batches for many runs; the worker counts
    # them (``/healthz`` ``written``), and the journal is deleted after each flush.
    read |= {catalog.run_events.name, catalog.run_state.name, catalog.run_journal.name}
    read.add(catalog.audit_anchors.name)
    prefix = f"{catalog.prefix}."
    return [
        (topic.name.removeprefix(prefix), topic)
        for topic in catalog
        if topic.copartitioned and topic.name not in read
    ]


async def read_back(bootstrap: str, catalog: TopicCatalog, run_ids: Iterable[str]) -> Readback:
    """Read every topic a run writes and keep what concerns ``run_ids``.

    Every topic of the catalog keyed by run id is counted (records and value bytes per
    run); the run's path (tasks, step requests, step results, results) and its run events
    are also decoded for their timestamps.
    """
    codec = Codec()
    wanted = frozenset(run_ids)
    keys = {run_id.encode(): run_id for run_id in wanted}
    out = Readback(run_ids=wanted)
    partitions = catalog.partitions
    ends: dict[str, RunStamp] = {run_id: RunStamp(run_id) for run_id in wanted}

    def count(role: str, key: bytes | None, value: bytes) -> str | None:
        run_id = keys.get(key) if key is not None else None
        if run_id is None:
            return None
        out.records[(run_id, role)] += 1
        out.bytes[(run_id, role)] += len(value)
        return run_id

    for record in await read_topic(bootstrap, catalog.tasks.name, partitions):
        run_id = count("tasks", record.key, record.value)
        if run_id is not None:
            ends[run_id] = _replace(ends[run_id], task_appended_ms=record.timestamp_ms)
    for kind in BUILTIN_KINDS:
        for record in await read_topic(bootstrap, catalog.steps(kind).name, partitions):
            if count("step requests", record.key, record.value):
                request = codec.decode(record.value, StepRequested)
                out.requests.append(
                    RequestStamp(request.run_id, request.step, request.attempt, record.timestamp_ms)
                )
    for record in await read_topic(bootstrap, catalog.step_results.name, partitions):
        if count("step results", record.key, record.value):
            result = codec.decode(record.value, StepResult)
            out.results.append(
                ResultStamp(
                    result.run_id,
                    result.step,
                    result.attempt,
                    record.timestamp_ms,
                    result.started_at,
                    result.finished_at,
                )
            )
    for record in await read_topic(bootstrap, catalog.results.name, partitions):
        run_id = count("results", record.key, record.value)
        if run_id is not None and ends[run_id].result_appended_ms is None:
            run = codec.decode(record.value, RunResult)
            ends[run.run_id] = _replace(ends[run.run_id], result_appended_ms=record.timestamp_ms)
    for record in await read_topic(bootstrap, catalog.run_events.name, partitions):
        if record.value is not None:
            for event in run_events_of(record.value, codec):
                if event.run_id not in ends:
                    continue
                if event.type == "run_started":
                    ends[event.run_id] = _replace(ends[event.run_id], run_started_at=event.at)
                elif event.type == "run_completed":
                    ends[event.run_id] = _replace(ends[event.run_id], run_completed_at=event.at)
    for role, topic in _other_run_topics(catalog):
        for record in await read_topic(bootstrap, topic.name, topic.partitions):
            count(role, record.key, record.value)
    out.runs = list(ends.values())
    return out
