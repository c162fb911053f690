"""Real ``baton worker`` processes for integration tests, and helpers to watch topics.

Workers run as subprocesses of the installed console script, so a test can SIGKILL one
exactly as an operator's machine would lose it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams._config import load_settings
from topics import Codec, Event, RunEvent, RunResult, TopicCatalog

BATON = Path(sys.executable).parent / "baton"
CODEC = Codec()
T = TypeVar("T")
E = TypeVar("E", bound=Event)

#: The token of ``ops``, a principal for every tenant, in clusters made with ``api_access``.
API_TOKEN = "integration-ops-token-2d9f"
#: The workers' own key in those clusters.
WORKER_KEY = "integration-worker-key-5b8e1f3a7c9d2e40"


def api_access(home: Path) -> dict[str, str]:
    """Environment for workers whose API a test calls as ``ops`` (every tenant).

    Writes an access file naming ``ops`` and the workers' key; ``BATON_TOKEN`` is set too, so
    ``baton runs show`` and ``baton approvals`` run against it as ``ops``.
    """
    home.mkdir(parents=True, exist_ok=True)
    path = home / "api-access.yaml"
    path.write_text(
        'principals:\n  ops: {token_env: BATON_TOKEN_OPS, tenants: "*"}\n'
        "worker_key: {env: BATON_WORKER_KEY}\n"
    )
    return {
        "BATON_ACCESS_FILE": str(path),
        "BATON_TOKEN_OPS": API_TOKEN,
        "BATON_WORKER_KEY": WORKER_KEY,
        "BATON_TOKEN": API_TOKEN,
    }


def ops() -> dict[str, str]:
    """The headers of a request made as ``ops``."""
    return {"Authorization": f"Bearer {API_TOKEN}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Cluster:
    """Settings shared by every worker of one test: one broker, one topic prefix."""

    bootstrap: str
    prefix: str
    home: Path
    partitions: int = 4
    models_file: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def catalog(self) -> TopicCatalog:
        """The catalog the workers see (from the same settings, retry tiers included)."""
        return load_settings(self.env()).catalog()

    def env(self, **more: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
        env.update(
            BATON_BOOTSTRAP=self.bootstrap,
            BATON_TOPIC_PREFIX=self.prefix,
            BATON_PARTITIONS=str(self.partitions),
            BATON_HOME=str(self.home),
            BATON_COMMIT_INTERVAL="0.2",
        )
        if self.models_file is not None:
            env["BATON_MODELS_FILE"] = str(self.models_file)
        env.update(self.extra_env)
        env.update(more)
        return env

    def deploy(self, **workflows: str) -> None:
        """Create the topics and deploy these workflows (YAML texts, by file stem)."""
        assert self.baton("topics", "create").returncode == 0
        folder = self.home / "workflows"
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for stem, text in workflows.items():
            path = folder / f"{stem}.yaml"
            path.write_text(text)
            paths.append(str(path))
        deployed = self.baton("workflows", "deploy", *paths)
        assert deployed.returncode == 0, deployed.stderr

    def baton(
        self, *args: str, timeout: float = 120, **env: str
    ) -> subprocess.CompletedProcess[str]:
        """Run a baton command against this cluster."""
        return subprocess.run(
            [str(BATON), *args],
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )


class WorkerProcess:
    """One ``baton worker`` subprocess."""

    def __init__(
        self, cluster: Cluster, worker_id: str, *args: str, web_port: int | None = None, **env: str
    ) -> None:
        self.cluster = cluster
        self.worker_id = worker_id
        self.web_port = web_port or free_port()
        self.args = args
        self.env = cluster.env(BATON_WORKER_ID=worker_id, BATON_WEB_PORT=str(self.web_port), **env)
        self.log_path = cluster.home / f"worker-{worker_id}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start(self) -> WorkerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(BATON), "worker", "--loglevel", "info", *self.args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def wait_ready(self, timeout: float = 60.0) -> WorkerProcess:
        """Until the coordinator's API answers (it starts after table recovery)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.api}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"worker not ready in {timeout}s:\n{self.log_tail()}")

    def pause(self) -> None:
        """SIGSTOP: the process stands still (its sockets stay open) until ``resume``."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT: it goes on where it stood."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: the machine is gone, nothing is flushed."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a paused worker cannot stop
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Workers:
    """Every worker a test started; all stopped at the end."""

    cluster: Cluster
    started: list[WorkerProcess] = field(default_factory=list)

    def start(
        self, worker_id: str = "w1", *args: str, ready: bool = True, **env: str
    ) -> WorkerProcess:
        """Start a worker; one restarted under an earlier id keeps its port, like a reboot."""
        earlier = [w for w in self.started if w.worker_id == worker_id]
        port = earlier[-1].web_port if earlier else None
        worker = WorkerProcess(self.cluster, worker_id, *args, web_port=port, **env).start()
        self.started.append(worker)
        if ready:
            worker.wait_ready()
        return worker

    def stop_all(self) -> None:
        for worker in self.started:
            worker.stop()


async def read_topic(
    bootstrap: str, topic: str, partitions: int, *, committed_only: bool = True
) -> list[bytes]:
    """Every value on a topic right now, in partition then offset order."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        isolation_level="read_committed" if committed_only else "read_uncommitted",
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        found: dict[TopicPartition, list[bytes]] = {tp: [] for tp in tps}
        deadline = time.monotonic() + 30
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topic} to its end")
            batch = await consumer.getmany(timeout_ms=200)
            for tp, records in batch.items():
                found[tp].extend(r.value for r in records if r.value is not None)
        return [value for tp in tps for value in found[tp]]
    finally:
        await consumer.stop()


