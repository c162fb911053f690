"""A local KRaft node's ``server.properties``, and the cluster id its storage is formatted with.

Pure functions of their arguments, so the unit tests check them without a JVM.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "NodeSpec",
    "new_cluster_id",
    "read_cluster_id",
    "read_node_spec",
    "render_properties",
    "server_properties",
]

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class NodeSpec:
    """Where one node of a local cluster listens; each node is broker and controller at once.

    Attributes:
        node_id: Kafka ``node.id`` (1, 2, 3, ...).
        broker_port: Port of the ``PLAINTEXT`` listener clients connect to.
        controller_port: Port of the ``CONTROLLER`` listener the KRaft quorum uses.
        host: Address both listeners bind and advertise.
    """

    node_id: int
    broker_port: int
    controller_port: int
    host: str = LOOPBACK

    @property
    def bootstrap(self) -> str:
        """``host:port`` of the broker listener."""
        return f"{self.host}:{self.broker_port}"


def server_properties(
    node: NodeSpec,
    cluster: Sequence[NodeSpec],
    data_dir: Path,
    overrides: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The broker configuration of ``node`` in a combined-mode (broker + controller) cluster.

    Args:
        node: The node to configure.
        cluster: Every node of the cluster, ``node`` included; all of them are voters.
        data_dir: The node's ``log.dirs``.
        overrides: Settings that replace or add to the generated ones.

    Returns:
        Property names to values, in a readable order.
    """
    replicas = min(3, len(cluster))
    # With three replicas, min ISR 2 keeps acks=all writes durable through one lost node.
    min_isr = 2 if replicas >= 3 else 1
    voters = ",".join(f"{n.node_id}@{n.host}:{n.controller_port}" for n in cluster)
    properties = {
        "process.roles": "broker,controller",
        "node.id": str(node.node_id),
        "controller.quorum.voters": voters,
        "listeners": (
            f"PLAINTEXT://{node.host}:{node.broker_port},"
            f"CONTROLLER://{node.host}:{node.controller_port}"
        ),
        "advertised.listeners": f"PLAINTEXT://{node.host}:{node.broker_port}",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir),
        # A typo in a topic name must fail loudly, never create an empty topic.
        "auto.create.topics.enable": "false",
        "num.partitions": "1",
        "default.replication.factor": str(replicas),
        "min.insync.replicas": str(min_isr),
        "offsets.topic.replication.factor": str(replicas),
        "offsets.topic.num.partitions": "3",
        "transaction.state.log.replication.factor": str(replicas),
        "transaction.state.log.min.isr": str(min_isr),
        "transaction.state.log.num.partitions": "3",
        # Consumer groups in tests form at once instead of after the default 3 s.
        "group.initial.rebalance.delay.ms": "0",
    }
    properties.update(overrides or {})
    return properties


def render_properties(properties: Mapping[str, str]) -> str:
    """Java ``.properties`` text for ``properties`` (backslashes escaped)."""
    lines = ["# Written by baton's local Kafka launcher; rewritten on every start."]
    lines += [f"{key}={_escape(value)}" for key, value in properties.items()]
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    escaped = value.replace("\\", "\\\\")
    return "\\" + escaped if escaped[:1] in (" ", "\t") else escaped


def read_node_spec(text: str) -> NodeSpec:
    """The listeners of a node, read back from the ``server.properties`` it was started with.

    ``baton kafka start-node`` starts one node of a detached cluster again from its own
    directory, where nothing but this file remembers the node's controller port.

    Raises:
        ValueError: The text has no ``node.id`` or no ``PLAINTEXT`` and ``CONTROLLER``
            listeners.
    """
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            values[key.strip()] = value.strip()
    listeners: dict[str, tuple[str, int]] = {}
    for listener in values.get("listeners", "").split(","):
        name, sep, address = listener.partition("://")
        host, _, port = address.rpartition(":")
        if sep and port.isdigit():
            listeners[name.strip()] = (host, int(port))
    if not values.get("node.id", "").isdigit() or {"PLAINTEXT", "CONTROLLER"} - set(listeners):
        raise ValueError("not the server.properties of a local Kafka node")
    host, broker_port = listeners["PLAINTEXT"]
    return NodeSpec(int(values["node.id"]), broker_port, listeners["CONTROLLER"][1], host)


def new_cluster_id() -> str:
    """A fresh KRaft cluster id: 16 random bytes, URL-safe base64 without padding.

    Kafka's ``Uuid`` refuses ids starting with ``-`` (they read as command-line flags).
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def read_cluster_id(data_dir: Path) -> str | None:
    """The cluster id a formatted ``data_dir`` belongs to, or ``None`` if it is unformatted."""
    try:
        text = (data_dir / "meta.properties").read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "cluster.id":
            return value.strip()
    return None
