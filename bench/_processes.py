"""The processes a measurement runs: the broker, ``baton worker`` subprocesses, the raw pipe.

Also where CPU is read: ``CpuMeter`` takes each process's CPU time (user + system, via
psutil) at the start and end of a repetition, and the whole machine's busy time, so the
report shows what each process used and what the rest of the machine (other users) did.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench._kafka import is_loopback
from bench._report import OTHER_ROLE, BrokerInfo, Machine
from streams.localkafka import DEFAULT_KAFKA_VERSION, LocalKafka
from topics import TopicCatalog

__all__ = [
    "Broker",
    "CpuMeter",
    "FaustPipeProcess",
    "ManagedProcess",
    "RawPipeProcess",
    "WorkerProcess",
    "broker",
    "free_port",
    "health",
    "machine",
    "rss_bytes",
]


_REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Broker:
    """The Kafka under test."""

    bootstrap: str
    pid: int | None
    started_by_bench: bool

    def info(self) -> BrokerInfo:
        """What the report says about it."""
        return BrokerInfo(
            bootstrap=self.bootstrap,
            loopback=is_loopback(self.bootstrap),
            started_by_bench=self.started_by_bench,
            pid=self.pid,
            kafka_version=DEFAULT_KAFKA_VERSION if self.started_by_bench else None,
        )


@contextlib.contextmanager
def broker(directory: Path) -> Iterator[Broker]:
    """``BATON_BOOTSTRAP`` if set, else a single-node local broker for the suite."""
    external = os.environ.get("BATON_BOOTSTRAP")
    if external:
        yield Broker(external, None, started_by_bench=False)
        return
    with LocalKafka(directory / "kafka") as kafka:
        yield Broker(kafka.bootstrap, kafka.pids[0] if kafka.pids else None, True)


def machine() -> Machine:
    """The machine the suite runs on."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return Machine(
        cores_logical=psutil.cpu_count(logical=True) or 1,
        cores_physical=psutil.cpu_count(logical=False),
        cpu_model=model,
        memory_gb=round(psutil.virtual_memory().total / 2**30, 1),
        platform=platform.platform(),
        python=platform.python_version(),
    )


def _baton() -> str:
    beside = Path(sys.executable).parent / "baton"
    if beside.exists():
        return str(beside)
    found = shutil.which("baton")
    if found is None:
        raise FileNotFoundError("the `baton` console script is not installed (pip install -e .)")
    return found


class ManagedProcess:
    """A subprocess the bench started, its log, and how to stop it."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], log: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = dict(env)
        self.log_path = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The pid while it runs."""
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        """Start it, its output going to its log."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=_REPO
            )

    def check_alive(self) -> None:
        """Raise if it has exited.

        Raises:
            RuntimeError: It exited; the message holds the end of its log.
        """
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}"
            )

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited after 30 s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)

    def log_tail(self, lines: int = 40) -> str:
        """The end of its log."""
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def _clean_env(**more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    env.update(more)
    return env


class WorkerProcess(ManagedProcess):
    """One ``baton worker`` (coordinator and processors) for one topic prefix.

    ``settings`` are more ``BATON_*`` variables for it (``BATON_CACHE_TTL``, ...);
    ``processors`` is its ``--processors`` option (all kinds when ``None``), ``coordinator``
    off adds ``--no-coordinator`` (only ``/healthz`` and ``/metrics`` then); ``web_port`` a
    port to reuse (a restarted worker keeps its port: with its worker id it names the worker's
    static group membership).
    """

    def __init__(
        self,
        *,
        bootstrap: str,
        catalog: TopicCatalog,
        home: Path,
        models_file: Path,
        guarantee: str,
        worker_id: str,
        settings: Mapping[str, str] | None = None,
        processors: str | None = None,
        web_port: int | None = None,
        coordinator: bool = True,
    ) -> None:
        self.catalog = catalog
        self.web_port = web_port or free_port()
        self.worker_id = worker_id
        env = _clean_env(
            BATON_BOOTSTRAP=bootstrap,
            BATON_TOPIC_PREFIX=catalog.prefix,
            BATON_PARTITIONS=str(catalog.partitions),
            BATON_HOME=str(home),
            BATON_WORKER_ID=worker_id,
            BATON_WEB_PORT=str(self.web_port),
            BATON_MODELS_FILE=str(models_file),
            BATON_PROCESSING_GUARANTEE=guarantee,
            **(settings or {}),
        )
        argv = [_baton(), "worker", "--loglevel", "warn"]
        if processors is not None:
            argv += ["--processors", processors]
        if not coordinator:
            argv.append("--no-coordinator")
        super().__init__(f"worker {worker_id}", argv, env, home / f"worker-{worker_id}.log")

    @property
    def health_url(self) -> str:
        """Its ``/healthz``."""
        return f"http://127.0.0.1:{self.web_port}/healthz"

    def kill(self) -> None:
        """SIGKILL, and wait until it is gone (a crash: nothing is flushed or closed)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.kill()
        self.process.wait(timeout=30)

    async def written(self) -> dict[str, int]:
        """What its coordinator has written to its own topics (``/healthz`` ``written``)."""
        async with httpx.AsyncClient() as http:
            answer = await health(http, self.health_url)
        found = answer.get("written", {}) if answer else {}
        return {str(k): int(v) for k, v in found.items()} if isinstance(found, dict) else {}

    async def wait_ready(
        self, step_topics: list[str], timeout_s: float = 90.0, poll_s: float = 0.25
    ) -> None:
        """Until the coordinator owns every partition and the processors read ``step_topics``.

        Raises:
            RuntimeError: It exited, or was not ready in time (with the end of its log).
        """
        url = self.health_url
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient() as http:
            while time.monotonic() < deadline:
                self.check_alive()
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    health = (await http.get(url, timeout=2)).json()
                    owned = len(health.get("partitions", []))
                    reading = set(health.get("processing", []))
                    if owned == self.catalog.partitions and set(step_topics) <= reading:
                        return
                await asyncio.sleep(poll_s)
        raise RuntimeError(f"{self.name} not ready after {timeout_s} s:\n{self.log_tail()}")


