"""Fixtures for tests against a real Kafka.

``kafka_bootstrap`` is one broker shared by the whole session: ``BATON_BOOTSTRAP`` if set,
else a local single-node broker started for the session. Tests isolate themselves with
``topic_prefix`` instead of a broker each. ``kafka_cluster3`` is always a local three-node
cluster, because fault tests kill and restart its nodes.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.localkafka import LocalKafka, LocalKafkaCluster

_HERE = Path(__file__).parent

# Fault tests wait for the controller to fence a killed node; Kafka's default session timeout
# (9 s) would make every such test sit out nine seconds.
FAST_FENCING = {"broker.session.timeout.ms": "4000", "broker.heartbeat.interval.ms": "500"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(_HERE):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of the session's Kafka (``BATON_BOOTSTRAP`` or a local broker)."""
    external = os.environ.get("BATON_BOOTSTRAP")
    if external:
        yield external
        return
    with LocalKafka(tmp_path_factory.mktemp("kafka")) as kafka:
        yield kafka.bootstrap


@pytest.fixture(scope="module")
def kafka_cluster3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafkaCluster]:
    """A local three-node cluster (replication 3, min ISR 2) whose nodes tests may kill."""
    with LocalKafkaCluster(
        tmp_path_factory.mktemp("kafka3"), size=3, overrides=FAST_FENCING
    ) as cluster:
        yield cluster


@pytest.fixture
def topic_prefix() -> str:
    """A fresh prefix (``t<8 hex>``) so tests sharing a broker never share topics."""
    return f"t{uuid.uuid4().hex[:8]}"
