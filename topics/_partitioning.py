"""Where a run lives: the partition of its run id, the same number on every topic.

Keys are the run id in UTF-8 and the partition is Kafka's default: murmur2 of the key, made
positive, modulo the partition count (what the Java client and aiokafka do by default).
baton writes every record of a run to this partition explicitly, so co-partitioning holds
even when an upstream producer used another partitioner.
"""

from __future__ import annotations

from functools import lru_cache

from aiokafka.partitioner import murmur2

from topics._events import Event, TaskSubmitted

__all__ = ["partition_for", "run_id_of"]


# aiokafka's murmur2 is pure Python (about 5 us), and a run's events ask for it many times.
@lru_cache(maxsize=65536)
def partition_for(run_id: str, partitions: int) -> int:
    """The partition of a run."""
    hashed: int = murmur2(run_id.encode())
    return (hashed & 0x7FFFFFFF) % partitions


def run_id_of(event: Event) -> str | None:
    """The run an event belongs to (its record key), or ``None``."""
    if isinstance(event, TaskSubmitted):
        return event.task_id
    run_id = getattr(event, "run_id", None)
    return run_id if isinstance(run_id, str) and run_id else None
