"""A broker JVM as a process handle that works in the process that started it and in others.

``baton kafka up`` starts the broker and exits; ``baton kafka down`` (another process) stops
it by pid. So processes are spawned in their own session (a Ctrl-C in the terminal or the
caller's exit does not reach them) without a ``subprocess.Popen`` object, which would warn
when dropped while its child runs.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

__all__ = ["BrokerProcess", "is_kafka_process", "pid_alive", "stop_processes"]

_POLL = 0.05


class BrokerProcess:
    """A running (or finished) broker process.

    Args:
        pid: The process id.
        is_child: Whether this process started it; only then can it collect the exit status.
    """

    def __init__(self, pid: int, *, is_child: bool = False) -> None:
        self.pid = pid
        self._is_child = is_child
        self._exited = False
        self._returncode: int | None = None

    @classmethod
    def spawn(
        cls, argv: Sequence[str], *, log_path: Path, env: Mapping[str, str] | None = None
    ) -> BrokerProcess:
        """Start ``argv`` in a new session with stdout and stderr appended to ``log_path``."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        pid = os.posix_spawn(
            argv[0],
            list(argv),
            dict(os.environ if env is None else env),
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, str(log_path), flags, 0o644),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
            setsid=True,
        )
        return cls(pid, is_child=True)

    @property
    def returncode(self) -> int | None:
        """The exit status (negative: killed by that signal); ``None`` while running or unknown."""
        self.running()
        return self._returncode

    def running(self) -> bool:
        """Whether the process is still running (a zombie counts as exited)."""
        if self._exited:
            return False
        if not self._is_child:
            self._exited = not pid_alive(self.pid)
            return not self._exited
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:  # reaped by someone else; the status is lost
            self._exited = True
            return False
        if pid == 0:
            return True
        self._exited = True
        self._returncode = os.waitstatus_to_exitcode(status)
        return False

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the process to exit; ``True`` if it has."""
        deadline = time.monotonic() + timeout
        while self.running():
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL)
        return True

    def send(self, sig: signal.Signals) -> None:
        """Send ``sig``, unless the process is gone."""
        if self.running():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL the process and wait until it is gone."""
        self.send(signal.SIGKILL)
        self.wait(10.0)


def stop_processes(processes: Iterable[BrokerProcess], timeout: float) -> None:
    """SIGTERM every process at once, then SIGKILL those still running after ``timeout``.

    SIGTERM makes a broker shut down in a controlled way (leaderships move, logs are flushed);
    doing all at once keeps a cluster's shutdown from waiting on each node in turn.
    """
    live = [p for p in processes if p.running()]
    for process in live:
        process.send(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in live:
        if not process.wait(max(0.0, deadline - time.monotonic())):
            process.kill()


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (zombies, which no one reaped yet, are not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return True
    # The state field follows the parenthesised command name, which may itself hold spaces.
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def is_kafka_process(pid: int) -> bool:
    """Whether ``pid`` is alive and runs ``kafka.Kafka`` (a reused pid is someone else's).

    Where ``/proc`` is unavailable, a live pid is taken at its word.
    """
    if not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return not Path("/proc/self").exists()
    except OSError:
        return True
    return b"kafka.Kafka" in cmdline.split(b"\0")
