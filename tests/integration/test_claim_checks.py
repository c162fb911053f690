"""Claim checks on the real broker: a 5 MB document and a 2 MB answer, no large record.

A retrieve step reads a 5 MB document from a local source (one chunk), an llm step whose
loopback OpenAI-compatible provider answers 2 MB runs after it, and a transform reads the
document. The run completes with the right content (checked by hash through the store, as a
downstream consumer would read it), and no record on any topic of the catalog is over the
claim threshold. Once with a local directory store, once with an S3 bucket on moto's S3
server (the real S3 wire format, through boto3).

Hostile: a task whose input names a missing blob, a blob whose bytes were altered, or another
run's blob, is rejected saying so, and the worker goes on.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from processors import BlobReference, BlobStore, Claims, LocalBlobStore
from processors._s3 import S3BlobStore
from processors._sources import LocalCollection
from streams._client import BatonClient
from tests.fakes import ChatAnswer, FakeOpenAIServer, RecordedRequest
from tests.integration.workers import Cluster, Workers, api_access, ops
from tests.s3_server import CREDENTIALS, S3Server, s3_server
from topics import RunStatus, TaskSubmitted

THRESHOLD = 256 * 1024
CHUNK = 6_000_000

WORKFLOW = """
workflow: contract-review
version: 1
steps:
  fetch: {kind: retrieve, source: contracts, query: "{{ input.query }}", top_k: 1}
  write:
    kind: llm
    model: writer
    after: [fetch]
    cache: false
    prompt: "Review {{ steps.fetch.output.documents[0].metadata.title }}, which opens:
      {{ steps.fetch.output.documents[0].text[:40] }}"
  measure:
    kind: transform
    after: [fetch]
    output:
      title: "{{ steps.fetch.output.documents[0].metadata.title }}"
      chars: "{{ steps.fetch.output.documents[0].text | length }}"
      tail: "{{ steps.fetch.output.documents[0].text[-20:] }}"
