"""Retrieval from a local collection: chunking, BM25 ranking, and reloading on change."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import JsonValue

from processors import InvalidParams, execute
from processors._retrieve import RetrieveProcessor
from processors._sources import LocalCollection, chunk_document, tokenize
from processors._tools import LocalSourceSpec, UnknownSource
from tests.fakes.steps import DISPATCHED_AT, step_request
from topics import ConfigurationError, PermanentError, StepKind

POLICIES = Path(__file__).parents[2] / "examples" / "policies"


@pytest.fixture
async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def _processor(
    client: httpx.AsyncClient, root: Path = POLICIES, **fields: Any
) -> RetrieveProcessor:
    spec = LocalSourceSpec(kind="local", path=root, **fields)
    return RetrieveProcessor({"policies": spec}, client, {})


def _documents(output: JsonValue) -> list[dict[str, Any]]:
    assert isinstance(output, dict) and isinstance(output["documents"], list)
    return [d for d in output["documents"] if isinstance(d, dict)]


def _request(query: str, top_k: int = 3, source: str = "policies") -> Any:
    return step_request(StepKind.retrieve, {"source": source, "query": query, "top_k": top_k})


@pytest.mark.parametrize(
    ("query", "document", "heading"),
    [
        (
            "How long until a card refund shows on my statement?",
            "refunds.md",
            "How refunds are paid",
        ),
        ("I want my money back", "refunds.md", "Refunds"),
        (
            "my parcel never arrived and tracking has not moved",
            "shipping.md",
            "Lost or late parcels",
        ),
        ("how much does express shipping cost", "shipping.md", "Shipping costs"),
        ("the battery does not hold its charge anymore", "warranty.md", "What the warranty covers"),
        ("I dropped my phone and cracked the screen", "warranty.md", "What it does not cover"),
        (
            "someone hacked my account",
            "account-security.md",
            "Suspicious logins and hacked accounts",
        ),
        ("the password reset link expired", "account-security.md", "Passwords"),
        ("how do I cancel my subscription", "subscriptions.md", "Cancelling a subscription"),
    ],
)
async def test_the_relevant_policy_comes_first(
    http_client: httpx.AsyncClient, query: str, document: str, heading: str
) -> None:
    outcome = await _processor(http_client).run(_request(query))

    assert isinstance(outcome.output, dict)
    assert outcome.output["query"] == query
    best = _documents(outcome.output)[0]
    assert (best["metadata"]["path"], best["metadata"]["heading"]) == (document, heading)


async def test_documents_have_the_contract_shape_best_first(
    http_client: httpx.AsyncClient,
) -> None:
    outcome = await _processor(http_client).run(_request("refund for a late delivery", top_k=4))

    documents = _documents(outcome.output)
    assert len(documents) == 4
    for document in documents:
        assert set(document) == {"id", "text", "score", "source", "metadata"}
        assert document["source"] == "policies"
        assert isinstance(document["score"], float) and document["score"] > 0
        path, index = document["id"].split("#")
        assert document["metadata"]["path"] == path
        assert document["metadata"]["chunk"] == int(index)
        assert document["text"].startswith("#")  # the chunk's heading line comes with it
    scores = [d["score"] for d in documents]
    assert scores == sorted(scores, reverse=True)
    assert documents[0]["metadata"]["title"] in {"Refunds", "Shipping and delivery"}


async def test_a_query_that_matches_nothing_finds_nothing(http_client: httpx.AsyncClient) -> None:
    outcome = await _processor(http_client).run(_request("xylophone quantum zebra"))

    assert outcome.output == {"query": "xylophone quantum zebra", "documents": []}


async def test_an_unknown_source_is_permanent_and_names_the_known_ones(
    http_client: httpx.AsyncClient,
) -> None:
    processor = _processor(http_client)

    result = await execute(
        processor, _request("refund", source="faq"), worker="w", now=lambda: DISPATCHED_AT
    )

    assert result.error is not None
    assert result.error.error_class == "UnknownSource"
    assert result.error.message == "source 'faq' is not configured (known: policies)"
    assert result.error.retryable is False
    assert issubclass(UnknownSource, PermanentError)


@pytest.mark.parametrize(
    "params",
    [
        {"source": "policies", "query": "  "},
        {"source": "policies", "query": "refund", "top_k": 0},
        {"source": "policies", "query": "refund", "top_k": 101},
        {"source": "policies"},
        {"query": "refund"},
    ],
)
async def test_bad_params_are_invalid(http_client: httpx.AsyncClient, params: Any) -> None:
    with pytest.raises(InvalidParams, match="retrieve params"):
        await _processor(http_client).run(step_request(StepKind.retrieve, params))


# -- loading and reloading --------------------------------------------------------------------


def _touch(path: Path, text: str) -> None:
    """Write, and move the modification time on, so the change shows even on coarse clocks."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    os.utime(path, ns=(before + 10**9, before + 10**9))


