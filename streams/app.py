"""The worker: the coordinator runtime and the step processors in one process.

- The **coordinator** (consumer group ``<prefix>-coordinator``) is baton's own consume-decide-
  produce loop on aiokafka, exactly once by default (``streams.coordinator``).
- The **retry relay** (group ``<prefix>-retry-relay``) runs beside every coordinator and
  sends delayed retries on when they are due.
- The **processors** (group ``<prefix>-processors``) run each step request as its own task
  (``streams._processing``), at-least-once: outside calls are at-least-once whatever the
  guarantee.
- A Faust app serves the HTTP API and runs the worker's lifecycle (signals, logging).

Separate consumer groups let processors scale apart from coordinators
(``baton worker --processors llm --no-coordinator`` on more machines).

A worker that runs ``llm`` or ``agent`` processors shares the **response cache** with every
other one through the ``llm-cache`` topic (``streams._cache``); it reads the topic before its
processors take requests.
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import faust
import httpx
import mode

from processors import (
    Breakers,
    ModelCatalog,
    ToolRegistry,
    build_processors,
    cacheable,
    installed_kinds,
    load_model_catalog,
    load_tools,
)
from streams import _faust_fixes
from streams._access import load_access
from streams._api import install_api, install_processor_api
from streams._blobs import BlobSweeper
from streams._cache import KafkaResponseCache
from streams._config import Settings
from streams._metrics import Metrics
from streams._policies import load_policies
from streams._processing import ProcessorService
from streams._relay import RetryRelay
from streams._workflows import WorkflowBook, WorkflowFeed
from streams.coordinator import CoordinatorRuntime
from topics import MAX_RECORD_BYTES, ConfigurationError, StepKind, TopicCatalog, worker_source

if TYPE_CHECKING:
    from streams._tracing import Tracing

__all__ = ["PROCESSOR_KINDS", "Worker", "build_worker", "processor_kinds"]

#: The step kinds this release has processors for.
PROCESSOR_KINDS = (
    StepKind.llm,
    StepKind.agent,
    StepKind.tool,
    StepKind.retrieve,
    StepKind.transform,
    StepKind.validate,
)


def processor_kinds() -> tuple[str, ...]:
    """Every kind a worker here can run: the built-in ones, then the custom kinds installed.

    Raises:
        ConfigurationError: An installed custom kind cannot be loaded (its entry point).
    """
    return (*PROCESSOR_KINDS, *installed_kinds())


class _Resources(mode.Service):
    """What starts and stops with the worker, besides the Faust agents."""

    def __init__(
        self,
        feed: WorkflowFeed,
        http: httpx.AsyncClient,
        runtime: CoordinatorRuntime | None,
        relay: RetryRelay | None,
        processors: ProcessorService | None,
        cache: KafkaResponseCache | None = None,
        tracing: Tracing | None = None,
        tools: ToolRegistry | None = None,
        sweeper: BlobSweeper | None = None,
    ) -> None:
        super().__init__()
        self.sweeper = sweeper
        self.tracing = tracing
        self.tools = tools
        self._listing: asyncio.Task[None] | None = None
        self.feed = feed
        self.http = http
        self.runtime = runtime
        self.relay = relay
        self.processors = processors
        self.cache = cache

    async def on_start(self) -> None:
        # MCP servers' tools first: the coordinator describes them, processors call them.
        if self.tools is not None and self.tools.mcp is not None:
            await self.tools.start()
            self._listing = asyncio.create_task(self.tools.keep_fresh(), name="mcp listings")
        # The cache first, so processors take their first request with the cache read.
        if self.cache is not None:
            await self.cache.start()
        if self.runtime is not None:
            await self.runtime.start()
            self.feed.on_poison = self.runtime.dead_letter_record
            await self.feed.start()
        if self.relay is not None:
            await self.relay.start()
        if self.processors is not None:
            await self.processors.start()
        if self.sweeper is not None:
            await self.sweeper.start()

    async def on_stop(self) -> None:
        if self.sweeper is not None:
            await self.sweeper.stop()
        # Processors first: the steps in flight finish and report while the coordinator
        # still takes their results.
        if self.processors is not None:
            await self.processors.stop()
        if self.relay is not None:
            await self.relay.stop()
        if self.runtime is not None:
            await self.runtime.stop()
            await self.feed.stop()
        if self.cache is not None:
            await self.cache.stop()
        if self.tools is not None:
            if self._listing is not None:
                self._listing.cancel()
                await asyncio.gather(self._listing, return_exceptions=True)
            await self.tools.aclose()
        await self.http.aclose()
        if self.tracing is not None:
            # The last spans export in the SDK's thread, not on the event loop.
            await asyncio.to_thread(self.tracing.shutdown)


@dataclass
class Worker:
    """A built worker, ready to run.

    Attributes:
        app: The Faust app (HTTP API, lifecycle).
        runtime: The coordinator, if this worker runs one.
        processors: The step processors, if this worker runs any.
        book: The deployed workflows, kept current.
        metrics: The worker's metrics (served at ``/metrics``).
        tracing: The worker's tracing, when on.
    """

    app: faust.App
    runtime: CoordinatorRuntime | None
    processors: ProcessorService | None
    book: WorkflowBook
    metrics: Metrics
    tracing: Tracing | None = None
    loglevel: str = "info"

    def run(self) -> None:
        """Run until stopped by a signal."""
        _quiet_collector()
        worker = faust.Worker(self.app, loglevel=self.loglevel, quiet=True)
        # Faust's terminal spinner sets the root logger to DEBUG (for its own handler) at
        # levels above INFO, which makes every library debug call build a log record.
        worker.spinner = None
        worker.execute_from_commandline()


def _quiet_collector() -> None:
    """Keep the cycle collector from stopping the event loop for 100 ms at a time.

    A worker holds many long-lived objects (modules, compiled workflows and schemas, runs
    in flight); a full collection walks all of them and, measured on a worker with a few
    thousand runs, stopped every partition for 120-150 ms. What exists at start is frozen
    out of the collector's walk, and the young generation is collected less often, so a
    full collection comes far less often; cycles are still freed, later.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def build_worker(
    settings: Settings,
    bootstrap: str,
    *,
    coordinator: bool = True,
    kinds: Iterable[str] | None = None,
    environ: dict[str, str] | None = None,
    tracing: Tracing | None = None,
) -> Worker:
    """Build a worker from the settings.

    Args:
        settings: The validated settings.
        bootstrap: Kafka bootstrap servers.
        coordinator: Run the coordinator (and serve the HTTP API).
        kinds: Step kinds to run processors for, custom ones included (default: every kind
            ``processor_kinds`` lists; empty: none).
        environ: Where provider API keys are read from (default ``os.environ``).
        tracing: Trace runs with this (default: as ``settings.tracing`` says).

    Raises:
        ConfigurationError: A setting is invalid (tracing's ``OTEL_*`` variables included).
    """
    _faust_fixes.apply()
    env = dict(os.environ if environ is None else environ)
    if tracing is None and settings.tracing != "off":
        tracing = _configured_tracing(settings, env)
    catalog: TopicCatalog = settings.catalog()
    codec = settings.codec()
    claims = settings.claims()
    metrics = Metrics()
    book = WorkflowBook()
    feed = WorkflowFeed(bootstrap, catalog, codec, book)
    http = httpx.AsyncClient()
    url = f"http://{settings.web_host}:{settings.web_port}"
    datadir = Path(settings.home) / "workers" / settings.worker_id
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        f"{settings.topic_prefix}-worker",
        broker=[f"kafka://{a.strip()}" for a in bootstrap.split(",") if a.strip()],
        datadir=str(datadir),
        store="memory://",
        autodiscover=False,
        web_enabled=True,  # a processors-only worker serves /healthz and /metrics
        web_bind=settings.web_host,
        web_port=settings.web_port,
        canonical_url=url,
        web_tables_enabled=False,
    )
    # Faust runs no agent here: it serves the API and runs the worker's lifecycle. Without
    # this it would still start a consumer (and its thread) that joins a group for nothing.
    app.producer_only = True
    models = (
        load_model_catalog(settings.models_file)
        if settings.models_file
        else ModelCatalog(routes={})
    )
    # Coordinators describe agents' tools to their models; processors call them.
    tools = load_tools(settings.tools_file, environ=env) if settings.tools_file else None
    runtime = None
    if coordinator:
        access = load_access(settings.access_file, env)
        policies = load_policies(settings.policies_file)
        policies.check_routes(models.routes, settings.policies_file)
        runtime = CoordinatorRuntime(
            bootstrap=bootstrap,
            catalog=catalog,
            feed=feed,
            url=url,
            worker_id=settings.worker_id,
            exactly_once=settings.processing_guarantee == "exactly_once",
            session_timeout=settings.session_timeout,
            commit_interval=settings.commit_interval,
            flush_interval=settings.flush_interval,
            policies=policies,
            access=access,
            webhook=settings.approval_webhook,
            models=models,
            tools=tools,
            metrics=metrics,
            tracing=tracing,
            codec=codec,
            claims=claims,
        )
    processors = None
    cache = None
    chosen = list(processor_kinds() if kinds is None else kinds)
    if chosen:
        calls_models = {StepKind.llm, StepKind.agent} & set(chosen)
        # No cache (no consumer, no producer) when no route's calls could be cached.
        if settings.cache_ttl > 0 and calls_models and _any_cacheable(models):
            cache = KafkaResponseCache(
                bootstrap,
                catalog,
                codec,
                ttl_s=settings.cache_ttl,
                metrics=metrics,
                source=worker_source(settings.worker_id),
                max_entry_bytes=claims.threshold if claims is not None else MAX_RECORD_BYTES,
            )
        custom = {k: v for k, v in installed_kinds().items() if k in chosen}
        built = build_processors(models, http, env, tools, cache=cache, custom=custom)
        _measure_breakers(metrics, built.values())
        processors = ProcessorService(
            bootstrap=bootstrap,
            catalog=catalog,
            codec=codec,
            processors={kind: built[kind] for kind in chosen},
            worker=settings.worker_id,
            instance_id=f"{settings.worker_id}-{settings.web_port}",
            concurrency=settings.processor_concurrency,
            commit_interval=max(settings.commit_interval, 0.5),
            stop_grace=settings.stop_grace,
            session_timeout=settings.session_timeout,
            metrics=metrics,
            tracing=tracing,
            claims=claims,
        )
    if runtime is not None:
        install_api(app, runtime, http, processors.topics if processors else list, metrics)
    elif processors is not None:
        install_processor_api(
            app, load_access(settings.access_file, env), processors.topics, metrics
        )
    relay = (
        RetryRelay(
            bootstrap,
            catalog,
            instance_id=f"{settings.worker_id}-{settings.web_port}",
            session_timeout=settings.session_timeout,
            metrics=metrics,
            source=worker_source(settings.worker_id),
            codec=codec,
        )
        if coordinator
        else None
    )
    sweeper = (
        BlobSweeper(claims.store, settings.run_retention)
        if claims is not None and runtime is not None
        else None
    )
    app.add_dependency(
        _Resources(feed, http, runtime, relay, processors, cache, tracing, tools, sweeper)
    )
    return Worker(
        app=app,
        runtime=runtime,
        processors=processors,
        book=book,
        metrics=metrics,
        tracing=tracing,
    )


