"""The development broker behind ``baton kafka up`` / ``down``: detached, found by its state.

Its data lives in ``<home>/kafka/nodes-<n>/`` and survives ``down``; ``up`` reuses it. The JVMs
run in their own session, so they outlive the command that started them.
"""

from __future__ import annotations

import dataclasses
import shutil
from datetime import UTC, datetime
from pathlib import Path

from streams.localkafka._cluster import DEFAULT_KAFKA_VERSION, LocalKafkaCluster
from streams.localkafka._errors import KafkaStartError
from streams.localkafka._filelock import file_lock
from streams.localkafka._jars import fetch_jars
from streams.localkafka._node import DEFAULT_START_TIMEOUT, BrokerNode
from streams.localkafka._ports import free_ports, port_is_free
from streams.localkafka._process import BrokerProcess, is_kafka_process, stop_processes
from streams.localkafka._state import (
    BrokerState,
    clear_state,
    kafka_home,
    read_state,
    running_broker,
    write_state,
)
from topics import ConfigurationError

__all__ = ["broker_logs", "start_broker", "start_node", "stop_broker", "stop_node"]

# The ports every Kafka tool assumes when nothing else is said.
_PREFERRED_PORTS = (9092, 9093)


def start_broker(
    home: Path,
    *,
    size: int = 1,
    broker_port: int | None = None,
    fresh: bool = False,
    version: str = DEFAULT_KAFKA_VERSION,
    start_timeout: float = DEFAULT_START_TIMEOUT,
    heap: str | None = None,
) -> BrokerState:
    """Make sure the development broker under ``home`` runs, and return its state.

    Does nothing but return the state if it already runs. Otherwise starts ``size`` nodes on
    the data left by the previous run (unless ``fresh``), detached, and records them.

    Args:
        home: baton's home directory (``settings.home``).
        size: Number of nodes (1 or 3).
        broker_port: Client port of the first node (the others take the next ones). By
            default a single node takes 9092 (controller 9093) when both are free, and free
            ports otherwise.
        fresh: Delete the data of the previous run first.
        version: Apache Kafka version.
        start_timeout: Seconds to wait for the nodes to serve metadata.
        heap: JVM maximum heap per node (``1g``); ``None`` for the default.

    Raises:
        ConfigurationError: ``broker_port`` is taken, or ``java``/``mvn`` is missing.
        KafkaStartError: The broker did not start (the message holds its log tail), or an
            earlier broker's processes still run without accepting connections.
    """
    root = kafka_home(home)
    with file_lock(root / ".lock"):
        state = running_broker(home)
        if state is not None:
            return state
        leftover = read_state(home)
        if leftover is not None and leftover.live_pids():
            raise KafkaStartError(
                f"a broker from an earlier `baton kafka up` (pid "
                f"{', '.join(map(str, leftover.live_pids()))}) runs but does not accept "
                f"connections on {leftover.bootstrap}; run `baton kafka down` first"
            )
        directory = root / f"nodes-{size}"
        if fresh:
            shutil.rmtree(directory, ignore_errors=True)
        broker_ports, controller_ports = _choose_ports(size, broker_port)
        cluster = LocalKafkaCluster(
            directory,
            size=size,
            version=version,
            broker_ports=broker_ports,
            controller_ports=controller_ports,
            start_timeout=start_timeout,
            heap=heap,
        )
        cluster.start()
        state = BrokerState(
            pids=cluster.pids,
            bootstrap=cluster.bootstrap,
            version=version,
            data_dirs=tuple(node.data_dir for node in cluster.nodes),
            log_files=tuple(node.log_path for node in cluster.nodes),
            started_at=datetime.now(UTC),
        )
        write_state(home, state)
        return state


def stop_broker(home: Path, timeout: float = 20.0) -> BrokerState | None:
    """Stop the development broker under ``home`` (controlled shutdown) and forget it.

    Returns:
        The state of the broker that was stopped, or ``None`` if none was running.
    """
    with file_lock(kafka_home(home) / ".lock"):
        state = read_state(home)
        if state is None:
            return None
        live = state.live_pids()
        stop_processes([BrokerProcess(pid) for pid in live], timeout)
        clear_state(home)
        return state if live else None


