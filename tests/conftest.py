"""Fixtures every test directory can use.

``kafka_bootstrap`` is one broker shared by the whole session: ``BATON_BOOTSTRAP`` if set,
else a local single-node broker started for the session (only when a test asks for it).
Tests isolate themselves with ``topic_prefix`` instead of a broker each.
"""

import os
import uuid
from collections.abc import Iterator

import pytest

from streams.localkafka import LocalKafka
from tests.fakes import fake_openai as fake_openai
from tests.fakes.anthropic_server import fake_anthropic as fake_anthropic
from tests.fakes.responses_server import fake_responses as fake_responses
from tests.fakes.tool_server import tool_server as tool_server


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of the session's Kafka (``BATON_BOOTSTRAP`` or a local broker)."""
    external = os.environ.get("BATON_BOOTSTRAP")
    if external:
        yield external
        return
    # Records past a topic's retention are deleted within a second (Kafka checks every 5
    # minutes by default), so a test with a short run retention sees the broker forget.
    with LocalKafka(
        tmp_path_factory.mktemp("kafka"), overrides={"log.retention.check.interval.ms": "1000"}
    ) as kafka:
        yield kafka.bootstrap


@pytest.fixture
def topic_prefix() -> str:
    """A fresh prefix (``t<8 hex>``) so tests sharing a broker never share topics."""
    return f"t{uuid.uuid4().hex[:8]}"