async def results_by_run(cluster: Cluster) -> Counter[str]:
    """How many results each run has on the results topic."""
    values = await read_topic(cluster.bootstrap, cluster.catalog.results.name, cluster.partitions)
    return Counter(CODEC.decode(v, RunResult).run_id for v in values)


async def all_results(cluster: Cluster) -> list[RunResult]:
    values = await read_topic(cluster.bootstrap, cluster.catalog.results.name, cluster.partitions)
    return [CODEC.decode(v, RunResult) for v in values]


async def run_events(cluster: Cluster, run_id: str | None = None) -> list[RunEvent]:
    values = await read_topic(
        cluster.bootstrap, cluster.catalog.run_events.name, cluster.partitions
    )
    events = [e for v in values for e in CODEC.run_events(v)]
    return [e for e in events if run_id is None or e.run_id == run_id]


async def decoded(cluster: Cluster, topic: str, event_type: type[E]) -> list[E]:
    values = await read_topic(cluster.bootstrap, topic, cluster.partitions)
    return [CODEC.decode(v, event_type) for v in values]


async def poll_topic(
    cluster: Cluster,
    topic: str,
    *,
    decode: Callable[[bytes], T | None],
    until: Callable[[list[T]], bool],
    what: str = "the records expected",
    timeout: float = 60.0,
) -> list[T]:
    """Read a topic's committed records again and again until ``until`` holds of them.

    ``decode`` makes each record's value what ``until`` is given (``None`` leaves it out).

    The signal a test waited for (a run's result, an HTTP answer, a log line, a drained group)
    says nothing of records that another batch, Kafka transaction or partition writes: a dead
    letter on the bad record's own partition, another run's events, an approval request, a
    late result. Each is committed in its own time (even one transaction's partitions become
    readable one by one), so a single read may come too early. Read such a topic with this;
    assert once what is expected is there (a check that something is absent, too).

    Raises:
        AssertionError: ``until`` still did not hold after ``timeout`` seconds; names the topic,
            what was expected, and shows what was read last.
    """
    deadline = time.monotonic() + timeout
    while True:
        values = await read_topic(cluster.bootstrap, topic, cluster.partitions)
        found = [x for x in map(decode, values) if x is not None]
        if until(found):
            return found
        if time.monotonic() > deadline:
            shown = [y for x in found for y in (x if isinstance(x, list) else [x])]
            last = "\n".join(repr(x)[:300] for x in shown[-10:])
            raise AssertionError(
                f"{topic}: not within {timeout:g}s: {what}; "
                f"last read {len(found)}, the last ones:\n{last}"
            )
        await asyncio.sleep(0.2)


async def poll_decoded(
    cluster: Cluster,
    topic: str,
    event_type: type[E],
    until: Callable[[list[E]], bool],
    *,
    what: str = "the events expected",
    timeout: float = 60.0,
) -> list[E]:
    """``poll_topic`` for a topic of one event type."""
    return await poll_topic(
        cluster,
        topic,
        decode=lambda v: CODEC.decode(v, event_type),
        until=until,
        what=what,
        timeout=timeout,
    )


async def poll_run_events(
    cluster: Cluster,
    run_id: str,
    until: Callable[[list[RunEvent]], bool],
    *,
    timeout: float = 60.0,
) -> list[RunEvent]:
    """A run's events, read until ``until`` holds of them (``has(...)`` says the usual)."""

    def mine(value: bytes) -> list[RunEvent] | None:
        # One record is one coordinator commit's batch, with the events of many runs.
        events = [e for e in CODEC.run_events(value) if e.run_id == run_id]
        return events or None

    batches = await poll_topic(
        cluster,
        cluster.catalog.run_events.name,
        decode=mine,
        until=lambda found: until([e for batch in found for e in batch]),
        what=f"the events expected of run {run_id!r}",
        timeout=timeout,
    )
    return [e for batch in batches for e in batch]


def has(*types: str) -> Callable[[list[RunEvent]], bool]:
    """``until`` for ``poll_run_events``: an event of each of these types is there.

    A run's events are all on its partition, in order, and a partition is readable up to a
    point: once an event is there, so is every event of the run written before it. The
    ``run_<status>`` event comes last, but for a late step result or a duplicate task.
    """
    return lambda events: set(types) <= {e.type for e in events}


async def wait_until_drained(cluster: Cluster, timeout: float = 60.0) -> None:
    """Until the coordinator group has committed everything on its input topics."""
    catalog = cluster.catalog
    inputs = [catalog.tasks.name, catalog.step_results.name, catalog.control.name]
    group = f"{cluster.prefix}-coordinator"
    admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=cluster.bootstrap, group_id=None)
    await admin.start()
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in inputs for p in range(cluster.partitions)]
        deadline = time.monotonic() + timeout
        while True:
            ends = await consumer.end_offsets(tps)
            committed = await admin.list_consumer_group_offsets(group)
            behind = {
                tp: ends[tp] - (committed[tp].offset if tp in committed else 0)
                for tp in tps
                if ends[tp] > (committed[tp].offset if tp in committed else 0)
            }
            if not behind:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"coordinator still behind after {timeout}s: {behind}")
            await asyncio.sleep(0.2)
    finally:
        await consumer.stop()
        await admin.close()


def iter_lines(path: Path) -> Iterator[str]:
    yield from path.read_text(errors="replace").splitlines()