def _configured_tracing(settings: Settings, environ: dict[str, str]) -> Tracing | None:
    """Tracing as the settings say; the SDK is imported only when tracing is on."""
    try:
        from streams._tracing import tracing_from
    except ImportError as exc:
        raise ConfigurationError(
            f"invalid configuration: tracing ({settings.tracing}): OpenTelemetry is not "
            f"installed ({exc.name}); pip install 'baton[tracing]'"
        ) from None
    return tracing_from(settings, environ)


def _measure_breakers(metrics: Metrics, processors: Iterable[object]) -> None:
    """Add the state of the model processors' circuit breakers to the metrics."""
    breakers = {
        id(b): b for p in processors if isinstance(b := getattr(p, "breakers", None), Breakers)
    }

    def states() -> list[tuple[tuple[str, ...], float]]:
        figures: list[tuple[tuple[str, ...], float]] = []
        for one in breakers.values():
            for endpoint, state in sorted(one.states().items()):
                figures += [((endpoint, s), float(s == state)) for s in _BREAKER_STATES]
        return figures

    metrics.gauge(
        "baton_circuit_breaker_state",
        "Each provider endpoint's circuit breaker: 1 for the state it is in, 0 for the others.",
        ("endpoint", "state"),
        states,
    )


_BREAKER_STATES = ("closed", "open", "half_open")


def _any_cacheable(models: ModelCatalog) -> bool:
    """Whether any route of the model catalog has calls the response cache may keep."""
    return any(cacheable(route, temperature=0.0) for route in models.routes.values())
