"""The local broker's generated configuration, its state file, and the jar cache (no JVM)."""

from __future__ import annotations

import base64
import json
import os
import secrets
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from streams._config import load_settings
from streams.localkafka import (
    BrokerState,
    KafkaStartError,
    LocalKafka,
    NodeSpec,
    cached_jars,
    fetch_jars,
    free_ports,
    kafka_home,
    new_cluster_id,
    port_is_free,
    read_state,
    resolve_bootstrap,
    running_broker,
    server_properties,
    write_state,
)
from streams.localkafka._properties import read_cluster_id, read_node_spec, render_properties
from topics import ConfigurationError

ONE = (NodeSpec(1, 9092, 9093),)
THREE = (NodeSpec(1, 19092, 19093), NodeSpec(2, 29092, 29093), NodeSpec(3, 39092, 39093))


def parse_properties(text: str) -> dict[str, str]:
    """Enough of Java's .properties syntax to read what render_properties writes."""
    parsed = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, _, value = line.partition("=")
        parsed[key] = value.replace("\\\\", "\x00").replace("\\", "").replace("\x00", "\\")
    return parsed


# --- server.properties -----------------------------------------------------------------------


def test_single_node_properties(tmp_path: Path) -> None:
    props = server_properties(ONE[0], ONE, tmp_path / "data")

    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "1"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:9093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9092"
    assert props["controller.listener.names"] == "CONTROLLER"
    assert props["inter.broker.listener.name"] == "PLAINTEXT"
    assert props["log.dirs"] == str(tmp_path / "data")
    assert props["auto.create.topics.enable"] == "false"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["offsets.topic.num.partitions"] == "3"
    assert props["transaction.state.log.num.partitions"] == "3"
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "default.replication.factor",
        "min.insync.replicas",
    ):
        assert props[key] == "1", key


def test_three_node_properties(tmp_path: Path) -> None:
    every = [server_properties(node, THREE, tmp_path / f"n{node.node_id}") for node in THREE]

    voters = "1@127.0.0.1:19093,2@127.0.0.1:29093,3@127.0.0.1:39093"
    assert {p["controller.quorum.voters"] for p in every} == {voters}
    assert [p["node.id"] for p in every] == ["1", "2", "3"]
    assert every[1]["listeners"] == "PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093"
    assert every[1]["advertised.listeners"] == "PLAINTEXT://127.0.0.1:29092"
    assert len({p["log.dirs"] for p in every}) == 3
    for props in every:
        assert props["offsets.topic.replication.factor"] == "3"
        assert props["transaction.state.log.replication.factor"] == "3"
        assert props["default.replication.factor"] == "3"
        assert props["min.insync.replicas"] == "2"
        assert props["transaction.state.log.min.isr"] == "2"
        assert props["auto.create.topics.enable"] == "false"


def test_overrides_replace_and_add(tmp_path: Path) -> None:
    props = server_properties(
        ONE[0], ONE, tmp_path, {"num.partitions": "6", "log.retention.ms": "1000"}
    )
    assert props["num.partitions"] == "6"
    assert props["log.retention.ms"] == "1000"


def test_rendered_properties_read_back(tmp_path: Path) -> None:
    props = server_properties(ONE[0], ONE, Path("C:\\odd dir") / "data")
    assert parse_properties(render_properties(props)) == props


def test_a_node_spec_reads_back_from_its_rendered_properties(tmp_path: Path) -> None:
    for node in THREE:
        text = render_properties(server_properties(node, THREE, tmp_path / "data"))
        assert read_node_spec(text) == node


@pytest.mark.parametrize(
    "text",
    ["", "node.id=1\n", "node.id=1\nlisteners=PLAINTEXT://127.0.0.1:9092\n", "listeners=x\n"],
)
def test_a_file_that_is_no_node_configuration_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not the server.properties"):
        read_node_spec(text)


# --- cluster id --------------------------------------------------------------------------------


