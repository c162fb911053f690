"""The ``sentiment`` kind against its scoring service on loopback, as a worker runs it."""

from __future__ import annotations

import socket
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from baton_sentiment import (
    URL_VARIABLE,
    SentimentParams,
    SentimentProcessor,
    SentimentRejected,
    SentimentUnavailable,
)
from baton_sentiment.service import SentimentService, score

from processors import CustomKindProcessor, KindSetup, execute, installed_kinds
from topics import ConfigurationError, StepKind, StepRequested, StepStatus

T0 = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)


def request(params: dict[str, Any], *, deadline_s: float = 30.0) -> StepRequested:
    now = datetime.now(UTC)
    return StepRequested(
        run_id="ticket-7",
        step="mood",
        kind=StepKind.custom,
        custom_kind="sentiment",
        attempt=1,
        idempotency_key="ticket-7/mood",
        workflow="support",
        workflow_version="abc",
        params=params,
        dispatched_at=now,
        deadline_at=now + timedelta(seconds=deadline_s),
    )


def kind(url: str | None, client: httpx.AsyncClient) -> CustomKindProcessor:
    environ = {URL_VARIABLE: url} if url is not None else {}
    return CustomKindProcessor("sentiment", SentimentProcessor(KindSetup(client, environ)))


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as shared:  # as a worker's: no retries of its own
        yield shared


@pytest.fixture
def service() -> Iterator[SentimentService]:
    with SentimentService() as running:
        yield running


def test_the_kind_is_registered_under_its_entry_point() -> None:
    installed = installed_kinds()["sentiment"]
    assert installed.processor is SentimentProcessor
    assert installed.processor.params_model is SentimentParams
    assert installed.origin == "baton-sentiment: baton_sentiment:SentimentProcessor"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Thanks, that was fast and helpful", (1.0, 3)),
        ("The app is broken and support was slow", (-1.0, 2)),
        ("It is not good", (-1.0, 1)),
        ("good, but the refund is late", (-1 / 3, 3)),
        ("I would like to change my address", (0.0, 0)),
    ],
)
def test_the_lexicon_scores_words_and_negations(text: str, expected: tuple[float, int]) -> None:
    assert score(text) == pytest.approx(expected)


async def test_a_text_is_scored_and_labelled_through_the_service(
    service: SentimentService, client: httpx.AsyncClient
) -> None:
    happy = await kind(service.url, client).run(request({"text": "great, thanks!"}))
    unsure = await kind(service.url, client).run(
        request({"text": "good but slow and late", "threshold": 0.5})
    )

    assert happy.output == {"label": "positive", "score": 1.0, "matched": 2}
    assert unsure.output == {"label": "neutral", "score": pytest.approx(-1 / 3), "matched": 3}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_service_that_is_down_is_a_retryable_failure(client: httpx.AsyncClient) -> None:
    processor = kind(f"http://127.0.0.1:{_closed_port()}", client)
    with pytest.raises(SentimentUnavailable, match="ConnectError"):
        await processor.run(request({"text": "hello"}))

    result = await execute(processor, request({"text": "hello"}), worker="w", now=lambda: T0)
    assert result.status is StepStatus.failed and result.error is not None
    assert (result.error.error_class, result.error.retryable) == ("SentimentUnavailable", True)


class _Busy(BaseHTTPRequestHandler):
    """A service that is overloaded: 503 with Retry-After, every time."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(503)
        self.send_header("Retry-After", "7")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


async def test_a_busy_service_asks_for_its_retry_after(client: httpx.AsyncClient) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Busy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        result = await execute(
            kind(f"http://{host!s}:{port}", client),
            request({"text": "hi"}),
            worker="w",
            now=lambda: T0,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert result.error is not None
    assert (result.error.error_class, result.error.retryable) == ("SentimentUnavailable", True)
    assert result.error.retry_after_s == 7.0


async def test_a_refused_request_is_a_permanent_failure(
    service: SentimentService, client: httpx.AsyncClient
) -> None:
    with pytest.raises(SentimentRejected, match="HTTP 404"):
        await kind(f"{service.url}/elsewhere", client).run(request({"text": "hello"}))


async def test_params_that_break_the_model_are_invalid_params(
    service: SentimentService, client: httpx.AsyncClient
) -> None:
    result = await execute(
        kind(service.url, client),
        request({"text": "hi", "threshold": 3}),
        worker="w",
        now=lambda: T0,
    )
    assert result.error is not None
    assert result.error.error_class == "InvalidParams"
    assert "threshold" in result.error.message and not result.error.retryable


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (None, "is not set"),
        ("file:///etc/passwd", "must be an http"),
        ("http://", r"an http\(s\) URL, not 'http:'"),
    ],
)
async def test_the_service_url_is_configuration(
    url: str | None, problem: str, client: httpx.AsyncClient
) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        await kind(url, client).run(request({"text": "hello"}))
