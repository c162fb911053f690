"""A worker's Prometheus metrics: one registry per worker, counted where things become true.

Every metric is named ``baton_...`` in base units (seconds, bytes, US dollars as ``_usd``),
counters end in ``_total``, and no label holds a run id, a prompt or anything else without
a small bound: the names survive OpenTelemetry's Prometheus translation unchanged.

- **Committed counters** (runs, steps, tokens, cost, cache, dead letters, coordinator
  events). The coordinator gathers what a batch did in the batch's ``Tally`` while it
  handles events, a plain dict add per event; the counters move only once the batch has
  committed (under exactly-once: its Kafka transaction), from that tally. An aborted batch
  counts nothing, and its inputs, read again, are counted by the batch that commits them.
- **Processor observations** (step durations): each attempt a processor ran, at-least-once,
  like the attempts themselves.
- **Gauges read when scraped** (approvals, breakers, retries waiting, lag, runs held): a
  collector asks the services for their current figures, so the hot path pays nothing.

Label children are bound once and kept (``_child``): the hot path never calls ``labels``.
The registry is the worker's own (never the process-global one), so several workers in one
process, as in tests, keep apart.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from topics import DeadLetter, Event, RunEvent, RunResult, StepRequested, StepResult

__all__ = ["CONTENT_TYPE", "GaugeSource", "Metrics", "Tally", "consumer_lag"]

#: The text exposition format every Prometheus (2.x and 3.x) scrapes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Commits take a few milliseconds on an idle broker, seconds when it struggles.
_COMMIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Steps take from well under a millisecond (a transform) to minutes (an agent turn).
_STEP_BUCKETS = (0.001, 0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

#: What a collector's figure source yields: label values and the value.
GaugeSource = Callable[[], Iterable[tuple[tuple[str, ...], float]]]


@dataclass(slots=True)
class Tally:
    """What one coordinator batch did, counted once it commits.

    ``counts`` maps a key (the metric's name in ``Metrics._families``, then its label
    values) to the amount.
    """

    counts: dict[tuple[str, ...], float] = field(default_factory=dict)

    def add(self, key: tuple[str, ...], amount: float = 1) -> None:
        """Count ``amount`` more of one metric's child."""
        counts = self.counts
        counts[key] = counts.get(key, 0) + amount

    def decision(self, emitted: Iterable[Event], inbound: Event, tenant: str | None) -> None:
        """Count what one event led to: what it emitted, and a step result's usage.

        Args:
            emitted: The events the decision emitted.
            inbound: The event decided on.
            tenant: The run's tenant, when the decision changed the run (its usage is then
                the run's).
        """
        counts = self.counts
        get = counts.get
        key: tuple[str, ...]
        for event in emitted:
            # Exact types (events are never subclassed): cheaper than isinstance, as narrow.
            if type(event) is RunEvent:
                what = event.type
                if what == "run_started":
                    key = ("runs_started", event.workflow)
                elif what == "step_failed":
                    detail = event.detail
                    error = detail.get("error_class") if isinstance(detail, dict) else None
                    key = ("step_failures", str(error or "UnknownError"))
                elif what == "step_timed_out":
                    key = ("step_failures", "StepTimeout")
                else:
                    continue
            elif type(event) is StepRequested:
                key = ("step_attempts", event.kind_name)
            elif type(event) is RunResult:
                key = ("runs_finished", event.workflow, event.status.value)
            elif type(event) is DeadLetter:
                key = ("dead_letters", event.error_class)
            else:
                continue
            counts[key] = get(key, 0) + 1
        if tenant is None or type(inbound) is not StepResult or inbound.usage is None:
            return
        usage = inbound.usage
        route = usage.route or ""
        if usage.input_tokens:
            key = ("model_tokens", route, tenant, "input")
            counts[key] = get(key, 0) + usage.input_tokens
        if usage.output_tokens:
            key = ("model_tokens", route, tenant, "output")
            counts[key] = get(key, 0) + usage.output_tokens
        if usage.cost_usd:
            key = ("model_cost", route, tenant)
            counts[key] = get(key, 0) + float(usage.cost_usd)
        if usage.cached:
            self.add(("cache_hits", route))
            if usage.saved_usd:
                self.add(("cache_saved", route), float(usage.saved_usd))


class _Gauges(Collector):
    """Gauges whose figures are asked for when the registry is scraped."""

    def __init__(self) -> None:
        self._sources: list[tuple[str, str, tuple[str, ...], GaugeSource]] = []

    def add(
        self, name: str, documentation: str, labels: tuple[str, ...], source: GaugeSource
    ) -> None:
        self._sources.append((name, documentation, labels, source))

    def collect(self) -> Iterator[Metric]:
        for name, documentation, labels, source in self._sources:
            family = GaugeMetricFamily(name, documentation, labels=list(labels))
            for values, value in source():
                family.add_metric(list(values), value)
            yield family

    def describe(self) -> Iterator[Metric]:
        # The names, without asking the sources (they may not have started yet).
        for name, documentation, labels, _ in self._sources:
            yield GaugeMetricFamily(name, documentation, labels=list(labels))


