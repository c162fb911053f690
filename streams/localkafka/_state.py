"""The detached development broker's state file, and finding the cluster to talk to.

``baton kafka up`` records what it started in ``<home>/kafka/state.json``; later commands
(in other processes) read it to find, report on and stop that broker.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from streams._config import Settings
from streams.localkafka._ports import parse_bootstrap, port_accepts
from streams.localkafka._process import is_kafka_process
from topics import ConfigurationError

__all__ = [
    "BrokerState",
    "clear_state",
    "kafka_home",
    "read_state",
    "resolve_bootstrap",
    "running_broker",
    "write_state",
]

_STATE_FILE = "state.json"


@dataclass(frozen=True)
class BrokerState:
    """What ``baton kafka up`` started.

    Attributes:
        pids: One JVM per node.
        bootstrap: Comma-separated ``host:port`` of the brokers.
        version: Apache Kafka version.
        data_dirs: Each node's ``log.dirs``.
        log_files: Each node's ``broker.log``.
        started_at: When the broker became ready (UTC).
    """

    pids: tuple[int, ...]
    bootstrap: str
    version: str
    data_dirs: tuple[Path, ...]
    log_files: tuple[Path, ...]
    started_at: datetime

    def to_json(self) -> str:
        """The state as JSON text."""
        return json.dumps(
            {
                "pids": list(self.pids),
                "bootstrap": self.bootstrap,
                "version": self.version,
                "data_dirs": [str(p) for p in self.data_dirs],
                "log_files": [str(p) for p in self.log_files],
                "started_at": self.started_at.isoformat(),
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> BrokerState:
        """Parse :meth:`to_json` output.

        Raises:
            ValueError: The text is not a state written by :meth:`to_json`.
        """
        try:
            raw: dict[str, Any] = json.loads(text)
            started_at = datetime.fromisoformat(raw["started_at"])
            parse_bootstrap(raw["bootstrap"])
            return cls(
                pids=tuple(int(pid) for pid in raw["pids"]),
                bootstrap=str(raw["bootstrap"]),
                version=str(raw["version"]),
                data_dirs=tuple(Path(p) for p in raw["data_dirs"]),
                log_files=tuple(Path(p) for p in raw["log_files"]),
                started_at=started_at if started_at.tzinfo else started_at.replace(tzinfo=UTC),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a local broker state: {exc}") from exc

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """``(host, port)`` of each broker."""
        return parse_bootstrap(self.bootstrap)

    def live_pids(self) -> tuple[int, ...]:
        """The pids that still run ``kafka.Kafka``."""
        return tuple(pid for pid in self.pids if is_kafka_process(pid))

    def uptime(self, now: datetime | None = None) -> float:
        """Seconds since the broker started."""
        return ((now or datetime.now(UTC)) - self.started_at).total_seconds()


def kafka_home(home: Path) -> Path:
    """Where the development broker keeps its data, logs and state under baton's ``home``."""
    return home / "kafka"


def write_state(home: Path, state: BrokerState) -> None:
    """Record ``state`` atomically (a reader never sees half a file)."""
    path = kafka_home(home) / _STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{_STATE_FILE}.{os.getpid()}")
    partial.write_text(state.to_json() + "\n", encoding="utf-8")
    os.replace(partial, path)


def read_state(home: Path) -> BrokerState | None:
    """The recorded state, or ``None`` if there is none (an unreadable file is removed)."""
    path = kafka_home(home) / _STATE_FILE
    try:
        return BrokerState.from_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError:
        path.unlink(missing_ok=True)
        return None


def clear_state(home: Path) -> None:
    """Forget the recorded broker."""
    (kafka_home(home) / _STATE_FILE).unlink(missing_ok=True)


def running_broker(home: Path) -> BrokerState | None:
    """The development broker recorded under ``home``, if it is running and accepting.

    A state file whose processes are all gone is stale and is removed. One whose processes
    live but refuse connections is kept (stopping it still needs the pids).
    """
    state = read_state(home)
    if state is None:
        return None
    if not state.live_pids():
        clear_state(home)
        return None
    if not any(port_accepts(host, port) for host, port in state.addresses):
        return None
    return state


def resolve_bootstrap(settings: Settings) -> str:
    """The Kafka cluster baton talks to.

    ``settings.bootstrap`` (``BATON_BOOTSTRAP``) if set, else the development broker started by
    ``baton kafka up`` under ``settings.home``.

    Raises:
        ConfigurationError: Neither is there.
    """
    if settings.bootstrap:
        return settings.bootstrap
    state = running_broker(settings.home)
    if state is not None:
        return state.bootstrap
    raise ConfigurationError("no Kafka cluster: set BATON_BOOTSTRAP or run `baton kafka up`")
