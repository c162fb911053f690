"""A real Apache Kafka broker for development and tests, run from Maven Central jars.

No Docker, no tarball: ``fetch_jars`` resolves the broker's classpath once with Maven into a
per-version cache, and the JVMs run in KRaft combined mode (each node broker and controller)
on 127.0.0.1::

    with LocalKafka(tmp_path) as kafka:        # one node
        use(kafka.bootstrap)

    with LocalKafkaCluster(tmp_path) as kafka:  # three nodes; kill one, it keeps serving
        kafka.nodes[0].kill()
        kafka.nodes[0].start()

``baton kafka up`` runs the same broker detached under baton's home and records it in a
state file; ``resolve_bootstrap`` finds it (or ``BATON_BOOTSTRAP``) for every other command.
``stop_node`` and ``start_node`` (``baton kafka stop-node|start-node``) take one node of that
cluster down and bring it back, for fault drills.

Errors: a missing ``java``/``mvn`` or a bad heap size is a ``ConfigurationError``;
a broker that cannot be fetched, formatted or started raises ``KafkaStartError`` with the end
of its log in the message.
"""

from streams.localkafka._cluster import DEFAULT_KAFKA_VERSION, LocalKafka, LocalKafkaCluster
from streams.localkafka._detached import (
    broker_logs,
    start_broker,
    start_node,
    stop_broker,
    stop_node,
)
from streams.localkafka._errors import KafkaStartError
from streams.localkafka._jars import cached_jars, default_cache_dir, fetch_jars
from streams.localkafka._metadata import live_brokers
from streams.localkafka._node import BrokerNode
from streams.localkafka._ports import free_ports, port_is_free
from streams.localkafka._properties import NodeSpec, new_cluster_id, server_properties
from streams.localkafka._state import (
    BrokerState,
    kafka_home,
    read_state,
    resolve_bootstrap,
    running_broker,
    write_state,
)

__all__ = [
    "DEFAULT_KAFKA_VERSION",
    "BrokerNode",
    "BrokerState",
    "KafkaStartError",
    "LocalKafka",
    "LocalKafkaCluster",
    "NodeSpec",
    "broker_logs",
    "cached_jars",
    "default_cache_dir",
    "fetch_jars",
    "free_ports",
    "kafka_home",
    "live_brokers",
    "new_cluster_id",
    "port_is_free",
    "read_state",
    "resolve_bootstrap",
    "running_broker",
    "server_properties",
    "start_broker",
    "start_node",
    "stop_broker",
    "stop_node",
    "write_state",
]
