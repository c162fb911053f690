"""One broker JVM of a local cluster: its directory, its storage, its process."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from streams.localkafka._errors import KafkaStartError
from streams.localkafka._jars import require_tool
from streams.localkafka._metadata import live_brokers
from streams.localkafka._ports import port_accepts
from streams.localkafka._process import BrokerProcess, stop_processes
from streams.localkafka._properties import (
    NodeSpec,
    read_cluster_id,
    read_node_spec,
    render_properties,
)
from topics import ConfigurationError

__all__ = [
    "DEFAULT_START_TIMEOUT",
    "DEFAULT_STOP_TIMEOUT",
    "BrokerNode",
    "stop_nodes",
    "wait_until_ready",
]

DEFAULT_START_TIMEOUT = 60.0
DEFAULT_STOP_TIMEOUT = 20.0
LOG_TAIL_LINES = 40
_DEFAULT_HEAP = ("-Xms256m", "-Xmx512m")
_HEAP_SIZE = re.compile(r"^[1-9][0-9]*[kKmMgG]?$")
_FORMAT_TIMEOUT = 120.0
_POLL = 0.2


class BrokerNode:
    """A node (broker and controller in one JVM) living in ``directory``.

    The directory holds ``server.properties``, ``log4j.properties``, the data (``data/``) and
    ``broker.log`` (the JVM's stdout and stderr). Storage is formatted once; starting again
    on a formatted directory restarts the same node with the same data.

    Nodes are made by :class:`~streams.localkafka.LocalKafkaCluster`, which assigns their
    ports; ``start()``/``stop()``/``kill()`` on a single node are for fault tests.

    Args:
        directory: The node's own directory (created if missing).
        node_id: Kafka ``node.id``.
        heap: JVM maximum heap such as ``"1g"``; ``None`` falls
            back to ``-Xms256m -Xmx512m``.

    Raises:
        ConfigurationError: The heap size is not a size such as ``512m``.
        start_timeout: Seconds :meth:`start` waits for the node to serve metadata.
        stop_timeout: Seconds :meth:`stop` waits for a controlled shutdown before SIGKILL.
    """

    def __init__(
        self,
        directory: Path,
        node_id: int,
        *,
        heap: str | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
    ) -> None:
        self.directory = directory
        self.node_id = node_id
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._heap_options = _heap_options(heap)
        self._spec: NodeSpec | None = None
        self._libs: Path | None = None
        self._process: BrokerProcess | None = None
        self._log_offset = 0

    def __repr__(self) -> str:
        return f"<BrokerNode {self.node_id} {self.directory} pid={self.pid}>"

    @property
    def data_dir(self) -> Path:
        """The node's ``log.dirs``."""
        return self.directory / "data"

    @property
    def log_path(self) -> Path:
        """The JVM's stdout and stderr (appended to across restarts)."""
        return self.directory / "broker.log"

    @property
    def properties_path(self) -> Path:
        """The node's ``server.properties``."""
        return self.directory / "server.properties"

    @property
    def spec(self) -> NodeSpec:
        """The node's listeners.

        Raises:
            RuntimeError: The cluster has not configured the node yet (it was never started).
        """
        if self._spec is None:
            raise RuntimeError(f"Kafka node {self.node_id} has no ports yet: start the cluster")
        return self._spec

    @property
    def bootstrap(self) -> str:
        """``host:port`` of the node's broker listener."""
        return self.spec.bootstrap

    @property
    def pid(self) -> int | None:
        """The JVM's pid while it runs, else ``None``."""
        return self._process.pid if self._process is not None and self.running else None

    @property
    def running(self) -> bool:
        """Whether the JVM is running (not necessarily ready)."""
        return self._process is not None and self._process.running()

    @property
    def exit_status(self) -> int | None:
        """How the last JVM ended (negative: by that signal); ``None`` while it runs."""
        return self._process.returncode if self._process is not None else None

    @property
    def formatted(self) -> bool:
        """Whether the data directory is formatted (holds ``meta.properties``)."""
        return read_cluster_id(self.data_dir) is not None

    def configure(self, spec: NodeSpec, properties: Mapping[str, str], libs: Path) -> None:
        """Write the node's configuration; takes effect at the next launch."""
        self._spec = spec
        self._libs = libs
        self.directory.mkdir(parents=True, exist_ok=True)
        self.properties_path.write_text(render_properties(properties), encoding="utf-8")
        log4j = resources.files("streams.localkafka").joinpath("log4j.properties")
        (self.directory / "log4j.properties").write_bytes(log4j.read_bytes())

    def reuse_configuration(self, libs: Path) -> None:
        """Take the node's listeners from the ``server.properties`` already in its directory.

        For starting one node of a cluster that another process configured and launched
        (``baton kafka start-node``); the file is left as it is.

        Raises:
            KafkaStartError: The directory holds no readable ``server.properties``.
        """
        try:
            spec = read_node_spec(self.properties_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise KafkaStartError(
                f"Kafka node {self.node_id} has no usable configuration in {self.directory}: {exc}"
            ) from exc
        if spec.node_id != self.node_id:
            raise KafkaStartError(
                f"{self.properties_path} is the configuration of node {spec.node_id}, "
                f"not {self.node_id}"
            )
        self._spec = spec
        self._libs = libs

    def format(self, cluster_id: str) -> None:
        """Format the data directory for ``cluster_id`` unless it is formatted already.

        Raises:
            KafkaStartError: The storage tool failed (the message holds its output).
        """
        if self.formatted:
            return
        command = [
            *self._java_command(("-Xms64m", "-Xmx256m")),
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            cluster_id,
            "--config",
            str(self.properties_path),
        ]
        try:
            done = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=_FORMAT_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise KafkaStartError(
                f"formatting the storage of Kafka node {self.node_id} timed out"
            ) from exc
        if done.returncode != 0:
            output = (done.stdout + done.stderr).strip().splitlines()
            raise KafkaStartError(
                f"formatting the storage of Kafka node {self.node_id} in {self.data_dir} failed "
                f"(exit status {done.returncode})",
                log_tail="\n".join(output[-LOG_TAIL_LINES:]),
            )

    def launch(self) -> None:
        """Start the JVM without waiting for it to be ready (see :func:`wait_until_ready`)."""
        if self.running:
            return
        command = [
            *self._java_command(self._heap_options),
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-XX:ErrorFile={self.directory / 'hs_err_pid%p.log'}",
            "kafka.Kafka",
            str(self.properties_path),
        ]
        with self.log_path.open("a", encoding="utf-8") as log:
            log.write(f"--- baton: starting Kafka node {self.node_id} at {_now()} ---\n")
            self._log_offset = log.tell()
        self._process = BrokerProcess.spawn(command, log_path=self.log_path)

    def start(self) -> None:
        """Start the (configured) node again and wait until it serves metadata.

        Raises:
            KafkaStartError: It exited or was not ready within ``start_timeout``.
        """
        self.launch()
        try:
            wait_until_ready([self], self.start_timeout)
        except KafkaStartError:
            self.kill()
            raise

    def stop(self) -> None:
        """SIGTERM (controlled shutdown), then SIGKILL after ``stop_timeout`` seconds."""
        if self._process is not None:
            stop_processes([self._process], self.stop_timeout)

    def kill(self) -> None:
        """SIGKILL the JVM: a crash, for fault tests."""
        if self._process is not None:
            self._process.kill()

    def answers(self, timeout: float = 5.0) -> bool:
        """Whether the node accepts connections and lists itself in a metadata response."""
        spec = self.spec
        if not port_accepts(spec.host, spec.broker_port):
            return False
        try:
            return self.node_id in live_brokers(spec.bootstrap, timeout=timeout)
        except ConnectionError:
            return False

    def log_tail(self, lines: int = LOG_TAIL_LINES, *, this_run: bool = True) -> str:
        """The last ``lines`` lines of ``broker.log`` (by default only from the latest start)."""
        try:
            with self.log_path.open("rb") as log:
                if this_run:
                    log.seek(self._log_offset)
                text = log.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _java_command(self, heap: Sequence[str]) -> list[str]:
        if self._libs is None:
            raise RuntimeError(f"Kafka node {self.node_id} is not configured")
        java = require_tool("java")
        return [
            java,
            *heap,
            f"-Dlog4j.configuration=file:{self.directory / 'log4j.properties'}",
            "-cp",
            str(self._libs / "*"),
        ]


def wait_until_ready(nodes: Sequence[BrokerNode], timeout: float) -> None:
    """Wait until every node serves metadata that lists it.

    Fails as soon as any of the JVMs exits, instead of waiting out the deadline.

    Raises:
        KafkaStartError: A node exited or the deadline passed; holds that node's log tail.
    """
    deadline = time.monotonic() + timeout
    pending = list(nodes)
    while True:
        for node in list(pending):
            if not node.running:
                raise KafkaStartError(
                    f"Kafka node {node.node_id} exited while starting "
                    f"(exit status {node.exit_status}); "
                    f"log: {node.log_path}",
                    log_tail=node.log_tail(),
                )
            remaining = deadline - time.monotonic()
            if node.answers(timeout=max(0.5, min(2.0, remaining))):
                pending.remove(node)
        if not pending:
            return
        if time.monotonic() >= deadline:
            late = pending[0]
            raise KafkaStartError(
                f"Kafka node {late.node_id} did not serve metadata on {late.bootstrap} within "
                f"{timeout:.0f} s; log: {late.log_path}",
                log_tail=late.log_tail(),
            )
        time.sleep(_POLL)


def stop_nodes(nodes: Sequence[BrokerNode], timeout: float) -> None:
    """Stop several nodes at once (see :meth:`BrokerNode.stop`), sharing one deadline."""
    stop_processes([n._process for n in nodes if n._process is not None], timeout)


def _heap_options(heap: str | None) -> tuple[str, ...]:
    """JVM heap flags for ``heap``, e.g. ``("-Xmx1g",)``; ``None`` is the default heap."""
    if not heap:
        return _DEFAULT_HEAP
    if not _HEAP_SIZE.match(heap):
        raise ConfigurationError(f"heap={heap!r} is not a heap size such as 512m or 1g")
    # Only the maximum: a fixed initial heap could exceed a small maximum.
    return (f"-Xmx{heap}",)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