def test_cluster_id_is_16_bytes_of_url_safe_base64() -> None:
    ids = {new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    for cluster_id in ids:
        assert len(cluster_id) == 22
        assert "=" not in cluster_id and not cluster_id.startswith("-")
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    # 0xf8 encodes to a leading "-" in URL-safe base64.
    draws: Iterator[bytes] = iter([b"\xf8" + bytes(15), b"\x01" + bytes(15)])
    monkeypatch.setattr(secrets, "token_bytes", lambda n: next(draws))
    assert new_cluster_id() == base64.urlsafe_b64encode(b"\x01" + bytes(15)).decode()[:22]


def test_cluster_id_read_from_formatted_storage(tmp_path: Path) -> None:
    assert read_cluster_id(tmp_path) is None
    (tmp_path / "meta.properties").write_text(
        "#\n#Thu Nov 21\nnode.id=1\nversion=1\ncluster.id=AbC-d_123\n", encoding="utf-8"
    )
    assert read_cluster_id(tmp_path) == "AbC-d_123"


# --- ports -------------------------------------------------------------------------------------


def test_free_ports_are_distinct_and_free() -> None:
    ports = free_ports(6)
    assert len(set(ports)) == 6
    assert all(port_is_free(p) for p in ports)


def test_a_listening_port_is_not_free() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert not port_is_free(sock.getsockname()[1])


# --- state file --------------------------------------------------------------------------------


def make_state(tmp_path: Path, pids: tuple[int, ...], bootstrap: str) -> BrokerState:
    return BrokerState(
        pids=pids,
        bootstrap=bootstrap,
        version="3.9.1",
        data_dirs=(tmp_path / "node-1" / "data",),
        log_files=(tmp_path / "node-1" / "broker.log",),
        started_at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
    )


def test_state_round_trip(tmp_path: Path) -> None:
    state = make_state(tmp_path, (101, 102), "127.0.0.1:1,127.0.0.1:2")
    assert BrokerState.from_json(state.to_json()) == state

    write_state(tmp_path, state)
    assert json.loads((kafka_home(tmp_path) / "state.json").read_text())["pids"] == [101, 102]
    assert read_state(tmp_path) == state
    assert state.addresses == [("127.0.0.1", 1), ("127.0.0.1", 2)]
    assert state.uptime(datetime(2025, 1, 2, 3, 5, 5, tzinfo=UTC)) == 60.0


def test_unreadable_state_is_discarded(tmp_path: Path) -> None:
    path = kafka_home(tmp_path) / "state.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"pids": [1]}')
    assert read_state(tmp_path) is None
    assert not path.exists()


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture
def fake_broker() -> Iterator[tuple[int, int]]:
    """A live process named like a broker (``... kafka.Kafka``) and a listening port."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        process = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read()", "kafka.Kafka"],
            stdin=subprocess.PIPE,
        )
        try:
            yield process.pid, listener.getsockname()[1]
        finally:
            assert process.stdin is not None
            process.stdin.close()
            process.wait(10)


def test_running_broker_none_without_state(tmp_path: Path) -> None:
    assert running_broker(tmp_path) is None


def test_stale_state_of_a_dead_process_is_cleaned_up(tmp_path: Path) -> None:
    write_state(tmp_path, make_state(tmp_path, (dead_pid(),), "127.0.0.1:9"))
    assert running_broker(tmp_path) is None
    assert read_state(tmp_path) is None


def test_state_of_a_reused_pid_is_stale(tmp_path: Path) -> None:
    # This test's own pid is alive, but it is not a Kafka broker.
    write_state(tmp_path, make_state(tmp_path, (os.getpid(),), "127.0.0.1:9"))
    assert running_broker(tmp_path) is None
    assert read_state(tmp_path) is None


def test_live_broker_is_found(tmp_path: Path, fake_broker: tuple[int, int]) -> None:
    pid, port = fake_broker
    state = make_state(tmp_path, (pid,), f"127.0.0.1:{port}")
    write_state(tmp_path, state)
    assert running_broker(tmp_path) == state


def test_live_broker_refusing_connections_is_not_running_but_kept(
    tmp_path: Path, fake_broker: tuple[int, int]
) -> None:
    pid, _ = fake_broker
    closed_port = free_ports(1)[0]
    write_state(tmp_path, make_state(tmp_path, (pid,), f"127.0.0.1:{closed_port}"))
    assert running_broker(tmp_path) is None
    assert read_state(tmp_path) is not None


def test_resolve_bootstrap(tmp_path: Path, fake_broker: tuple[int, int]) -> None:
    explicit = load_settings({"BATON_BOOTSTRAP": "kafka:9092", "BATON_HOME": str(tmp_path)})
    assert resolve_bootstrap(explicit) == "kafka:9092"

    local = load_settings({"BATON_HOME": str(tmp_path)})
    with pytest.raises(ConfigurationError, match="set BATON_BOOTSTRAP or run `baton kafka up`"):
        resolve_bootstrap(local)

    pid, port = fake_broker
    write_state(tmp_path, make_state(tmp_path, (pid,), f"127.0.0.1:{port}"))
    assert resolve_bootstrap(local) == f"127.0.0.1:{port}"


# --- jar cache ---------------------------------------------------------------------------------

FAKE_MVN = """#!{python}
import os, sys, time
from pathlib import Path
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("-D"))
with open({calls!r}, "a") as calls:
    calls.write(args["kafka.version"] + "\\n")
