"""``baton kafka up|status|down`` as a user runs them: the real console script, detached JVMs."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.localkafka import live_brokers, read_state

BATON = shutil.which("baton", path=str(Path(sys.executable).parent)) or shutil.which("baton")


@pytest.fixture
def baton_home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "home"
    try:
        yield home
    finally:
        # Whatever the test did, no broker may outlive it.
        run_baton(home, "kafka", "down")


def run_baton(home: Path, *args: str, **env_vars: str) -> subprocess.CompletedProcess[str]:
    assert BATON is not None, "the baton console script is not installed"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    env.update(BATON_HOME=str(home), COLUMNS="200", **env_vars)
    return subprocess.run(
        [BATON, *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_up_status_down(baton_home: Path) -> None:
    up = run_baton(baton_home, "kafka", "up")
    assert up.returncode == 0, up.stdout + up.stderr
    state = read_state(baton_home)
    assert state is not None
    assert f"is up at {state.bootstrap}" in up.stdout
    assert f"export BATON_BOOTSTRAP={state.bootstrap}" in up.stdout
    # The broker outlived the command that started it, and serves metadata.
    assert live_brokers(state.bootstrap) == (1,)

    status = run_baton(baton_home, "kafka", "status")
    assert status.returncode == 0, status.stderr
    assert "is running" in status.stdout
    assert state.bootstrap in status.stdout
    assert str(state.pids[0]) in status.stdout

    again = run_baton(baton_home, "kafka", "up")
    assert again.returncode == 0, again.stderr
    assert f"already running at {state.bootstrap}" in again.stdout
    assert read_state(baton_home) == state

    logs = run_baton(baton_home, "kafka", "logs", "-n", "5")
    assert logs.returncode == 0 and "starting Kafka node 1" in logs.stdout

    down = run_baton(baton_home, "kafka", "down")
    assert down.returncode == 0, down.stderr
    assert "Kafka stopped" in down.stdout
    assert read_state(baton_home) is None

    status = run_baton(baton_home, "kafka", "status")
    assert status.returncode == 0, status.stderr
    assert "not running" in status.stdout

    down = run_baton(baton_home, "kafka", "down")
    assert "not running" in down.stdout


def test_data_survives_down_and_up(baton_home: Path, topic_prefix: str) -> None:
    topic = f"{topic_prefix}.kept"
    assert run_baton(baton_home, "kafka", "up").returncode == 0
    state = read_state(baton_home)
    assert state is not None
    asyncio.run(create_topic(state.bootstrap, topic))
    assert run_baton(baton_home, "kafka", "down").returncode == 0

    up = run_baton(baton_home, "kafka", "up")
    assert up.returncode == 0, up.stdout + up.stderr
    state = read_state(baton_home)
    assert state is not None
    assert topic in asyncio.run(list_topics(state.bootstrap))


def test_one_node_of_three_is_killed_and_started_again(baton_home: Path, topic_prefix: str) -> None:
    up = run_baton(baton_home, "kafka", "up", "--nodes", "3")
    assert up.returncode == 0, up.stdout + up.stderr
    state = read_state(baton_home)
    assert state is not None
    topic = f"{topic_prefix}.kept"
    asyncio.run(create_topic(state.bootstrap, topic, replicas=3))

    killed = run_baton(baton_home, "kafka", "stop-node", "2", "--kill")
    assert killed.returncode == 0, killed.stderr
    assert "node 2 killed" in killed.stdout
    assert state.pids[1] not in (read_state(baton_home) or state).live_pids()
    # The controller fences the dead node once its broker session lapses.
    wait_for(lambda: live_brokers(state.bootstrap) == (1, 3), "node 2 to leave the metadata")
    status = run_baton(baton_home, "kafka", "status")
    assert "is running" in status.stdout and "node 2" in status.stdout, status.stdout
    assert topic in asyncio.run(list_topics(state.bootstrap))

    again = run_baton(baton_home, "kafka", "stop-node", "2")
    assert again.returncode == 0 and "node 2 is not running" in again.stdout

    started = run_baton(baton_home, "kafka", "start-node", "2")
    assert started.returncode == 0, started.stdout + started.stderr
    restarted = read_state(baton_home)
    assert restarted is not None and len(restarted.live_pids()) == 3
    assert restarted.pids[1] != state.pids[1]
    assert f"pid {restarted.pids[1]}" in started.stdout
    assert live_brokers(state.bootstrap) == (1, 2, 3)

    stopped = run_baton(baton_home, "kafka", "stop-node", "3")
    assert stopped.returncode == 0 and "node 3 stopped" in stopped.stdout
    wait_for(lambda: live_brokers(state.bootstrap) == (1, 2), "node 3 to leave the metadata")
    assert run_baton(baton_home, "kafka", "start-node", "3").returncode == 0
    assert "already running" in run_baton(baton_home, "kafka", "start-node", "3").stdout

    missing = run_baton(baton_home, "kafka", "stop-node", "4")
    assert missing.returncode == 1
    assert "there is no node 4: the local cluster has 3 nodes" in missing.stderr


def test_a_node_of_no_cluster_cannot_be_stopped(baton_home: Path) -> None:
    done = run_baton(baton_home, "kafka", "stop-node", "1")
    assert done.returncode == 1
    assert "Kafka is not running" in done.stderr


def test_failed_up_prints_the_log_tail(baton_home: Path) -> None:
    # The JVM refuses a 1 KiB heap at once: a broker that cannot start, cheaply.
    up = run_baton(baton_home, "kafka", "up", BATON_KAFKA_HEAP="1k")
    assert up.returncode == 1
    assert "Kafka did not start" in up.stderr
    assert "Too small maximum heap" in up.stderr
    assert read_state(baton_home) is None


def wait_for(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        time.sleep(0.5)


async def create_topic(bootstrap: str, name: str, replicas: int = 1) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, replicas)])
    finally:
        await admin.close()


async def list_topics(bootstrap: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics: list[str] = await admin.list_topics()
    finally:
        await admin.close()
    return topics
