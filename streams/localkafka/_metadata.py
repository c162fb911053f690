"""A real metadata request: the test that a broker is not just listening but serving."""

from __future__ import annotations

import asyncio
import concurrent.futures

from aiokafka.client import AIOKafkaClient

from streams.localkafka._ports import parse_bootstrap, port_accepts

__all__ = ["live_brokers"]


def live_brokers(bootstrap: str, *, timeout: float = 5.0) -> tuple[int, ...]:
    """The node ids of the brokers a metadata response from ``bootstrap`` lists.

    In KRaft a broker appears there once it has registered with the controller and caught up,
    and drops out when the controller fences it (stopped, killed, or not heartbeating).

    Args:
        bootstrap: ``host:port[,host:port...]``; the first that accepts a connection is asked.
        timeout: Seconds to wait for an answer.

    Returns:
        The node ids, sorted.

    Raises:
        ConnectionError: No bootstrap server answered within ``timeout``.
    """
    # aiokafka logs every refused bootstrap address as an error; skip the dead ones quietly.
    address = next((a for a in parse_bootstrap(bootstrap) if port_accepts(*a)), None)
    if address is None:
        raise ConnectionError(f"no metadata from {bootstrap}: nothing accepts connections")
    target = f"{address[0]}:{address[1]}"
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_live_brokers(target, timeout))
    # Called from async code: asyncio.run() cannot nest, so ask from a thread of our own.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, _live_brokers(target, timeout)).result()


async def _live_brokers(bootstrap: str, timeout: float) -> tuple[int, ...]:
    client = AIOKafkaClient(
        bootstrap_servers=bootstrap,
        request_timeout_ms=max(1, int(timeout * 1000)),
        client_id="baton-localkafka-probe",
    )
    try:
        async with asyncio.timeout(timeout):
            await client.bootstrap()
    except Exception as exc:  # aiokafka raises its own errors, OSError and timeouts alike
        raise ConnectionError(f"no metadata from {bootstrap}: {exc!r}") from exc
    finally:
        await client.close()
    return tuple(sorted(broker.nodeId for broker in client.cluster.brokers()))
