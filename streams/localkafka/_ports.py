"""Loopback ports: finding free ones and probing them."""

from __future__ import annotations

import socket
from contextlib import ExitStack

__all__ = ["free_ports", "parse_bootstrap", "port_accepts", "port_is_free"]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Pick ``count`` distinct ports that are free on ``host`` right now.

    All sockets stay bound until every port is chosen, so the ports differ from each other.
    Another process may still take one before the broker binds it; the launcher retries then.
    """
    with ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a listening socket could bind ``host:port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # The JVM binds with SO_REUSEADDR too, so a port lingering in TIME_WAIT counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def parse_bootstrap(bootstrap: str) -> list[tuple[str, int]]:
    """``(host, port)`` of each address in a ``host:port,host:port`` list.

    Raises:
        ValueError: An address has no numeric port.
    """
    found = []
    for address in bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        found.append((host or "localhost", int(port)))
    return found
