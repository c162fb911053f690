"""``baton kafka fetch|up|down|status|logs|stop-node|start-node``: the local development broker.

A real Apache Kafka (KRaft, from Maven Central jars) runs detached under baton's home; other
baton commands find it on their own through the state file ``up`` writes. ``stop-node`` and
``start-node`` take one node of a three-node cluster down and back, for fault drills.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import click
from rich.markup import escape
from rich.table import Table

from streams.cli._main import console, err_console, settings
from streams.localkafka import (
    KafkaStartError,
    cached_jars,
    fetch_jars,
    kafka_home,
    live_brokers,
    read_state,
    running_broker,
    start_broker,
    start_node,
    stop_broker,
    stop_node,
)
from streams.localkafka import broker_logs as find_broker_logs
from topics import ConfigurationError

__all__ = ["kafka"]


@click.group("kafka")
def kafka() -> None:
    """Run a local Apache Kafka for development and tests (no Docker needed)."""


@kafka.command("fetch")
def fetch() -> None:
    """Download the broker's jars from Maven Central into the cache (once)."""
    version = settings().kafka_version
    _fetch(version)


@kafka.command("up")
@click.option(
    "--nodes",
    type=click.Choice(["1", "3"]),
    default="1",
    show_default=True,
    help="Brokers to run (3 survives losing one).",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Client port of the first broker [default: 9092 if free, else a free port].",
)
@click.option("--fresh", is_flag=True, help="Delete the data of the previous run first.")
def up(nodes: str, port: int | None, fresh: bool) -> None:
    """Start the local broker in the background (data persists across down/up)."""
    config = settings()
    running = running_broker(config.home)
    if running is not None:
        say(
            f"Kafka {running.version} is already running at [bold]{running.bootstrap}[/] "
            f"(pid {_pids(running.pids)})."
        )
        return
    _fetch(config.kafka_version, quiet_when_cached=True)
    size = int(nodes)
    try:
        with console.status(f"Starting Kafka {config.kafka_version} ({_nodes(size)})..."):
            state = start_broker(
                config.home,
                size=size,
                broker_port=port,
                fresh=fresh,
                version=config.kafka_version,
                heap=config.kafka_heap,
            )
    except KafkaStartError as exc:
        err_console.print("[bold red]error:[/] Kafka did not start.", highlight=False)
        err_console.print(escape(str(exc)), highlight=False, soft_wrap=True)
        sys.exit(1)
    say(
        f"Kafka {state.version} is up at [bold]{state.bootstrap}[/] "
        f"({_nodes(size)}, pid {_pids(state.pids)})."
    )
    say("baton commands find it on their own; for other tools (or another BATON_HOME):")
    say(f"  export BATON_BOOTSTRAP={state.bootstrap}")
    say(
        f"Data: {escape(str(state.data_dirs[0].parent.parent))} (kept by `baton kafka down`, "
        "wiped by `baton kafka up --fresh`). Stop it with `baton kafka down`."
    )
    if config.bootstrap:
        say(
            f"[yellow]note:[/] BATON_BOOTSTRAP is set ({escape(config.bootstrap)}), so baton "
            "commands use that cluster, not this broker."
        )


@kafka.command("down")
def down() -> None:
    """Stop the local broker (controlled shutdown); its data is kept."""
    home = settings().home
    with console.status("Stopping Kafka..."):
        stopped = stop_broker(home)
    if stopped is None:
        say("Kafka is not running.")
    else:
        say(f"Kafka stopped (was at {stopped.bootstrap}, pid {_pids(stopped.pids)}).")


@kafka.command("stop-node")
@click.argument("node_id", metavar="NODE", type=click.IntRange(min=1))
@click.option("--kill", is_flag=True, help="SIGKILL it (a crash) instead of a controlled shutdown.")
def stop_node_command(node_id: int, kill: bool) -> None:
    """Stop one node of the local cluster (1, 2 or 3); the others keep serving."""
    home = settings().home
    try:
        with console.status(f"{'Killing' if kill else 'Stopping'} Kafka node {node_id}..."):
            was_running = stop_node(home, node_id, kill=kill)
    except ConfigurationError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(1)
    if not was_running:
        say(f"Kafka node {node_id} is not running.")
    else:
        say(
            f"Kafka node {node_id} {'killed' if kill else 'stopped'}; start it again with "
            f"`baton kafka start-node {node_id}`."
        )


