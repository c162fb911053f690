"""Local Kafka clusters: one node for development and most tests, three for fault tests."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from streams.localkafka._errors import KafkaStartError
from streams.localkafka._jars import fetch_jars
from streams.localkafka._node import (
    DEFAULT_START_TIMEOUT,
    DEFAULT_STOP_TIMEOUT,
    BrokerNode,
    stop_nodes,
    wait_until_ready,
)
from streams.localkafka._ports import free_ports
from streams.localkafka._properties import (
    NodeSpec,
    new_cluster_id,
    read_cluster_id,
    server_properties,
)

__all__ = ["DEFAULT_KAFKA_VERSION", "LocalKafka", "LocalKafkaCluster"]

DEFAULT_KAFKA_VERSION = "3.9.1"
# Free ports are chosen before the JVM binds them; another process may win the race.
_PORT_ATTEMPTS = 3


class LocalKafkaCluster:
    """A KRaft cluster of ``size`` nodes on 127.0.0.1, each broker and controller at once.

    Every node is a voter of a static quorum, so a three-node cluster survives losing one.
    Internal topics get ``min(3, size)`` replicas; with three, ``min.insync.replicas=2``.
    Storage under ``directory`` is formatted once and reused: ``start()`` after ``stop()``
    (or on a directory a previous cluster left behind) brings back the same cluster and data.

    Args:
        directory: Holds one ``node-<id>`` directory per node.
        size: Number of nodes.
        version: Apache Kafka version (its jars are fetched on first use).
        broker_ports: One client port per node; free ports by default.
        controller_ports: One controller port per node; free ports by default.
        overrides: Broker settings added to (or replacing) the generated ones on every node.
        heap: JVM maximum heap per node, e.g. ``"1g"``; default 512m.
        cache_dir: Where the jars are cached (see :func:`~streams.localkafka.fetch_jars`).
        start_timeout: Seconds to wait for the nodes to serve metadata.
        stop_timeout: Seconds to wait for a controlled shutdown before SIGKILL.
    """

    def __init__(
        self,
        directory: Path,
        *,
        size: int = 3,
        version: str = DEFAULT_KAFKA_VERSION,
        broker_ports: Sequence[int] | None = None,
        controller_ports: Sequence[int] | None = None,
        overrides: Mapping[str, str] | None = None,
        heap: str | None = None,
        cache_dir: Path | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
    ) -> None:
        if size < 1:
            raise ValueError(f"a cluster needs at least one node, not {size}")
        for name, ports in (("broker_ports", broker_ports), ("controller_ports", controller_ports)):
            if ports is not None and len(ports) != size:
                raise ValueError(f"{name} needs {size} ports, got {len(ports)}")
        self.directory = directory
        self.version = version
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.nodes = tuple(
            BrokerNode(
                directory / f"node-{node_id}",
                node_id,
                heap=heap,
                start_timeout=start_timeout,
                stop_timeout=stop_timeout,
            )
            for node_id in range(1, size + 1)
        )
        self._broker_ports = tuple(broker_ports) if broker_ports is not None else None
        self._controller_ports = tuple(controller_ports) if controller_ports is not None else None
        self._overrides = dict(overrides or {})
        self._cache_dir = cache_dir
        self._specs: tuple[NodeSpec, ...] | None = None
        # True until the first successful start: only then may lost port races re-pick ports.
        self._ports_provisional = True

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.directory} nodes={len(self.nodes)}>"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def bootstrap(self) -> str:
        """Comma-separated ``host:port`` of every node's broker listener."""
        return ",".join(node.bootstrap for node in self.nodes)

    @property
    def cluster_id(self) -> str | None:
        """The cluster id the storage is formatted with, ``None`` before the first start."""
        for node in self.nodes:
            found = read_cluster_id(node.data_dir)
            if found is not None:
                return found
        return None

    @property
    def pids(self) -> tuple[int, ...]:
        """Pids of the running nodes."""
        return tuple(node.pid for node in self.nodes if node.pid is not None)

    @property
    def running(self) -> bool:
        """Whether any node's JVM is running."""
        return any(node.running for node in self.nodes)

    def start(self) -> None:
        """Start every node that is not running, in parallel, and wait until all are ready.

        Fetches the jars and formats the storage first if needed. On failure the nodes this
        call started are killed again.

        Raises:
            ConfigurationError: ``java`` or ``mvn`` is missing, or the heap setting is invalid.
            KafkaStartError: A node failed to format or start; the message holds its log tail.
        """
        if all(node.running for node in self.nodes):
            return
        libs = fetch_jars(self.version, self._cache_dir)
        cluster_id = self._cluster_id_to_format()
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            launched = [node for node in self.nodes if not node.running]
            self._configure(libs, new_ports=attempt > 1)
            self._format(cluster_id)
            try:
                for node in launched:
                    node.launch()
                wait_until_ready(self.nodes, self.start_timeout)
            except KafkaStartError as exc:
                for node in launched:
                    node.kill()
                if attempt < _PORT_ATTEMPTS and self._may_retry_ports(launched, exc):
                    continue
                raise
            except BaseException:
                for node in launched:
                    node.kill()
                raise
            self._ports_provisional = False
            return

    def stop(self) -> None:
        """Stop every node: SIGTERM at once, SIGKILL whatever still runs after the timeout."""
        stop_nodes(self.nodes, self.stop_timeout)

    def kill(self) -> None:
        """SIGKILL every node."""
        for node in self.nodes:
            node.kill()

    def _cluster_id_to_format(self) -> str:
        found = {cid for node in self.nodes if (cid := read_cluster_id(node.data_dir)) is not None}
        if len(found) > 1:
            raise KafkaStartError(
                f"the nodes under {self.directory} belong to different clusters "
                f"({', '.join(sorted(str(f) for f in found))}); delete it to start afresh"
            )
        return found.pop() if found else new_cluster_id()

    def _configure(self, libs: Path, *, new_ports: bool) -> None:
        if self._specs is None or new_ports:
            self._specs = self._choose_specs()
        for node, spec in zip(self.nodes, self._specs, strict=True):
            properties = server_properties(spec, self._specs, node.data_dir, self._overrides)
            node.configure(spec, properties, libs)

    def _choose_specs(self) -> tuple[NodeSpec, ...]:
        size = len(self.nodes)
        fixed = set(self._broker_ports or ()) | set(self._controller_ports or ())
        wanted = (self._broker_ports is None) * size + (self._controller_ports is None) * size
        free = iter([p for p in free_ports(wanted + len(fixed)) if p not in fixed][:wanted])
        brokers = self._broker_ports or tuple(next(free) for _ in range(size))
        controllers = self._controller_ports or tuple(next(free) for _ in range(size))
        return tuple(
            NodeSpec(node.node_id, broker_port, controller_port)
            for node, broker_port, controller_port in zip(
                self.nodes, brokers, controllers, strict=True
            )
        )

    def _format(self, cluster_id: str) -> None:
        unformatted = [node for node in self.nodes if not node.formatted]
        if len(unformatted) <= 1:
            for node in unformatted:
                node.format(cluster_id)
            return
        # Each format is a JVM start of its own; in parallel they cost one.
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(unformatted)) as pool:
            for future in [pool.submit(node.format, cluster_id) for node in unformatted]:
                future.result()

    def _may_retry_ports(self, launched: Sequence[BrokerNode], exc: KafkaStartError) -> bool:
        """Whether ``exc`` is a lost race for a port we chose, fixable with other ports."""
        chose_all = self._broker_ports is None and self._controller_ports is None
        everything_relaunched = len(launched) == len(self.nodes)
        lost_race = "Address already in use" in exc.log_tail or "BindException" in exc.log_tail
        return self._ports_provisional and chose_all and everything_relaunched and lost_race