class Metrics:
    """The metrics of one worker, on a registry of its own.

    Args:
        registry: Where they are registered (a new one by default).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._families: dict[str, Counter] = {
            "runs_started": Counter(
                "baton_runs_started",
                "Runs started, committed by the coordinator.",
                ["workflow"],
                registry=r,
            ),
            "runs_finished": Counter(
                "baton_runs_finished",
                "Runs ended (their one result committed), by how they ended.",
                ["workflow", "status"],
                registry=r,
            ),
            "step_attempts": Counter(
                "baton_step_attempts",
                "Step attempts dispatched (delayed retries included), committed.",
                ["kind"],
                registry=r,
            ),
            "step_failures": Counter(
                "baton_step_failures",
                "Failed step attempts the coordinator settled (timeouts included).",
                ["error_class"],
                registry=r,
            ),
            "model_tokens": Counter(
                "baton_model_tokens",
                "Model tokens billed to runs, from the step results the coordinator settled.",
                ["route", "tenant", "type"],
                registry=r,
            ),
            "model_cost": Counter(
                "baton_model_cost_usd",
                "Model cost in US dollars billed to runs, from settled step results.",
                ["route", "tenant"],
                registry=r,
            ),
            "cache_hits": Counter(
                "baton_cache_hits",
                "Model calls answered by the response cache, from settled step results.",
                ["route"],
                registry=r,
            ),
            "cache_saved": Counter(
                "baton_cache_saved_usd",
                "US dollars the response cache saved, from settled step results.",
                ["route"],
                registry=r,
            ),
            "dead_letters": Counter(
                "baton_dead_letters",
                "Dead letters written (by the coordinator: committed; by processors, the "
                "retry relay and takeovers: delivered).",
                ["error_class"],
                registry=r,
            ),
        }
        self._events = Counter(
            "baton_coordinator_events",
            "Records and wake-ups the coordinator handled, committed.",
            registry=r,
        )
        self._commits = Histogram(
            "baton_commit_duration_seconds",
            "How long a coordinator batch took to commit (one Kafka transaction under "
            "exactly-once), committed batches only.",
            buckets=_COMMIT_BUCKETS,
            registry=r,
        )
        self._commit_failures = Counter(
            "baton_commit_failures",
            "Coordinator batches whose commit failed (aborted; their inputs read again).",
            registry=r,
        )
        self._steps = Histogram(
            "baton_step_duration_seconds",
            "How long step attempts took in this worker's processors.",
            ["kind", "route"],
            buckets=_STEP_BUCKETS,
            registry=r,
        )
        self._children: dict[tuple[str, ...], Any] = {}
        self._gauges = _Gauges()
        self._lag: list[tuple[str, Callable[[], Awaitable[list[tuple[str, int, int]]]]]] = []
        self._lag_now: list[tuple[tuple[str, ...], float]] = []
        self._gauges.add(
            "baton_consumer_lag_records",
            "Records on an input partition not yet consumed (as of the last fetch).",
            ("consumer", "topic", "partition"),
            lambda: self._lag_now,
        )
        r.register(self._gauges)

    # -- what the services report ------------------------------------------------------------

    def _child(self, key: tuple[str, ...]) -> Any:
        child = self._children.get(key)
        if child is None:
            family = self._families[key[0]]
            child = family.labels(*key[1:])
            self._children[key] = child
        return child

    def committed(self, tally: Tally, handled: int, seconds: float) -> None:
        """A coordinator batch committed: count what it did, and how long its commit took."""
        for key, amount in tally.counts.items():
            self._child(key).inc(amount)
        if handled:
            self._events.inc(handled)
        self._commits.observe(seconds)

    def commit_failed(self) -> None:
        """A coordinator batch's commit failed (the batch is aborted)."""
        self._commit_failures.inc()

    def dead_lettered(self, error_class: str) -> None:
        """A dead letter written outside a coordinator batch was delivered."""
        self._child(("dead_letters", error_class)).inc()

    def step_ran(self, kind: str, route: str | None, seconds: float) -> None:
        """A processor finished an attempt of a step."""
        key = ("step", kind, route or "")
        child = self._children.get(key)
        if child is None:
            child = self._steps.labels(kind, route or "")
            self._children[key] = child
        child.observe(seconds)

    def gauge(
        self, name: str, documentation: str, labels: tuple[str, ...], source: GaugeSource
    ) -> None:
        """Add a gauge whose figures ``source`` gives when the registry is scraped."""
        self._gauges.add(name, documentation, labels, source)

    def lag_of(
        self, consumer: str, source: Callable[[], Awaitable[list[tuple[str, int, int]]]]
    ) -> None:
        """Add a consumer whose lag (topic, partition, records) ``refresh`` asks for."""
        self._lag.append((consumer, source))

    # -- scraping ----------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Ask for what needs the event loop (consumer positions) before a scrape."""
        now: list[tuple[tuple[str, ...], float]] = []
        for consumer, source in self._lag:
            with contextlib.suppress(Exception):  # a consumer stopping or rebalancing
                for topic, partition, lag in await source():
                    now.append(((consumer, topic, str(partition)), float(lag)))
        self._lag_now = now

    async def exposition(self) -> bytes:
        """The registry in Prometheus' text format, fresh."""
        await self.refresh()
        return generate_latest(self.registry)


async def consumer_lag(consumer: Any, committed: bool) -> list[tuple[str, int, int]]:
    """Each assigned partition's lag in records: its end minus the consumer's position.

    The end is the last stable offset for a ``read_committed`` consumer (``committed``),
    else the high watermark, both as of the consumer's last fetch; partitions not fetched
    yet are left out.
    """
    lags = []
    for tp in sorted(consumer.assignment()):
        end = consumer.last_stable_offset(tp) if committed else consumer.highwater(tp)
        if end is None or end < 0:
            continue
        try:
            position = await asyncio.wait_for(consumer.position(tp), 0.5)
        except Exception:  # unassigned meanwhile, or no position yet (a timeout)
            continue
        lags.append((tp.topic, tp.partition, max(0, end - position)))
    return lags
