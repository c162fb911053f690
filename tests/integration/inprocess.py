"""A whole worker (coordinator and every processor) in the test's own process.

For tests that need to reach inside a worker (a tracer with an in-memory exporter, a handler
that fails on purpose) while it runs against the real broker.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from aiokafka import AIOKafkaProducer

from processors import build_processors, load_model_catalog, load_tools
from streams._processing import ProcessorService
from streams._tracing import Tracing
from streams._workflows import WorkflowBook, WorkflowFeed
from streams.coordinator import CoordinatorRuntime
from tests.integration.workers import CODEC, Cluster, free_port
from topics import TaskSubmitted, partition_for

#: One free scripted route, for tests that need runs to flow and nothing else.
SCRIPTED_MODELS = """
routes:
  quick:
    provider: scripted
    model: scripted-quick
    script:
      - reply: "an answer to {{ prompt }}"
"""

#: One llm step on that route: ``steady-<n>`` runs of it.
STEADY = """
workflow: steady
version: 1
steps:
  ask: {kind: llm, model: quick, prompt: "question {{ input.n }}"}
output: {n: "{{ input.n }}", answer: "{{ steps.ask.output }}"}
"""


def steady_cluster(bootstrap: str, prefix: str, tmp_path: Path, workflow: str = STEADY) -> Cluster:
    """A cluster with the scripted route and ``workflow`` (named ``steady``) deployed."""
    models = tmp_path / "models.yaml"
    models.write_text(SCRIPTED_MODELS)
    cluster = Cluster(bootstrap, prefix, tmp_path / "home", models_file=models)
    cluster.deploy(steady=workflow)
    return cluster


async def publish_steady(cluster: Cluster, runs: int) -> None:
    """Publish tasks ``steady-0`` .. ``steady-<runs - 1>``, each to its run's partition."""
    producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap, acks="all")
    await producer.start()
    try:
        for n in range(runs):
            run_id = f"steady-{n}"
            task = TaskSubmitted(task_id=run_id, workflow="steady", input={"n": n})
            await producer.send(
                cluster.catalog.tasks.name,
                CODEC.encode(task),
                key=run_id.encode(),
                partition=partition_for(run_id, cluster.catalog.partitions),
            )
        await producer.flush()
    finally:
        await producer.stop()


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
