"""Schema Registry mode against a real registry (Apicurio, Confluent API) and the real broker.

The clients on the other side are confluent-kafka's (librdkafka, and its ``AvroSerializer``,
``AvroDeserializer`` and ``SchemaRegistryClient``): no one here wrote them, so what they read
and write is what any team using the standard Avro serdes sees.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from streams._config import load_settings
from tests.apicurio import apicurio
from tests.integration.inprocess import SCRIPTED_MODELS, STEADY
from tests.integration.workers import Cluster, Workers, free_port
from topics import (
    Codec,
    ConfigurationError,
    DecodeError,
    RunResult,
    RunStatus,
    TaskSubmitted,
    TopicCatalog,
)
from topics._avro import full_name
from topics._confluent import RegistryClient, check_schemas, register_schemas, subjects
from topics._registry import SchemaRegistry

pytestmark = pytest.mark.integration

RUNS = 100
TEAM = Path(__file__).parents[1] / "outsiders" / "avro_team.py"


@pytest.fixture(scope="module")
def registry_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with apicurio(tmp_path_factory.mktemp("apicurio") / "apicurio.log") as url:
        yield url


@pytest.fixture
def cluster(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, registry_url: str) -> Cluster:
    models = tmp_path / "models.yaml"
    models.write_text(SCRIPTED_MODELS)
    return Cluster(
        kafka_bootstrap,
        topic_prefix,
        tmp_path / "home",
        models_file=models,
        extra_env={"BATON_SCHEMA_REGISTRY_URL": registry_url},
    )


def _newest(event: type) -> dict[str, Any]:
    return SchemaRegistry.load().latest(full_name(event)).schema


def test_baton_registers_each_topic_subject_backward_and_again_changes_nothing(
    cluster: Cluster, registry_url: str
) -> None:
    catalog = cluster.catalog
    with RegistryClient(registry_url) as client:
        ids = register_schemas(client, catalog)
        again = register_schemas(client, catalog)
        checks = check_schemas(client, catalog)
    assert again == ids
    with SchemaRegistryClient({"url": registry_url}) as theirs:
        for subject, event in subjects(catalog):
            latest = theirs.get_latest_version(subject)
            assert latest.schema_id == ids[event], subject
            assert json.loads(latest.schema.schema_str) == _newest(event), subject
            assert theirs.get_compatibility(subject) == "BACKWARD", subject
    assert {c.subject for c in checks} == {s for s, _ in subjects(catalog)}
    assert all(c.same and c.problem is None for c in checks)
    # the codec writes those ids, and reads them
    codec = Codec(remote=(RegistryClient(registry_url), ids))
    now = datetime.now(UTC)
    result = RunResult(
        run_id="r-1",
        workflow="w",
        workflow_version="1",
        status=RunStatus.completed,
        output={"a": 1},
        started_at=now,
        finished_at=now,
    )
    data = codec.encode(result)
    assert int.from_bytes(data[1:5], "big") == ids[RunResult]
    assert codec.decode(data, RunResult) == result


def test_an_incompatible_registered_schema_stops_a_worker_from_starting(
    cluster: Cluster, workers: Workers, registry_url: str
) -> None:
    subject = f"{cluster.catalog.results.name}-value"
    # someone registered a RunResult with a required field baton's schema lacks and no
    # field baton needs: baton could not read what they write under this subject
    theirs = {
        "type": "record",
        "name": "RunResult",
        "namespace": "baton.events",
        "fields": [{"name": "their_id", "type": "long"}],
    }
    response = httpx.post(
        f"{registry_url}/subjects/{subject}/versions", json={"schema": json.dumps(theirs)}
    )
    assert response.status_code == 200, response.text
    before = httpx.get(f"{registry_url}/subjects").json()

    check = cluster.baton("schemas", "check")
    assert check.returncode == 1, check.stdout + check.stderr
    assert subject in check.stdout and "incompatible" in check.stdout

    worker = workers.start("sr-refused", ready=False)
    assert worker.process is not None
    worker.process.wait(timeout=60)
    assert worker.process.returncode != 0
    log = worker.log_tail()
    assert "schema_registry_url" in log and subject in log, log
    # it registered nothing: the registry's subjects are as they were
    assert httpx.get(f"{registry_url}/subjects").json() == before
    with pytest.raises(ConfigurationError, match=subject):
        load_settings(cluster.env()).codec()


def _team(*args: str, timeout: float) -> list[dict[str, Any]]:
    """Run the outside team's program (its own process: nothing of baton imported)."""
    done = subprocess.run(
        [sys.executable, str(TEAM), *args],
        capture_output=True,
        text=True,
        timeout=timeout + 60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def test_an_upstream_avro_serializer_publishes_tasks_and_a_deserializer_reads_the_results(
    cluster: Cluster, workers: Workers, registry_url: str, tmp_path: Path
) -> None:
    catalog: TopicCatalog = cluster.catalog
    cluster.deploy(steady=STEADY)  # the CLI registers baton's schemas (the worker finds them)
    workers.start("sr-worker")

    # upstream: confluent-kafka's AvroSerializer with the TaskSubmitted schema baton ships,
    # registering it itself (auto.register.schemas, the serializer's default)
    schema_file = tmp_path / "TaskSubmitted.avsc"
    schema_file.write_text(json.dumps(_newest(TaskSubmitted), indent=1))
    (sent,) = _team(
        "produce",
        cluster.bootstrap,
        registry_url,
        catalog.tasks.name,
        str(schema_file),
        str(RUNS),
        "sr",
        timeout=60,
    )
    assert sent == {"produced": RUNS, "unsent": 0, "errors": []}

    # downstream: confluent-kafka's AvroDeserializer, looking every id up in the registry
    read = _team(
        "consume",
        cluster.bootstrap,
        registry_url,
        catalog.results.name,
        f"{cluster.prefix}-downstream",
        str(RUNS),
        "180",
        timeout=180,
    )
    assert all("error" not in line for line in read), read[:3]
    results = {line["value"]["run_id"]: line["value"] for line in read}
    assert set(results) == {f"sr-{n}" for n in range(RUNS)}
    assert len(read) == RUNS  # once each
    for run_id, result in results.items():
        assert result["status"] == "completed", result
        output = json.loads(result["output"])  # a JSON field: a string of JSON on the wire
        assert str(output["n"]) == run_id.removeprefix("sr-"), output
        assert result["labels"] == {"from": "upstream"}
    # every result carries the id the registry holds for the results subject
    with SchemaRegistryClient({"url": registry_url}) as registry:
        latest = registry.get_latest_version(f"{catalog.results.name}-value")
    assert {line["schema_id"] for line in read} == {latest.schema_id}


def test_ids_the_registry_does_not_hold_or_that_are_not_baton_events_are_decode_errors(
    cluster: Cluster, registry_url: str
) -> None:
    other = {"type": "record", "name": "Invoice", "namespace": "acme", "fields": []}
    response = httpx.post(
        f"{registry_url}/subjects/{cluster.prefix}.invoices-value/versions",
        json={"schema": json.dumps(other)},
    )
    assert response.status_code == 200, response.text
    invoice_id = response.json()["id"]
    with RegistryClient(registry_url) as client:
        codec = Codec(remote=(client, register_schemas(client, cluster.catalog)))
        with pytest.raises(DecodeError, match="not in the schema registry"):
            codec.decode(b"\x00" + (2**31 - 7).to_bytes(4, "big") + b"\x00", RunResult)
        with pytest.raises(DecodeError, match="acme.Invoice, not a baton event"):
            codec.decode(b"\x00" + invoice_id.to_bytes(4, "big"), RunResult)
    # a registry that cannot be reached: a decode error after the client's bounded tries,
    # so the record is dead-lettered with its bytes, not retried for ever
    with RegistryClient(f"http://127.0.0.1:{free_port()}", attempts=2, timeout=1) as gone:
        codec = Codec(remote=(gone, {}))
        started = time.monotonic()
        with pytest.raises(DecodeError, match="failed after 2 attempts"):
            codec.decode(b"\x00\x00\x00\x00\x07\x00", RunResult)
        assert time.monotonic() - started < 10
        with pytest.raises(ConfigurationError, match="failed after 2 attempts"):
            register_schemas(gone, cluster.catalog)
