"""The image's HEALTHCHECK command, run against a real ``baton worker`` on the test broker.

Docker runs the command inside the container, where ``python`` is the image's virtualenv;
here it is this one, which has baton installed the same way. The worker listens on a host
name, as the compose workers do (``BATON_WEB_HOST=worker-N``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.workers import Cluster, Workers
from tests.unit.test_docker_compose import _healthcheck_command


@pytest.fixture
def cluster(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> Cluster:
    cluster = Cluster(kafka_bootstrap, topic_prefix, tmp_path / "home")
    created = cluster.baton("topics", "create")
    assert created.returncode == 0, created.stderr
    return cluster


def _check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    program, *args = _healthcheck_command()
    assert program == "python"
    return subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, timeout=30
    )


def test_the_health_check_passes_on_a_serving_worker_and_fails_once_it_stops(
    workers: Workers,
) -> None:
    worker = workers.start("w1", BATON_WEB_HOST="localhost")

    healthy = _check(worker.env)
    assert healthy.returncode == 0, healthy.stderr

    worker.stop()
    assert worker.process is not None and worker.process.returncode is not None
    unhealthy = _check(worker.env)
    assert unhealthy.returncode == 1, unhealthy.stderr  # Docker's "unhealthy"
    assert "Connection refused" in unhealthy.stderr
