"""An upstream or downstream team using confluent-kafka's standard Avro serdes, not baton.

Run as its own process (``python tests/outsiders/avro_team.py produce|consume ...``) so that
nothing of baton is imported: baton teaches fastavro its ``json`` logical type, which would
change how this process's serializer writes a JSON field. Here the field is the plain Avro
string any team would write. Prints what it did as JSON on stdout.

    produce BOOTSTRAP REGISTRY TOPIC SCHEMA_FILE COUNT PREFIX
        COUNT TaskSubmitted records (task ids PREFIX-0 ..), with AvroSerializer, which
        registers the schema under TOPIC-value itself (auto.register.schemas).
    consume BOOTSTRAP REGISTRY TOPIC GROUP COUNT TIMEOUT
        COUNT records with AvroDeserializer, each id looked up in the registry; one JSON
        line per record: its schema id and the deserialized value.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext


def produce(
    bootstrap: str, url: str, topic: str, schema_file: str, count: int, prefix: str
) -> None:
    registry = SchemaRegistryClient({"url": url})
    serialize = AvroSerializer(registry, Path(schema_file).read_text())
    # murmur2: the Java client's partitioner, which baton's keys follow
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random"})
    errors: list[str] = []
    context = SerializationContext(topic, MessageField.VALUE)
    for n in range(count):
        task = {
            "task_id": f"{prefix}-{n}",
            "workflow": "steady",
            "workflow_version": None,
            "input": json.dumps({"n": n}),  # the schema's JSON fields are strings of JSON
            "tenant": "default",
            "budget": None,
            "labels": {"from": "upstream"},
            "submitted_at": None,
        }
        producer.produce(
            topic,
            key=task["task_id"].encode(),
            value=serialize(task, context),
            on_delivery=lambda error, _: errors.append(str(error)) if error else None,
        )
    left = producer.flush(60)
    registry.close()
    print(json.dumps({"produced": count, "unsent": left, "errors": errors}))


def consume(bootstrap: str, url: str, topic: str, group: str, count: int, timeout: float) -> None:
    registry = SchemaRegistryClient({"url": url})
    deserialize = AvroDeserializer(registry)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([topic])
    context = SerializationContext(topic, MessageField.VALUE)
    seen = 0
    deadline = time.monotonic() + timeout
    try:
        while seen < count and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error() is not None:
                print(json.dumps({"error": str(message.error())}), flush=True)
                continue
            value = message.value()
            record = deserialize(value, context)
            schema_id = int.from_bytes(value[1:5], "big")
            print(json.dumps({"schema_id": schema_id, "value": record}, default=str), flush=True)
            seen += 1
    finally:
        consumer.close()
        registry.close()


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "produce":
        produce(args[0], args[1], args[2], args[3], int(args[4]), args[5])
    else:
        consume(args[0], args[1], args[2], args[3], int(args[4]), float(args[5]))
