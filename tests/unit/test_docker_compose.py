"""docker-compose.yml: a consistent three-broker KRaft cluster on the broker version we test."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams._config import Settings

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def _services() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_three_kraft_nodes_that_agree_on_the_quorum() -> None:
    brokers = {name: s for name, s in _services().items() if name.startswith("kafka-")}
    assert len(brokers) == 3
    node_ids = {int(s["environment"]["KAFKA_NODE_ID"]) for s in brokers.values()}
    assert node_ids == {1, 2, 3}
    for name, service in brokers.items():
        env = service["environment"]
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        voters = dict(v.split("@") for v in env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(","))
        assert voters == {str(i): f"kafka-{i}:9093" for i in node_ids}
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
        assert int(env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"]) == 2
        assert service["image"] == f"apache/kafka:{Settings().kafka_version}"
        # what a host client is told to connect to is what the host can reach
        external = next(
            a for a in env["KAFKA_ADVERTISED_LISTENERS"].split(",") if a.startswith("EXTERNAL")
        )
        host_port = external.rsplit(":", 1)[1]
        assert service["ports"] == [f"{host_port}:9094"]
        assert env["KAFKA_NODE_ID"] == name.split("-")[1]


@pytest.mark.skipif(
    shutil.which("docker") is None
    or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0,
    reason="the docker compose client is not installed",
)
def test_docker_compose_accepts_the_file() -> None:
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
