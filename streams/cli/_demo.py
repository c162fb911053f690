"""``baton demo``: the example workflow end to end on a real broker, as a newcomer sees it."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import click
import httpx
from rich.table import Table

from streams._client import BatonClient
from streams._config import Settings
from streams.cli._main import console, err_console, settings
from streams.cli._runs import print_result
from streams.localkafka import resolve_bootstrap, running_broker, start_broker
from topics import ConfigurationError, RetryableError, RunResult, TaskSubmitted, create_topics

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _models_file(workdir: Path) -> tuple[Path, str]:
    """The model catalog: a real OpenAI-compatible endpoint when a key is set, else scripted."""
    if not os.environ.get("OPENAI_API_KEY"):
        return (
            EXAMPLES / "models.yaml",
            "the built-in scripted model (set OPENAI_API_KEY for a real one)",
        )
    base_url = os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1")
    fast = os.environ.get("BATON_DEMO_FAST_MODEL", "gpt-4o-mini")
    strong = os.environ.get("BATON_DEMO_STRONG_MODEL", "gpt-4o")
    path = workdir / "models.yaml"
    path.write_text(
        "routes:\n"
        + "".join(
            f"  {route}:\n    provider: openai\n    model: {model}\n"
            f"    base_url: {json.dumps(base_url)}\n    api_key_env: OPENAI_API_KEY\n"
            for route, model in (("fast", fast), ("strong", strong))
        )
    )
    return path, f"{fast} and {strong} at {base_url}"


def _access(workdir: Path, env: dict[str, str]) -> str | None:
    """An access file for the demo's worker when none is set: one principal, ``demo``.

    Returns its fresh token (for ``BATON_TOKEN``), or ``None`` when the caller brought an
    access file of their own.
    """
    if env.get("BATON_ACCESS_FILE"):
        return None
    token = secrets.token_urlsafe(24)
    path = workdir / "access.yaml"
    path.write_text('principals:\n  demo: {token_env: BATON_DEMO_TOKEN, tenants: "*"}\n')
    env.update(BATON_ACCESS_FILE=str(path), BATON_DEMO_TOKEN=token)
    return token


def _bootstrap(config: Settings) -> str:
    if config.bootstrap or running_broker(config.home) is not None:
        return resolve_bootstrap(config)
    with console.status(
        f"Starting Kafka {config.kafka_version} (first time: fetching its jars)..."
    ):
        state = start_broker(config.home, version=config.kafka_version, heap=config.kafka_heap)
    console.print(f"Kafka is up at [bold]{state.bootstrap}[/] (stop it with `baton kafka down`)")
    return state.bootstrap


def _wait_ready(api: str, worker: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            raise RetryableError(f"the worker exited ({worker.returncode}):\n{tail}")
        try:
            health = httpx.get(f"{api}/healthz", timeout=1).json()
            if health.get("partitions") and health.get("processing"):
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.3)
    raise RetryableError(f"the worker was not ready after {timeout:g}s; see {log}")


@click.command("demo")
@click.option("--count", default=12, show_default=True, help="Tickets to submit.")
@click.option("--keep", is_flag=True, help="Leave the worker running afterwards.")
def demo(count: int, keep: bool) -> None:
    """Run the support-triage example end to end: broker, worker, deploy, submit, results."""
    if not (EXAMPLES / "support-triage.yaml").exists():
        raise ConfigurationError("baton demo runs from a source checkout (examples/ not found)")
    config = settings()
    bootstrap = _bootstrap(config)
    asyncio.run(create_topics(bootstrap, config.catalog(), config.replication_factor))
    workdir = Path(tempfile.mkdtemp(prefix="baton-demo-"))
    models, model_note = _models_file(workdir)
    log = workdir / "worker.log"
    env = {**os.environ, "BATON_BOOTSTRAP": bootstrap, "BATON_MODELS_FILE": str(models)}
    token = _access(workdir, env)
    console.print(f"Starting a worker (model: {model_note}); its log: {log}")
    with log.open("ab") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker"], env=env, stdout=out, stderr=out
        )
    try:
        _wait_ready(config.api, worker, log)
        deployed = subprocess.run(
            [
                sys.executable,
                "-m",
                "streams.cli",
                "workflows",
                "deploy",
                str(EXAMPLES / "support-triage.yaml"),
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        if deployed.returncode != 0:
            raise ConfigurationError(deployed.stderr.strip())
        console.print(deployed.stdout.strip())
        results = asyncio.run(_run(bootstrap, config, count))
        _summary(results)
        console.print(
            "\nInspect a run with [bold]baton runs show <run id>[/] while a worker runs "
            "(`baton worker`, or `baton demo --keep`); stop Kafka with [bold]baton kafka down[/]."
        )
        if keep and token is not None:
            console.print(f"The API takes the demo's token: export BATON_TOKEN={token}")
    finally:
        if keep and worker.poll() is None:
            console.print(
                f"The worker keeps running (pid {worker.pid}); stop it with kill {worker.pid}."
            )
        else:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()


async def _run(bootstrap: str, config: Settings, count: int) -> list[RunResult]:
    lines = (EXAMPLES / "tickets.jsonl").read_text().splitlines()
    batch = uuid.uuid4().hex[:6]
    tasks = [
        TaskSubmitted(
            task_id=f"demo-{batch}-{i + 1:03d}",
            workflow="support-triage",
            input=json.loads(lines[i % len(lines)]),
        )
        for i in range(count)
    ]
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    async with BatonClient(bootstrap, config.catalog(), codec=config.codec()) as client:
        started = time.monotonic()
        await client.send(tasks)
        with Progress(
            TextColumn("runs"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            bar = progress.add_task("runs", total=len(tasks))
            results = await client.wait(
                [t.task_id for t in tasks], 120, lambda _: progress.advance(bar)
            )
        elapsed = time.monotonic() - started
    ordered = [results[t.task_id] for t in tasks if t.task_id in results]
    for result in ordered:
        print_result(result)
    console.print(f"\n{len(ordered)} of {len(tasks)} runs finished in {elapsed:.2f}s")
    if len(ordered) < len(tasks):
        err_console.print("[red]some runs did not finish in time[/]")
    return ordered


def _summary(results: list[RunResult]) -> None:
    table = Table(title="by outcome", title_justify="left")
    for column in ("status", "runs", "tokens", "cost (USD)"):
        table.add_column(column)
    by_status: dict[str, list[RunResult]] = {}
    for result in results:
        by_status.setdefault(result.status.value, []).append(result)
    for status, group in sorted(by_status.items()):
        tokens = sum(r.usage.input_tokens + r.usage.output_tokens for r in group)
        cost = sum((r.usage.cost_usd for r in group), start=type(group[0].usage.cost_usd)(0))
        table.add_row(status, str(len(group)), str(tokens), f"{cost.normalize():f}")
    console.print(table)