if os.environ.get("FAKE_MVN_FAIL"):
    print("[ERROR] Could not resolve dependencies: network is unreachable")
    sys.exit(1)
time.sleep(float(os.environ.get("FAKE_MVN_DELAY", "0")))
out = Path(args["outputDirectory"])
out.mkdir(parents=True)
(out / f"kafka_2.13-{{args['kafka.version']}}.jar").write_bytes(b"PK")
(out / "kafka-clients.jar").write_bytes(b"PK")
"""


@pytest.fixture
def fake_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH holding only a fake ``java`` and a fake ``mvn`` that logs each call."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "mvn-calls"
    calls.touch()
    for name, text in {
        "mvn": FAKE_MVN.format(python=sys.executable, calls=str(calls)),
        "java": f"#!{sys.executable}\n",
    }.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(bin_dir))
    return calls


def test_fetch_then_cached(tmp_path: Path, fake_tools: Path) -> None:
    cache = tmp_path / "cache" / "kafka-9.9.9"
    assert cached_jars("9.9.9", cache) is None

    libs = fetch_jars("9.9.9", cache)
    assert libs == cache / "libs"
    assert (libs / "kafka_2.13-9.9.9.jar").is_file()
    assert cached_jars("9.9.9", cache) == libs
    assert fetch_jars("9.9.9", cache) == libs
    assert fake_tools.read_text().splitlines() == ["9.9.9"]


def test_default_cache_dir_follows_xdg(
    tmp_path: Path, fake_tools: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert fetch_jars("9.9.9") == tmp_path / "xdg" / "baton" / "kafka-9.9.9" / "libs"


def test_failed_fetch_leaves_no_cache(
    tmp_path: Path, fake_tools: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_MVN_FAIL", "1")
    cache = tmp_path / "cache" / "kafka-9.9.9"
    with pytest.raises(KafkaStartError, match="network is unreachable"):
        fetch_jars("9.9.9", cache)
    assert not cache.exists()
    assert [p.name for p in cache.parent.iterdir()] == [".kafka-9.9.9.lock"]


def test_concurrent_fetches_run_maven_once(
    tmp_path: Path, fake_tools: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_MVN_DELAY", "0.5")
    cache = tmp_path / "cache" / "kafka-9.9.9"
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(fetch_jars("9.9.9", cache)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == [cache / "libs"] * 4
    assert fake_tools.read_text().splitlines() == ["9.9.9"]


@pytest.mark.parametrize("missing", ["java", "mvn"])
def test_missing_tool_is_a_configuration_error(
    tmp_path: Path, fake_tools: Path, missing: str
) -> None:
    (tmp_path / "bin" / missing).unlink()
    with pytest.raises(ConfigurationError, match=f"`{missing}` not found on PATH: install"):
        fetch_jars("9.9.9", tmp_path / "cache" / "kafka-9.9.9")


def test_fetch_of_a_cached_version_needs_no_tools(
    tmp_path: Path, fake_tools: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache" / "kafka-9.9.9"
    fetch_jars("9.9.9", cache)
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert fetch_jars("9.9.9", cache) == cache / "libs"
    assert fake_tools.read_text().splitlines() == ["9.9.9"]


# --- heap --------------------------------------------------------------------------------------


def test_a_bad_heap_fails_before_any_jvm(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="heap='lots' is not a heap size"):
        LocalKafka(tmp_path, heap="lots")
    with pytest.raises(
        ConfigurationError, match=r"kafka_heap \(environment variable BATON_KAFKA_HEAP\)"
    ):
        load_settings({"BATON_KAFKA_HEAP": "2 GB"})
    assert load_settings({"BATON_KAFKA_HEAP": "1g"}).kafka_heap == "1g"
    assert LocalKafka(tmp_path, heap="1g").node.running is False


def test_public_surface() -> None:
    import streams.localkafka

    assert sorted(streams.localkafka.__all__) == [
        "BrokerNode",
        "BrokerState",
        "DEFAULT_KAFKA_VERSION",
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
    assert all(hasattr(streams.localkafka, name) for name in streams.localkafka.__all__)