"""


def contract() -> str:
    """About 5 MB of markdown: one heading, paragraphs of numbered clauses."""
    paragraphs = [
        f"Clause {i:06d}. The supplier shall deliver lot {i * 7 % 1000:03d} "
        f"and indemnify the buyer against claim {i * 13 % 997:03d} in full."
        for i in range(50_000)
    ]
    return "# Master services agreement\n\n" + "\n\n".join(paragraphs) + "\n"


def answer() -> str:
    """A 2 MB model answer."""
    line = "The agreement binds the supplier to deliver and to indemnify. "
    return (line * (2_000_000 // len(line) + 1))[:2_000_000]


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


@pytest.fixture
def writer() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


def setup(
    kafka_bootstrap: str,
    topic_prefix: str,
    tmp_path: Path,
    writer: FakeOpenAIServer,
    store_env: dict[str, str],
) -> Cluster:
    documents = tmp_path / "contracts"
    documents.mkdir()
    (documents / "msa.md").write_text(contract())
    tools = tmp_path / "tools.yaml"
    tools.write_text(
        "sources:\n  contracts:\n    kind: local\n    path: contracts\n"
        f"    glob: '*.md'\n    max_chunk_chars: {CHUNK}\n"
    )
    models = tmp_path / "models.yaml"
    models.write_text(
        "routes:\n  writer:\n    provider: openai\n    model: m-writer\n"
        f"    base_url: {writer.base_url}\n    timeout_s: 30\n"
    )
    cluster = Cluster(
        kafka_bootstrap,
        topic_prefix,
        tmp_path / "home",
        models_file=models,
        extra_env={
            "BATON_TOOLS_FILE": str(tools),
            **api_access(tmp_path / "access"),
            **store_env,
        },
    )
    cluster.deploy(review=WORKFLOW)
    return cluster


async def largest_record(cluster: Cluster) -> tuple[int, str]:
    """The largest record value on any topic of the catalog (aborted ones too), and its topic.

    One consumer reads every partition of every topic to its end offsets.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=cluster.bootstrap,
        enable_auto_commit=False,
        group_id=None,
        isolation_level="read_uncommitted",
        max_partition_fetch_bytes=2 * 1024 * 1024,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(t.name, p) for t in cluster.catalog for p in range(t.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        largest, deadline = (0, ""), time.monotonic() + 60
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            assert time.monotonic() < deadline, "could not read the topics to their ends"
            for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                for record in records:
                    largest = max(largest, (len(record.value or b""), tp.topic))
        return largest
    finally:
        await consumer.stop()


async def run_state(worker_api: str, run_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{worker_api}/v1/runs/{run_id}", headers=ops())
        assert response.status_code == 200, response.text
        state: dict[str, Any] = response.json()
        return state


async def review_a_contract(cluster: Cluster, workers: Workers, writer: FakeOpenAIServer) -> None:
    prompts: list[str] = []

    def reply(request: RecordedRequest) -> ChatAnswer:
        prompts.append(request.body["messages"][-1]["content"])
        return ChatAnswer(answer())

    writer.reply(reply)
    worker = workers.start("w1")
    async with BatonClient(cluster.bootstrap, cluster.catalog) as client:
        await client.send(
            [TaskSubmitted(task_id="big-1", workflow="contract-review", input={"query": "clause"})]
        )
        results = await client.wait(["big-1"], timeout_s=180)
    result = results["big-1"]
    assert result.status == RunStatus.completed, result.reason

    claims = Claims(store_of(cluster), THRESHOLD)  # a downstream consumer's own reader
    output = await claims.resolve(result.output)
    assert isinstance(output, dict)
    # The 2 MB answer, byte for byte, through the reference on the results topic.
    assert hashlib.sha256(output["write"].encode()).digest() == (  # type: ignore[union-attr]
        hashlib.sha256(answer().encode()).digest()
    )
    assert result.output != output  # it travelled as a reference
    expected = LocalCollection(cluster.home.parent / "contracts", "*.md", CHUNK).passages
    assert len(expected) == 1
    text = expected[0].text
    # The coordinator rendered the prompt from the resolved document.
    assert prompts == [f"Review Master services agreement, which opens: {text[:40]}"]
    # The transform's processor read the resolved document too.
    assert len(text.encode()) > 4_900_000
    assert output["measure"] == {
        "title": "Master services agreement",
        "chars": len(text),
        "tail": text[-20:],
    }
    # The run state keeps a reference; resolved, it is the document, checked by hash.
    state = await run_state(worker.api, "big-1")
    fetched = next(s for s in state["steps"] if s["step"] == "fetch")["output"]
    assert BlobReference.parse(fetched["documents"][0]["text"]) is not None
    document = await claims.resolve(fetched)
    assert isinstance(document, dict)
    got = document["documents"][0]["text"]  # type: ignore[index]
    assert hashlib.sha256(got.encode()).digest() == hashlib.sha256(text.encode()).digest()

    size, topic = await largest_record(cluster)
    assert size <= THRESHOLD, f"a {size}-byte record on {topic}"


def store_of(cluster: Cluster) -> BlobStore:
    url = cluster.extra_env["BATON_BLOB_STORE"]
    if url.startswith("s3://"):
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        endpoint = cluster.extra_env["BATON_BLOB_ENDPOINT_URL"]
        import boto3

        client = boto3.session.Session(
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
        ).client("s3", endpoint_url=endpoint)
        return S3BlobStore(bucket, prefix, client=client)
    return LocalBlobStore(Path(url))


@pytest.fixture
def store_env(request: pytest.FixtureRequest, tmp_path: Path, topic_prefix: str) -> dict[str, str]:
    """The workers' blob store settings: a directory, or a bucket on the S3 server."""
    if getattr(request, "param", "local") == "local":
        return {"BATON_BLOB_STORE": str(tmp_path / "blobs")}
    s3: S3Server = request.getfixturevalue("s3")
    return {
        "BATON_BLOB_STORE": f"s3://{s3.bucket}/{topic_prefix}",
        "BATON_BLOB_ENDPOINT_URL": s3.endpoint_url,
        **CREDENTIALS,
    }


@pytest.fixture
def cluster(
    kafka_bootstrap: str,
    topic_prefix: str,
    tmp_path: Path,
    writer: FakeOpenAIServer,
    store_env: dict[str, str],
) -> Cluster:
    return setup(kafka_bootstrap, topic_prefix, tmp_path, writer, store_env)


@pytest.mark.parametrize("store_env", ["local", "s3"], indirect=True)
async def test_a_5mb_document_and_a_2mb_answer_travel_by_reference(
    cluster: Cluster, workers: Workers, writer: FakeOpenAIServer
) -> None:
    await review_a_contract(cluster, workers, writer)
    store = store_of(cluster)
    reference = BlobReference.parse(
        await Claims(store, THRESHOLD).claim("big-1", answer())  # the same bytes: same key
    )
    assert reference is not None
    assert await store.get(reference.key()) == orjson.dumps(answer())


async def test_a_missing_or_altered_blob_rejects_the_task_saying_so_and_work_goes_on(
    cluster: Cluster, workers: Workers, writer: FakeOpenAIServer, tmp_path: Path
) -> None:
    writer.reply(ChatAnswer("fine"))
    # An upstream system claimed its input itself, then the blob went away.
    missing = BlobReference("ab" * 32, 4000, "lost-1").to_json()
    # And one whose blob was overwritten with other bytes of the same size.
    store = LocalBlobStore(tmp_path / "blobs")
    text = orjson.dumps("q" * 4000)
    altered = BlobReference(hashlib.sha256(text).hexdigest(), len(text), "altered-1")
    await store.put(altered.key(), orjson.dumps("z" * 4000))
    worker = workers.start("w1")
    tasks = [
        TaskSubmitted(task_id="lost-1", workflow="contract-review", input={"query": missing}),
        TaskSubmitted(
            task_id="altered-1", workflow="contract-review", input={"query": altered.to_json()}
        ),
        # A task naming another run's blob: it would read that run's payload.
        TaskSubmitted(
            task_id="thief-1", workflow="contract-review", input={"query": altered.to_json()}
        ),
    ]
    # Through the API, a 600 KB input: stored before the task is published.
    notes = "n" * 600_000
    async with httpx.AsyncClient() as http:
        posted = await http.post(
            f"{worker.api}/v1/tasks",
            json={
                "task_id": "fine-1",
                "workflow": "contract-review",
                "input": {"query": "clause", "notes": notes},
            },
            headers=ops(),
        )
    assert posted.status_code == 202, posted.text
    async with BatonClient(cluster.bootstrap, cluster.catalog) as client:
        await client.send(tasks)
        results = await client.wait([t.task_id for t in tasks] + ["fine-1"], timeout_s=180)
    lost, bad, fine = results["lost-1"], results["altered-1"], results["fine-1"]
    assert lost.status == RunStatus.rejected
    assert lost.reason is not None and "runs/lost-1/abab" in lost.reason, lost.reason
    assert "is not in the local store" in lost.reason
    assert bad.status == RunStatus.rejected
    assert bad.reason is not None and "does not match its hash" in bad.reason, bad.reason
    thief = results["thief-1"]
    assert thief.status == RunStatus.rejected
    assert thief.reason is not None and "reads only its own blobs" in thief.reason
    assert fine.status == RunStatus.completed, fine.reason
    state = await run_state(worker.api, "fine-1")
    assert await Claims(store, THRESHOLD).resolve(state["input"]) == {
        "query": "clause",
        "notes": notes,
    }
    size, topic = await largest_record(cluster)
    assert size <= THRESHOLD, f"a {size}-byte record on {topic}"