class LocalKafka(LocalKafkaCluster):
    """A single-node local Kafka: the development broker and the shared test broker.

    Args:
        directory: Holds the node's directory (``node-1``).
        version: Apache Kafka version.
        broker_port: Client port; a free port by default.
        controller_port: Controller port; a free port by default.
        overrides: Broker settings added to (or replacing) the generated ones.
        heap: JVM maximum heap, e.g. ``"1g"``; default 512m.
        cache_dir: Where the jars are cached.
        start_timeout: Seconds to wait for the node to serve metadata.
        stop_timeout: Seconds to wait for a controlled shutdown before SIGKILL.
    """

    def __init__(
        self,
        directory: Path,
        *,
        version: str = DEFAULT_KAFKA_VERSION,
        broker_port: int | None = None,
        controller_port: int | None = None,
        overrides: Mapping[str, str] | None = None,
        heap: str | None = None,
        cache_dir: Path | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
    ) -> None:
        super().__init__(
            directory,
            size=1,
            version=version,
            broker_ports=None if broker_port is None else (broker_port,),
            controller_ports=None if controller_port is None else (controller_port,),
            overrides=overrides,
            heap=heap,
            cache_dir=cache_dir,
            start_timeout=start_timeout,
            stop_timeout=stop_timeout,
        )

    @property
    def node(self) -> BrokerNode:
        """The one node."""
        return self.nodes[0]