def stop_node(home: Path, node_id: int, *, kill: bool = False, timeout: float = 20.0) -> bool:
    """Stop one node of the development cluster under ``home``; the others keep serving.

    For fault drills: with three nodes the cluster goes on without it, and
    :func:`start_node` brings it back with its data.

    Args:
        home: baton's home directory.
        node_id: The node (1 to the cluster's size).
        kill: SIGKILL it (a crash: nothing flushed, no leadership handed over) instead of a
            controlled shutdown.
        timeout: Seconds a controlled shutdown may take before the node is killed.

    Returns:
        Whether the node was running.

    Raises:
        ConfigurationError: No development broker runs, or it has no such node.
    """
    with file_lock(kafka_home(home) / ".lock"):
        state = _recorded(home, node_id)
        process = BrokerProcess(state.pids[node_id - 1])
        if not is_kafka_process(process.pid):
            return False
        if kill:
            process.kill()
        else:
            stop_processes([process], timeout)
        return True


def start_node(
    home: Path,
    node_id: int,
    *,
    start_timeout: float = DEFAULT_START_TIMEOUT,
    heap: str | None = None,
) -> BrokerState | None:
    """Start a stopped node of the development cluster again, on its ports and its data.

    Returns:
        The state with the node's new pid, or ``None`` if the node was running already.

    Raises:
        ConfigurationError: No development broker runs, or it has no such node.
        KafkaStartError: The node did not start (the message holds its log tail).
    """
    with file_lock(kafka_home(home) / ".lock"):
        state = _recorded(home, node_id)
        if is_kafka_process(state.pids[node_id - 1]):
            return None
        node = BrokerNode(
            state.data_dirs[node_id - 1].parent, node_id, heap=heap, start_timeout=start_timeout
        )
        node.reuse_configuration(fetch_jars(state.version))
        node.start()
        assert node.pid is not None, "a node that started has a pid"
        pids = tuple(node.pid if i == node_id - 1 else p for i, p in enumerate(state.pids))
        state = dataclasses.replace(state, pids=pids)
        write_state(home, state)
        return state


def _recorded(home: Path, node_id: int) -> BrokerState:
    """The recorded development broker, if it has ``node_id`` and some node still runs."""
    state = read_state(home)
    if state is None or not state.live_pids():
        raise ConfigurationError("Kafka is not running: start it with `baton kafka up`")
    if not 1 <= node_id <= len(state.pids):
        raise ConfigurationError(
            f"there is no node {node_id}: the local cluster has "
            f"{len(state.pids)} node{'s' if len(state.pids) > 1 else ''}"
        )
    return state


def broker_logs(home: Path) -> list[Path]:
    """The ``broker.log`` of each node of the running broker, else of the latest one."""
    state = read_state(home)
    if state is not None:
        return list(state.log_files)
    logs = sorted(kafka_home(home).glob("nodes-*/node-*/broker.log"))
    if not logs:
        return []
    latest = max(logs, key=lambda p: p.stat().st_mtime).parent.parent
    return [p for p in logs if p.parent.parent == latest]


def _choose_ports(
    size: int, broker_port: int | None
) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    """Broker and controller ports for ``start_broker``; ``None`` lets the cluster pick."""
    if broker_port is None:
        if size == 1 and all(port_is_free(p) for p in _PREFERRED_PORTS):
            return (_PREFERRED_PORTS[0],), (_PREFERRED_PORTS[1],)
        return None, None
    brokers = tuple(range(broker_port, broker_port + size))
    if brokers[-1] > 65535:
        raise ConfigurationError(f"--port {broker_port} leaves no room for {size} brokers")
    taken = [p for p in brokers if not port_is_free(p)]
    if taken:
        raise ConfigurationError(
            f"port {taken[0]} is in use; choose another --port or leave it out for free ports"
        )
    return brokers, tuple(p for p in free_ports(size + len(brokers)) if p not in brokers)[:size]
