"""Reading a measurement's topics back after the fact: stamps for latencies, sizes per run."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from dataclasses import replace as _replace

from bench._kafka import path_topics, read_topic
from bench._latency import RequestStamp, ResultStamp, RunStamp
from topics import Codec, RunEvent, RunResult, StepRequested, StepResult, TopicCatalog

__all__ = ["Readback", "read_back"]


@dataclass
class Readback:
    """What a measurement's runs left on the topics."""

    requests: list[RequestStamp] = field(default_factory=list)
    results: list[ResultStamp] = field(default_factory=list)
    runs: list[RunStamp] = field(default_factory=list)
    records: Counter[str] = field(default_factory=Counter)
    bytes: Counter[str] = field(default_factory=Counter)
    runs_counted: int = 0

    def per_run(self) -> tuple[dict[str, float], dict[str, float]]:
        """Records and value bytes written per run, by topic role."""
        n = max(self.runs_counted, 1)
        records = {role: round(count / n, 2) for role, count in self.records.items()}
        sizes = {role: round(size / n, 1) for role, size in self.bytes.items()}
        records["total"] = round(sum(self.records.values()) / n, 2)
        sizes["total"] = round(sum(self.bytes.values()) / n, 1)
        return records, sizes


async def read_back(bootstrap: str, catalog: TopicCatalog, run_ids: Iterable[str]) -> Readback:
    """Read every topic a run writes and keep what concerns ``run_ids``."""
    codec = Codec()
    wanted = set(run_ids)
    keys = {run_id.encode() for run_id in wanted}
    out = Readback(runs_counted=len(wanted))
    partitions = catalog.partitions
    path = path_topics(catalog)
    step_topics = [t for t in path if t.value_types == (StepRequested,)]
    ends: dict[str, RunStamp] = {run_id: RunStamp(run_id) for run_id in wanted}

    def count(role: str, key: bytes | None, value: bytes) -> bool:
        if key not in keys:
            return False
        out.records[role] += 1
        out.bytes[role] += len(value)
        return True

    for record in await read_topic(bootstrap, catalog.tasks.name, partitions):
        if count("tasks", record.key, record.value):
            run_id = record.key.decode() if record.key else ""
            ends[run_id] = _replace(ends[run_id], task_appended_ms=record.timestamp_ms)
    for topic in step_topics:
        for record in await read_topic(bootstrap, topic.name, partitions):
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
        if count("results", record.key, record.value):
            run = codec.decode(record.value, RunResult)
            if ends[run.run_id].result_appended_ms is None:
                ends[run.run_id] = _replace(
                    ends[run.run_id], result_appended_ms=record.timestamp_ms
                )
    for record in await read_topic(bootstrap, catalog.run_events.name, partitions):
        if count("run events", record.key, record.value):
            event = codec.decode(record.value, RunEvent)
            if event.type == "run_started":
                ends[event.run_id] = _replace(ends[event.run_id], run_started_at=event.at)
            elif event.type == "run_completed":
                ends[event.run_id] = _replace(ends[event.run_id], run_completed_at=event.at)
    for record in await read_topic(bootstrap, catalog.run_state.name, partitions):
        count("run state", record.key, record.value)
    out.runs = list(ends.values())
    return out