class RawPipeProcess(ManagedProcess):
    """The B1 raw pipe (``python -m bench._rawpipe``) for one topic prefix."""

    def __init__(self, *, bootstrap: str, prefix: str, hops: int, home: Path) -> None:
        self.ready_file = home / f"rawpipe-{prefix}.ready"
        super().__init__(
            "raw pipe",
            [
                sys.executable,
                "-m",
                "bench._rawpipe",
                "--bootstrap",
                bootstrap,
                "--prefix",
                prefix,
                "--hops",
                str(hops),
                "--ready-file",
                str(self.ready_file),
            ],
            _clean_env(),
            home / f"rawpipe-{prefix}.log",
        )

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Until its consumer has its partitions.

        Raises:
            RuntimeError: It exited, or was not ready in time.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            if self.ready_file.exists():
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"raw pipe not ready after {timeout_s} s:\n{self.log_tail()}")


async def health(http: httpx.AsyncClient, url: str) -> dict[str, Any] | None:
    """A worker's ``/healthz`` answer, or ``None`` when it does not answer (yet)."""
    try:
        answer = (await http.get(url, timeout=2)).json()
    except (httpx.HTTPError, ValueError):
        return None
    return answer if isinstance(answer, dict) else None


class FaustPipeProcess(ManagedProcess):
    """The B2 bare-Faust pipe (``python -m bench._faustpipe``) for one topic prefix."""

    def __init__(self, *, bootstrap: str, prefix: str, hops: int, partitions: int, home: Path):
        self.ready_file = home / f"faustpipe-{prefix}.ready"
        super().__init__(
            "faust pipe",
            [
                sys.executable,
                "-m",
                "bench._faustpipe",
                "--bootstrap",
                bootstrap,
                "--prefix",
                prefix,
                "--hops",
                str(hops),
                "--partitions",
                str(partitions),
                "--datadir",
                str(home / "faust-data"),
                "--ready-file",
                str(self.ready_file),
            ],
            _clean_env(),
            home / f"faustpipe-{prefix}.log",
        )

    async def wait_ready(self, timeout_s: float = 90.0) -> None:
        """Until its agents have their partitions.

        Raises:
            RuntimeError: It exited, or was not ready in time.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            if self.ready_file.exists():
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"faust pipe not ready after {timeout_s} s:\n{self.log_tail()}")


def rss_bytes(pid: int | None) -> float | None:
    """A process's resident memory now (psutil), or ``None`` when it cannot be read."""
    if pid is None:
        return None
    try:
        return float(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


@dataclass
class CpuMeter:
    """CPU used by each named process, and by the rest of the machine, over a window.

    Args:
        pids: Role -> pid of the processes to watch (``None`` pids are skipped).
    """

    pids: Mapping[str, int | None]
    _processes: dict[str, psutil.Process] = field(default_factory=dict)
    _start: dict[str, float] = field(default_factory=dict)
    _machine_start: float = 0.0
    _wall_start: float = 0.0

    def start(self) -> None:
        """Open the window."""
        self._processes = {}
        for role, pid in self.pids.items():
            if pid is None:
                continue
            with contextlib.suppress(psutil.Error):
                self._processes[role] = psutil.Process(pid)
        self._start = {role: _cpu_seconds(p) for role, p in self._processes.items()}
        self._machine_start = _machine_busy()
        self._wall_start = time.monotonic()

    def stop(self) -> dict[str, float]:
        """Close the window: percent of one core per role, and for the rest of the machine."""
        wall = max(time.monotonic() - self._wall_start, 1e-9)
        shares: dict[str, float] = {}
        for role, process in self._processes.items():
            used = _cpu_seconds(process) - self._start[role]
            shares[role] = round(100 * used / wall, 1)
        machine_busy = 100 * (_machine_busy() - self._machine_start) / wall
        shares[OTHER_ROLE] = round(max(0.0, machine_busy - sum(shares.values())), 1)
        return shares


def _cpu_seconds(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def _machine_busy() -> float:
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    return float(
        sum(times) - idle - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    )
