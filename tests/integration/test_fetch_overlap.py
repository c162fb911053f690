"""The coordinator's next fetch is outstanding while it handles what the last one brought.

aiokafka sends a broker its next fetch only once everything fetched from it is consumed, from
its own task; the loop yields for it (``_let_the_next_fetch_go``) before a pass that does not
yield. If an aiokafka release needs more turns of the event loop, this fails, and a result
arriving during a pass would wait for the pass and then a whole fetch round trip again.
"""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.coordinator._loop import FETCH_MIN_BYTES, FETCH_WAIT_MS, _let_the_next_fetch_go


async def test_the_next_fetch_is_in_flight_before_a_pass_starts(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    topic = f"{topic_prefix}.overlap"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 4, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=1)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=f"{topic_prefix}-overlap",
        auto_offset_reset="earliest",
        fetch_max_wait_ms=FETCH_WAIT_MS,
        fetch_min_bytes=FETCH_MIN_BYTES,
    )
    await producer.start()
    await consumer.start()
    try:

        async def produce() -> None:
            for i in range(300):
                await producer.send(topic, b"result", partition=i % 4)
                await asyncio.sleep(0.003)

        sending = asyncio.create_task(produce())
        passes = overlapped = received = 0
        deadline = time.monotonic() + 60
        while received < 300 and time.monotonic() < deadline:
            records = await consumer.getmany(timeout_ms=100)
            if not records:
                continue
            await _let_the_next_fetch_go()
            passes += 1
            overlapped += bool(consumer._fetcher._in_flight)
            received += sum(len(batch) for batch in records.values())
            time.sleep(0.002)  # a pass: handling records without yielding
        await sending
        assert received == 300
        assert passes > 20 and overlapped == passes
    finally:
        await consumer.stop()
        await producer.stop()