async def test_the_collection_is_read_once_and_again_when_files_change(
    tmp_path: Path, http_client: httpx.AsyncClient
) -> None:
    doc = tmp_path / "returns.md"
    _touch(doc, "# Returns\n\nReturns are accepted within 30 days.\n")
    collection = LocalCollection(tmp_path)
    processor = _processor(http_client, tmp_path)

    first = collection.passages
    assert collection.passages is first  # nothing changed: not read again
    assert [p.text for p in first] == ["# Returns\n\nReturns are accepted within 30 days."]

    _touch(doc, "# Returns\n\nReturns are accepted within 60 days.\n")
    assert "60 days" in collection.passages[0].text

    _touch(tmp_path / "gifts.md", "# Gift cards\n\nGift cards never expire.\n")
    outcome = await processor.run(_request("do gift cards expire"))
    assert _documents(outcome.output)[0]["id"] == "gifts.md#0"

    (tmp_path / "gifts.md").unlink()
    outcome = await processor.run(_request("do gift cards expire"))
    assert outcome.output == {"query": "do gift cards expire", "documents": []}


def test_hidden_files_other_extensions_and_links_out_are_skipped(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.md").write_text("# Secret\n\nThe vault code.\n")
    root = tmp_path / "docs"
    (root / ".git").mkdir(parents=True)
    (root / ".git" / "notes.md").write_text("# Notes\n\nHidden.\n")
    (root / ".draft.md").write_text("# Draft\n\nHidden.\n")
    (root / "image.png").write_bytes(b"\x89PNG")
    (root / "sub").mkdir()
    (root / "sub" / "faq.md").write_text("# FAQ\n\nAnswers.\n")
    (root / "leak.md").symlink_to(outside / "secret.md")

    passages = LocalCollection(root).passages

    assert [p.id for p in passages] == ["sub/faq.md#0"]


def test_a_directory_that_is_gone_is_a_configuration_error(tmp_path: Path) -> None:
    collection = LocalCollection(tmp_path / "gone")

    with pytest.raises(ConfigurationError, match="gone is not a directory"):
        collection.search("refund", 3)


def test_plain_text_files_are_cut_at_paragraphs(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("# not a heading\n\nFirst paragraph.\n\nSecond one.\n")

    passages = LocalCollection(tmp_path, glob="*.txt", max_chunk_chars=200).passages

    assert [p.text for p in passages] == ["# not a heading\n\nFirst paragraph.\n\nSecond one."]
    assert passages[0].title == "notes"


# -- chunking ---------------------------------------------------------------------------------


def test_markdown_is_cut_at_headings_with_the_heading_kept() -> None:
    text = (
        "# Shipping\n\nIntro.\n\n## Costs\n\nFree over $50.\n\n```\n# not a heading\n```\n\n"
        "### Express\n\n$14.99.\n\n## Empty\n"
    )

    title, chunks = chunk_document(text, 500)

    assert title == "Shipping"
    assert chunks == [
        ("Shipping", "# Shipping\n\nIntro."),
        ("Costs", "## Costs\n\nFree over $50.\n\n```\n# not a heading\n```"),
        ("Express", "### Express\n\n$14.99."),
    ]


def test_chunks_stay_within_the_bound() -> None:
    sentence = "Refunds go back to the original card within ten business days. "
    paragraphs = [sentence * n for n in (1, 3, 30)] + ["x" * 700]
    text = "## Refunds\n\n" + "\n\n".join(paragraphs)

    _, chunks = chunk_document(text, 300)

    assert all(len(chunk) <= 300 for _, chunk in chunks)
    assert all(chunk.startswith("## Refunds\n\n") for _, chunk in chunks)
    assert len(chunks) > 5
    kept = "".join(chunk.removeprefix("## Refunds\n\n") for _, chunk in chunks)
    assert "".join(kept.split()) == "".join(text.removeprefix("## Refunds").split())  # all kept


def test_every_example_chunk_is_bounded() -> None:
    spec = LocalSourceSpec(kind="local", path=POLICIES, max_chunk_chars=200)
    passages = LocalCollection(spec.path, spec.glob, spec.max_chunk_chars).passages

    assert {p.path for p in passages} == {
        "account-security.md",
        "refunds.md",
        "shipping.md",
        "subscriptions.md",
        "warranty.md",
    }
    assert all(len(p.text) <= 200 for p in passages)


def test_tokenize_folds_case_stop_words_and_suffixes() -> None:
    assert tokenize("The Refunds were refunded; shipping shipped ships!") == [
        "refund",
        "refund",
        "ship",
        "ship",
        "ship",
    ]
    assert tokenize("policies policy cancelled cancels damaged damage") == [
        "policy",
        "policy",
        "cancel",
        "cancel",
        "damag",
        "damag",
    ]