@kafka.command("start-node")
@click.argument("node_id", metavar="NODE", type=click.IntRange(min=1))
def start_node_command(node_id: int) -> None:
    """Start a stopped node of the local cluster again, with its data and ports."""
    config = settings()
    try:
        with console.status(f"Starting Kafka node {node_id}..."):
            state = start_node(config.home, node_id, heap=config.kafka_heap)
    except ConfigurationError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(1)
    except KafkaStartError as exc:
        err_console.print(f"[bold red]error:[/] Kafka node {node_id} did not start.")
        err_console.print(escape(str(exc)), highlight=False, soft_wrap=True)
        sys.exit(1)
    if state is None:
        say(f"Kafka node {node_id} is already running.")
    else:
        say(f"Kafka node {node_id} is up again (pid {state.pids[node_id - 1]}).")


@kafka.command("status")
def status() -> None:
    """Say whether the local broker runs, where, and for how long."""
    home = settings().home
    state = running_broker(home)
    if state is None:
        leftover = read_state(home)
        if leftover is not None and leftover.live_pids():
            say(
                f"Kafka is not answering: pid {_pids(leftover.live_pids())} runs but nothing "
                f"accepts connections on {leftover.bootstrap}. See `baton kafka logs`."
            )
        else:
            say(f"Kafka is not running (home {escape(str(home))}).")
        return
    try:
        brokers = live_brokers(state.bootstrap)
        seen = f"{len(brokers)} (node ids {', '.join(map(str, brokers))})"
    except ConnectionError:
        seen = "[red]no metadata answer[/]"
    table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    table.add_row("status", "[green]running[/]")
    table.add_row("pid", _pids(state.live_pids()))
    stopped = [str(n) for n, pid in enumerate(state.pids, 1) if pid not in state.live_pids()]
    if stopped:
        table.add_row("stopped", f"[yellow]node {', '.join(stopped)}[/]")
    table.add_row("bootstrap", state.bootstrap)
    table.add_row("version", state.version)
    table.add_row("brokers", seen)
    table.add_row("uptime", _duration(state.uptime(datetime.now(UTC))))
    table.add_row("data", escape(str(kafka_home(home))))
    say(f"Kafka {state.version} is running.")
    console.print(table, highlight=False)


@kafka.command("logs")
@click.option("-n", "--lines", type=click.IntRange(min=1), default=40, show_default=True)
def logs(lines: int) -> None:
    """Print the end of the broker log (each node's, for a cluster)."""
    home = settings().home
    files = find_broker_logs(home)
    if not files:
        say(f"No broker log under {escape(str(kafka_home(home)))}.")
        return
    for path in files:
        if len(files) > 1:
            say(f"[bold]==> {escape(str(path))} <==[/]")
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            continue
        tail = text.splitlines()[-lines:]
        if tail:
            console.out("\n".join(tail), highlight=False)


def _fetch(version: str, *, quiet_when_cached: bool = False) -> None:
    cached = cached_jars(version)
    if cached is not None:
        if not quiet_when_cached:
            say(f"Kafka {version} jars are cached in {escape(str(cached))}.")
        return
    with console.status(f"Fetching Kafka {version} jars from Maven Central..."):
        libs = fetch_jars(version)
    say(f"Fetched Kafka {version} jars into {escape(str(libs))}.")


def say(markup: str) -> None:
    """Print one message; long lines run on rather than break inside paths and addresses."""
    console.print(markup, highlight=False, soft_wrap=True)


def _nodes(size: int) -> str:
    return "1 node" if size == 1 else f"{size} nodes"


def _pids(pids: tuple[int, ...]) -> str:
    return ", ".join(map(str, pids)) or "-"


def _duration(seconds: float) -> str:
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"
