"""A whole worker (coordinator and every processor) in the test's own process.

For tests that need to reach inside a worker (a tracer with an in-memory exporter, a handler
that fails on purpose) while it runs against the real broker.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from processors import build_processors, load_model_catalog, load_tools
from streams._processing import ProcessorService
from streams._tracing import Tracing
from streams._workflows import WorkflowBook, WorkflowFeed
from streams.coordinator import CoordinatorRuntime
from tests.integration.workers import CODEC, Cluster, free_port


@asynccontextmanager
async def in_process_worker(
    cluster: Cluster, tracing: Tracing | None = None, *, exactly_once: bool = True
) -> AsyncIterator[CoordinatorRuntime]:
    """A coordinator and every processor of ``cluster``, in this process (``tracing``: traced)."""
    env = cluster.env()
    catalog = cluster.catalog
    feed = WorkflowFeed(cluster.bootstrap, catalog, CODEC, WorkflowBook())
    models = load_model_catalog(Path(env["BATON_MODELS_FILE"]))
    tools_file = env.get("BATON_TOOLS_FILE")
    tools = load_tools(Path(tools_file)) if tools_file else None
    http = httpx.AsyncClient()
    runtime = CoordinatorRuntime(
        bootstrap=cluster.bootstrap,
        catalog=catalog,
        feed=feed,
        url=f"http://127.0.0.1:{free_port()}",
        worker_id="in-process",
        exactly_once=exactly_once,
        models=models,
        tools=tools,
        tracing=tracing,
    )
    processors = ProcessorService(
        bootstrap=cluster.bootstrap,
        catalog=catalog,
        codec=CODEC,
        processors=build_processors(models, http, {}, tools),
        worker="in-process",
        instance_id=None,
        concurrency=16,
        tracing=tracing,
    )
    await runtime.start()
    feed.on_poison = runtime.dead_letter_record
    await feed.start()
    await processors.start()
    try:
        yield runtime
    finally:
        await processors.stop()
        await runtime.stop()
        await feed.stop()
        await http.aclose()
        if tracing is not None:
            tracing.shutdown()
