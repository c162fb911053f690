"""Retrieval from an HTTP search endpoint: the loopback fake tool server plays the endpoint."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import JsonValue

from processors import InvalidParams
from processors._retrieve import RetrieveProcessor
from processors._tools import (
    HttpSourceSpec,
    ToolFailed,
    ToolRateLimited,
    ToolRejected,
    ToolRequestRefused,
    ToolsConfig,
    ToolUnavailable,
)
from tests.fakes.steps import step_request
from tests.fakes.tool_server import ErrorStatus, FakeToolServer, Json, RecordedRequest, Text
from topics import StepKind, StepRequested

KEY = "search-key-51f0a2"
HITS = {
    "took": 3,
    "hits": [
        {
            "article_id": 17,
            "snippet": "Refunds take 5 to 10 days.",
            "relevance": 7.5,
            "title": "Refund timing",
            "url": "https://help.example.com/17",
        },
        {
            "article_id": "a-3",
            "snippet": "Card refunds go to the card.",
            "relevance": 4,
            "title": "Refund methods",
            "url": "https://help.example.com/a-3",
        },
        {
            "article_id": 9,
            "snippet": "Store credit after 30 days.",
            "relevance": 1.25,
            "title": "Store credit",
            "url": "https://help.example.com/9",
        },
    ],
}


class _Sleeps:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def _source(base_url: str, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "kind": "http",
        "base_url": base_url,
        "path": "/v1/search",
        "query": {"q": "{{ query }}", "size": "{{ top_k }}"},
        "headers": {"X-Api-Key": "{{ secrets.SEARCH_API_KEY }}"},
        "results": {
            "items": "hits",
            "id": "article_id",
            "text": "snippet",
            "score": "relevance",
            "metadata": "{title: title, url: url}",
        },
    }
    spec.update(overrides)
    return spec


def _processor(
    client: httpx.AsyncClient, base_url: str, sleeps: _Sleeps | None = None, **overrides: Any
) -> RetrieveProcessor:
    config = ToolsConfig.model_validate({"sources": {"help": _source(base_url, **overrides)}})
    assert isinstance(config.sources["help"], HttpSourceSpec)
    return RetrieveProcessor(
        config.sources, client, {"SEARCH_API_KEY": KEY}, sleep=sleeps or _Sleeps()
    )


def _documents(output: JsonValue) -> list[dict[str, Any]]:
    assert isinstance(output, dict) and isinstance(output["documents"], list)
    return [d for d in output["documents"] if isinstance(d, dict)]


def _request(query: str = "refund card", top_k: int = 5) -> StepRequested:
    return step_request(StepKind.retrieve, {"source": "help", "query": query, "top_k": top_k})


async def test_a_search_is_sent_and_its_results_mapped_to_documents(
    tool_server: FakeToolServer, http_client: httpx.AsyncClient
) -> None:
    tool_server.route("GET", "/v1/search", Json(HITS))
    processor = _processor(http_client, tool_server.url)

    outcome = await processor.run(_request("refund to my card?", top_k=2))

    assert outcome.output == {
        "query": "refund to my card?",
        "documents": [
            {
                "id": "17",
                "text": "Refunds take 5 to 10 days.",
                "score": 7.5,
                "source": "help",
                "metadata": {"title": "Refund timing", "url": "https://help.example.com/17"},
            },
            {
                "id": "a-3",
                "text": "Card refunds go to the card.",
                "score": 4.0,
                "source": "help",
                "metadata": {"title": "Refund methods", "url": "https://help.example.com/a-3"},
            },
        ],
    }
    (seen,) = tool_server.requests
    assert seen.method == "GET"
    assert seen.query == {"q": ["refund to my card?"], "size": ["2"]}
    assert seen.header("x-api-key") == KEY
    assert seen.header("idempotency-key") == "run-1/s"
    assert seen.raw_body == b""


async def test_a_post_search_sends_its_body_template(
    tool_server: FakeToolServer, http_client: httpx.AsyncClient
) -> None:
    def search(request: RecordedRequest) -> Json:
        size = request.body["size"]
        return Json({"data": {"results": [{"id": i, "text": f"r{i}"} for i in range(size)]}})

    tool_server.route("POST", "/v1/search", search)
    processor = _processor(
        http_client,
        tool_server.url,
        method="POST",
        query={},
        body={"query": {"match": "{{ query }}"}, "size": "{{ top_k }}"},
        results={"items": "data.results", "score": None},
    )

    outcome = await processor.run(_request("warranty", top_k=3))

    assert tool_server.requests[0].body == {"query": {"match": "warranty"}, "size": 3}
    documents = _documents(outcome.output)
    assert [(d["id"], d["text"], d["score"], d["metadata"]) for d in documents] == [
        ("0", "r0", 1.0, {}),
        ("1", "r1", 0.5, {}),
        ("2", "r2", round(1 / 3, 6), {}),
    ]


async def test_no_results_is_an_empty_list(
    tool_server: FakeToolServer, http_client: httpx.AsyncClient
) -> None:
    tool_server.route("GET", "/v1/search", Json({"took": 1}))

    outcome = await _processor(http_client, tool_server.url).run(_request())

    assert outcome.output == {"query": "refund card", "documents": []}


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ({"hits": {"a": 1}}, r"results 'hits' is a dict, not a list"),
        ({"hits": [{"article_id": 1, "snippet": 3}]}, r"result 0: text 'snippet' is not a string"),
        ({"hits": [{"article_id": [1], "snippet": "x"}]}, r"id 'article_id' is not a string"),
        ({"hits": [{"snippet": "x", "relevance": "high"}]}, r"score 'relevance' is not a number"),
        ({"hits": [{"snippet": "x", "title": "t", "url": 1}, 2]}, r"result 1: text"),
    ],
)
async def test_an_answer_in_another_shape_is_a_permanent_failure(
    tool_server: FakeToolServer,
    http_client: httpx.AsyncClient,
    answer: Any,
    message: str,
) -> None:
    tool_server.route("GET", "/v1/search", Json(answer))

    with pytest.raises(ToolFailed, match=message):
        await _processor(http_client, tool_server.url).run(_request())
    assert tool_server.call_count == 1


async def test_failures_are_classified_and_retried_like_tools(
    tool_server: FakeToolServer, http_client: httpx.AsyncClient
) -> None:
    tool_server.route("GET", "/v1/search", Json(HITS))
    tool_server.enqueue(
        "GET", "/v1/search", ErrorStatus(503), Text("<html>", content_type="text/html")
    )
    tool_server.enqueue("GET", "/v1/search", ErrorStatus(429, retry_after="2"))
    sleeps = _Sleeps()
    processor = _processor(http_client, tool_server.url, sleeps, retries=3)

    outcome = await processor.run(_request())

    assert len(_documents(outcome.output)) == 3
    assert tool_server.call_count == 4
    assert sleeps.waits[2] == 2.0
    assert {r.header("idempotency-key") for r in tool_server.requests} == {"run-1/s"}


async def test_retries_run_out_with_the_last_error(
    tool_server: FakeToolServer, http_client: httpx.AsyncClient
) -> None:
    tool_server.route("GET", "/v1/search", ErrorStatus(429))

    with pytest.raises(ToolRateLimited):
        await _processor(http_client, tool_server.url, retries=1).run(_request())
    assert tool_server.call_count == 2


async def test_a_refusal_is_permanent_and_the_key_is_redacted(
    tool_server: FakeToolServer, http_client: httpx.AsyncClient
) -> None:
    tool_server.route(
        "GET", "/v1/search", lambda r: ErrorStatus(401, f"bad key {r.header('x-api-key')}")
    )

    with pytest.raises(ToolRejected, match=r"HTTP 401: bad key \[redacted\]") as err:
        await _processor(http_client, tool_server.url).run(_request())
    assert KEY not in str(err.value)
    assert tool_server.call_count == 1


async def test_a_body_that_is_not_json_is_retryable(
    tool_server: FakeToolServer, http_client: httpx.AsyncClient
) -> None:
    tool_server.route("GET", "/v1/search", Text("<html>proxy error</html>"))

    with pytest.raises(ToolUnavailable, match="the answer is not JSON"):
        await _processor(http_client, tool_server.url, retries=0).run(_request())


@pytest.mark.parametrize("query", ["../../admin", "x/../../admin", "..", "%2e%2e"])
async def test_a_query_in_the_path_cannot_climb_out_of_it(
    tool_server: FakeToolServer, http_client: httpx.AsyncClient, query: str
) -> None:
    processor = _processor(http_client, tool_server.url, path="/v1/search/{{ query }}", query={})

    with pytest.raises(ToolRequestRefused):
        await processor.run(_request(query))
    assert tool_server.call_count == 0


@pytest.mark.parametrize(
    ("query", "sent"), [("//evil.example", "%2F%2Fevil.example"), ("@evil", "%40evil")]
)
async def test_a_query_in_the_path_stays_one_segment(
    tool_server: FakeToolServer, http_client: httpx.AsyncClient, query: str, sent: str
) -> None:
    tool_server.route("GET", f"/v1/search/{sent}", Json({"hits": []}))
    processor = _processor(http_client, tool_server.url, path="/v1/search/{{ query }}", query={})

    await processor.run(_request(query))

    assert [r.path for r in tool_server.requests] == [f"/v1/search/{sent}"]


async def test_a_query_is_required(http_client: httpx.AsyncClient) -> None:
    processor = _processor(http_client, "http://127.0.0.1:9")

    with pytest.raises(InvalidParams, match="query: Value error, the query is empty"):
        await processor.run(_request(""))
