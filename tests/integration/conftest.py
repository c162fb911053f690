"""Fixtures for tests against a real Kafka.

``kafka_bootstrap`` and ``topic_prefix`` live in ``tests/conftest.py``, so that this directory
and ``tests/browser`` share one broker per session. ``kafka_cluster3`` is always a local
three-node cluster, because fault tests kill and restart its nodes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.localkafka import LocalKafkaCluster
from tests.integration.workers import Cluster, Workers

_HERE = Path(__file__).parent

# Fault tests wait for the controller to fence a killed node; Kafka's default session timeout
# (9 s) would make every such test sit out nine seconds.
FAST_FENCING = {"broker.session.timeout.ms": "4000", "broker.heartbeat.interval.ms": "500"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(_HERE):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="module")
def kafka_cluster3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafkaCluster]:
    """A local three-node cluster (replication 3, min ISR 2) whose nodes tests may kill."""
    with LocalKafkaCluster(
        tmp_path_factory.mktemp("kafka3"), size=3, overrides=FAST_FENCING
    ) as cluster:
        yield cluster


@pytest.fixture
def workers(cluster: Cluster) -> Iterator[Workers]:
    """The workers a test starts (``workers.start``), all stopped after it.

    Needs the test module's ``cluster`` fixture.
    """
    started = Workers(cluster)
    yield started
    started.stop_all()
