"""CloudEvents headers on every record baton writes (the Kafka protocol binding, binary mode).

In binary mode the record value stays what it is (Confluent-framed Avro) and the event's
attributes travel as headers, so a generic consumer, router or audit tool can tell what a
record is without baton's code or schemas::

    ce_specversion  1.0
    ce_type         baton.events.StepResult       the Avro full name of the value's schema
    ce_source       /baton/workers/worker-a       who wrote it (a worker, a client, the CLI)
    ce_id           9f0c...                       blake2b-128 of the value: stable for the event
    ce_time         2026-12-03T14:05:09.123Z      when it was written
    ce_partitionkey run-42                        the record key (the run id on run-keyed topics)
    content-type    application/avro

``ce_id`` is a hash of the value's bytes, so the same event sent twice (a retried transaction,
an at-least-once redelivery re-sent by a takeover) carries the same id wherever it comes from:
a consumer can drop duplicates on ``ce_id`` alone. A record that already has CloudEvents
headers (a relayed retry, a replayed task) keeps them: it is the same event. Tombstones and
values that are not baton events get none (a tombstone is not an event).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from hashlib import blake2b

__all__ = [
    "CONTENT_TYPE",
    "SPECVERSION",
    "CloudEvents",
    "client_source",
    "worker_source",
]

SPECVERSION = "1.0"
#: The media type of a baton record value: Avro in the Confluent framing (magic byte, id).
CONTENT_TYPE = "application/avro"

Header = tuple[str, bytes]

_SPEC = ("ce_specversion", SPECVERSION.encode())
_CONTENT = ("content-type", CONTENT_TYPE.encode())


def worker_source(worker_id: str) -> str:
    """The ``ce_source`` of a worker's records."""
    return f"/baton/workers/{worker_id}"


def client_source(role: str = "clients") -> str:
    """The ``ce_source`` of records written by a client or the CLI on this host."""
    return f"/baton/{role}/{socket.gethostname()}"


class CloudEvents:
    """Builds the CloudEvents headers of records written by one source.

    Args:
        source: The ``ce_source`` (see ``worker_source`` and ``client_source``).
        type_of: The event type name of a value (``None``: not a baton event), from the codec
            that wrote it, so ids given by a schema registry name the right type.
        clock: Seconds since the epoch (``ce_time``).
    """

    def __init__(
        self,
        source: str,
        type_of: Callable[[bytes], str | None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._source = ("ce_source", source.encode())
        self._type_of = type_of
        self._clock = clock
        self._types: dict[bytes, Header] = {}
        self._second = -1
        self._stamp = ""

    @property
    def source(self) -> str:
        """The ``ce_source`` this writes."""
        return self._source[1].decode()

    def headers(
        self, key: bytes | None, value: bytes | None, headers: Sequence[Header] | None
    ) -> list[Header] | None:
        """``headers`` with the CloudEvents ones added (the same ones when not an event).

        Always a list or ``None``: aiokafka's record builder refuses a tuple, which is what a
        consumed record's headers are (a relayed retry forwards them).
        """
        kept = list(headers) if headers else None
        if not value or value[0] != 0 or len(value) < 5:
            return kept
        if kept and any(name == "ce_specversion" for name, _ in kept):
            return kept
        kind = self._types.get(value[1:5])
        if kind is None:
            name = self._type_of(value)
            if name is None:
                return kept
            kind = self._types.setdefault(value[1:5], ("ce_type", name.encode()))
        added = [
            _SPEC,
            kind,
            self._source,
            ("ce_id", blake2b(value, digest_size=16).hexdigest().encode()),
            ("ce_time", self._time()),
            _CONTENT,
        ]
        if key:
            added.append(("ce_partitionkey", key))
        if kept:
            added.extend(kept)
        return added

    def _time(self) -> bytes:
        """RFC 3339 UTC with milliseconds; the date and time part formatted once a second."""
        second, millis = divmod(round(self._clock() * 1000), 1000)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{millis:03d}Z".encode()
