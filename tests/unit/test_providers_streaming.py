"""Streaming from both HTTP providers, against real loopback servers sending real SSE bodies.

The fakes answer a request that asks for ``stream: true`` with a chunked
``text/event-stream`` body in the provider's own event format, and the same answer whole to a
request that does not: so each test can check that the streamed completion is exactly the
request/response one, and that the text arrived in pieces, in order, before it returned.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from processors import (
    AgentProcessor,
    AnthropicProvider,
    ChatMessage,
    Completion,
    LlmProcessor,
    ModelCatalog,
    OpenAIProvider,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
    RouteSpec,
    TextCallback,
    ToolDefinition,
    streaming_to,
)
from processors._sse import ServerEvent, SseDecoder
from tests.fakes import ChatAnswer, FakeOpenAIServer
from tests.fakes.anthropic_server import FakeAnthropicServer, MessageAnswer, ToolUse
from tests.fakes.openai_server import Streamed
from tests.fakes.steps import step_request
from topics import JsonLimitExceeded, StepKind

ENV = {"BATON_TEST_KEY": "sk-test-5e1d"}
MESSAGES = [ChatMessage(role="user", content="Tell me about the refund")]
LOOKUP = ToolDefinition(name="orders.lookup", description="Find an order")
TEXT = "Your refund of $42 was sent on Monday; it takes 3-5 days."


@pytest.fixture
async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def openai_server() -> Any:
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
def anthropic_server() -> Any:
    with FakeAnthropicServer() as server:
        yield server


def _route(provider: str, base_url: str, **overrides: Any) -> RouteSpec:
    fields: dict[str, Any] = {
        "provider": provider,
        "model": f"{provider}-test",
        "base_url": base_url,
        "api_key_env": "BATON_TEST_KEY",
        "timeout_s": 2.0,
        "retries": 0,
    }
    fields.update(overrides)
    return RouteSpec(**fields)


class _Deltas:
    """The text pieces a stream handed on, in order."""

    def __init__(self) -> None:
        self.pieces: list[str] = []

    async def __call__(self, text: str) -> None:
        self.pieces.append(text)


async def _both(
    provider: OpenAIProvider | AnthropicProvider,
    route: RouteSpec,
    tools: list[ToolDefinition] | None = None,
) -> tuple[Completion, Completion, list[str]]:
    kwargs: dict[str, Any] = {
        "temperature": 0.0,
        "max_tokens": None,
        "output_schema": None,
        "idempotency_key": "run-1/answer",
        "tools": tools,
    }
    whole = await provider.complete(route, MESSAGES, **kwargs)
    deltas = _Deltas()
    streamed = await provider.stream(route, MESSAGES, on_text=deltas, **kwargs)
    return whole, streamed, deltas.pieces


# -- OpenAI chat completions -----------------------------------------------------------------


async def test_openai_streams_the_text_in_order_and_returns_the_same_completion(
    openai_server: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    openai_server.reply(Streamed(ChatAnswer(TEXT, prompt_tokens=31, completion_tokens=17)))
    provider = OpenAIProvider(http_client, ENV)

    whole, streamed, pieces = await _both(provider, _route("openai", openai_server.base_url))

    assert streamed == whole == Completion(TEXT, input_tokens=31, output_tokens=17)
    assert len(pieces) == -(-len(TEXT) // 3)  # one per content event, in order
    assert "".join(pieces) == TEXT
    body = openai_server.requests[1].body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert "stream" not in openai_server.requests[0].body
    assert openai_server.requests[1].header("accept") == "text/event-stream"


async def test_openai_streamed_tool_calls_are_the_same_calls(
    openai_server: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    calls = (
        ("call_a", "orders_lookup", '{"order": 7, "why": "refund"}'),
        ("call_b", "orders_lookup", ""),
    )
    openai_server.reply(Streamed(ChatAnswer(None, tool_calls=calls, finish_reason="tool_calls")))
    provider = OpenAIProvider(http_client, ENV)

    whole, streamed, pieces = await _both(
        provider, _route("openai", openai_server.base_url), [LOOKUP]
    )

    assert streamed == whole
    assert [c.name for c in streamed.tool_calls] == ["orders.lookup", "orders.lookup"]
    assert streamed.tool_calls[0].arguments == {"order": 7, "why": "refund"}
    assert pieces == []


async def test_openai_a_stream_cut_midway_is_unavailable_after_the_first_pieces(
    openai_server: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    openai_server.reply(Streamed(TEXT, cut_after=4))
    deltas = _Deltas()

    with pytest.raises(ProviderUnavailable, match="RemoteProtocolError"):
        await OpenAIProvider(http_client, ENV).stream(
            _route("openai", openai_server.base_url),
            MESSAGES,
            temperature=0.0,
            max_tokens=None,
            output_schema=None,
            idempotency_key="k",
            on_text=deltas,
        )
    assert deltas.pieces == [TEXT[0:3], TEXT[3:6], TEXT[6:9]]  # role chunk, then three


async def test_openai_an_error_chunk_midway_is_unavailable(
    openai_server: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    openai_server.reply(Streamed(TEXT, error_after=3))
    with pytest.raises(ProviderUnavailable, match="error in the stream: simulated stream failure"):
        await OpenAIProvider(http_client, ENV).stream(
            _route("openai", openai_server.base_url),
            MESSAGES,
            temperature=0.0,
            max_tokens=None,
            output_schema=None,
            idempotency_key="k",
            on_text=_Deltas(),
        )


async def test_openai_a_stream_that_ends_without_done_is_unavailable() -> None:
    def short(request: httpx.Request) -> httpx.Response:
        body = b'data: {"choices": [{"delta": {"content": "Your"}}]}\n\n'
        return httpx.Response(200, headers={"Content-Type": "text/event-stream"}, content=body)

    deltas = _Deltas()
    async with httpx.AsyncClient(transport=httpx.MockTransport(short)) as client:
        with pytest.raises(ProviderUnavailable, match="ended before \\[DONE\\]"):
            await OpenAIProvider(client, ENV).stream(
                _route("openai", "http://models.internal/v1"),
                MESSAGES,
                temperature=0.0,
                max_tokens=None,
                output_schema=None,
                idempotency_key="k",
                on_text=deltas,
            )
    assert deltas.pieces == ["Your"]


async def test_openai_a_stream_that_stalls_past_the_timeout_is_a_timeout(
    openai_server: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    openai_server.reply(Streamed(TEXT, delay=0.6))
    deltas = _Deltas()
    with pytest.raises(ProviderTimeout, match="no answer within 0.2 s"):
        await OpenAIProvider(http_client, ENV).stream(
            _route("openai", openai_server.base_url, timeout_s=0.2),
            MESSAGES,
            temperature=0.0,
            max_tokens=None,
            output_schema=None,
            idempotency_key="k",
            on_text=deltas,
        )
    assert deltas.pieces == []  # the role chunk came, then nothing in time


async def test_openai_an_error_status_is_classified_as_without_streaming(
    openai_server: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    from tests.fakes import ErrorStatus

    openai_server.enqueue(ErrorStatus(429, retry_after="3"), ErrorStatus(400, "bad"))
    provider = OpenAIProvider(http_client, ENV)
    route = _route("openai", openai_server.base_url)
    kwargs: dict[str, Any] = {
        "temperature": 0.0,
        "max_tokens": None,
        "output_schema": None,
        "idempotency_key": "k",
        "on_text": _Deltas(),
    }
    with pytest.raises(ProviderRateLimited) as limited:
        await provider.stream(route, MESSAGES, **kwargs)
    assert limited.value.retry_after == 3.0
    with pytest.raises(ProviderRejected, match="HTTP 400: bad"):
        await provider.stream(route, MESSAGES, **kwargs)


async def test_a_server_that_answers_whole_despite_stream_gives_the_text_as_one_piece(
    http_client: httpx.AsyncClient,
) -> None:
    def whole(request: httpx.Request) -> httpx.Response:
        body = {"choices": [{"message": {"role": "assistant", "content": TEXT}}]}
        return httpx.Response(
            200, json={**body, "usage": {"prompt_tokens": 1, "completion_tokens": 2}}
        )

    deltas = _Deltas()
    async with httpx.AsyncClient(transport=httpx.MockTransport(whole)) as client:
        completion = await OpenAIProvider(client, ENV).stream(
            _route("openai", "http://models.internal/v1"),
            MESSAGES,
            temperature=0.0,
            max_tokens=None,
            output_schema=None,
            idempotency_key="k",
            on_text=deltas,
        )
    assert completion == Completion(TEXT, 1, 2)
    assert deltas.pieces == [TEXT]


async def test_a_streamed_answer_over_the_json_limit_is_refused(
    http_client: httpx.AsyncClient,
) -> None:
    chunk = b'data: {"choices": [{"delta": {"content": "' + b"x" * 60_000 + b'"}}]}\n\n'

    def huge(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"Content-Type": "text/event-stream"}, content=chunk * 20
        )

    async with httpx.AsyncClient(transport=httpx.MockTransport(huge)) as client:
        with pytest.raises(JsonLimitExceeded, match="JSON size limit"):
            await OpenAIProvider(client, ENV).stream(
                _route("openai", "http://models.internal/v1"),
                MESSAGES,
                temperature=0.0,
                max_tokens=None,
                output_schema=None,
                idempotency_key="k",
                on_text=_Deltas(),
            )


# -- Anthropic Messages ----------------------------------------------------------------------


async def test_anthropic_streams_text_and_tool_use_and_returns_the_same_completion(
    anthropic_server: FakeAnthropicServer, http_client: httpx.AsyncClient
) -> None:
    answer = MessageAnswer(
        TEXT,
        tool_uses=(ToolUse("orders_lookup", {"order": 7, "tags": ["a", "b"]}, id="toolu_1"),),
        input_tokens=120,
        output_tokens=44,
    )
    anthropic_server.reply(Streamed(answer, piece=4))
    provider = AnthropicProvider(http_client, ENV)

    whole, streamed, pieces = await _both(
        provider, _route("anthropic", anthropic_server.base_url), [LOOKUP]
    )

    assert streamed == whole
    assert streamed.text == TEXT and (streamed.input_tokens, streamed.output_tokens) == (120, 44)
    assert streamed.tool_calls[0].name == "orders.lookup"
    assert streamed.tool_calls[0].arguments == {"order": 7, "tags": ["a", "b"]}
    assert "".join(pieces) == TEXT and len(pieces) == -(-len(TEXT) // 4)
    assert anthropic_server.requests[1].body["stream"] is True


async def test_anthropic_an_error_event_midway_is_the_overload_it_names(
    anthropic_server: FakeAnthropicServer, http_client: httpx.AsyncClient
) -> None:
    anthropic_server.reply(Streamed(TEXT, error_after=6))
    deltas = _Deltas()
    with pytest.raises(ProviderUnavailable, match="overloaded_error"):
        await AnthropicProvider(http_client, ENV).stream(
            _route("anthropic", anthropic_server.base_url),
            MESSAGES,
            temperature=0.0,
            max_tokens=None,
            output_schema=None,
            idempotency_key="k",
            on_text=deltas,
        )
    assert deltas.pieces == [TEXT[0:3], TEXT[3:6], TEXT[6:9]]


async def test_anthropic_a_cut_stream_is_unavailable(
    anthropic_server: FakeAnthropicServer, http_client: httpx.AsyncClient
) -> None:
    anthropic_server.reply(Streamed(TEXT, cut_after=5))
    with pytest.raises(ProviderUnavailable, match="RemoteProtocolError"):
        await AnthropicProvider(http_client, ENV).stream(
            _route("anthropic", anthropic_server.base_url),
            MESSAGES,
            temperature=0.0,
            max_tokens=None,
            output_schema=None,
            idempotency_key="k",
            on_text=_Deltas(),
        )


# -- the llm step: the route decides, a retry starts over --------------------------------------


class _Recorder:
    """A text stream that records each call's pieces and whether it finished."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.finished = 0

    def call(self) -> TextCallback:
        pieces: list[str] = []
        self.calls.append(pieces)

        async def on_text(text: str) -> None:
            pieces.append(text)

        return on_text

    async def finish(self) -> None:
        self.finished += 1


async def test_an_llm_step_streams_only_on_a_stream_route_and_a_retry_starts_over(
    openai_server: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    openai_server.enqueue(Streamed(TEXT, cut_after=3))
    openai_server.reply(Streamed(TEXT))
    routes = {
        "live": _route("openai", openai_server.base_url, stream=True, retries=1),
        "plain": _route("openai", openai_server.base_url),
    }

    async def no_wait(seconds: float) -> None:
        return None

    processor = LlmProcessor(ModelCatalog(routes=routes), http_client, ENV, sleep=no_wait)
    recorder = _Recorder()
    params = {"route": "live", "messages": [{"role": "user", "content": "hi"}], "cache": False}
    with streaming_to(recorder):
        outcome = await processor.run(step_request(StepKind.llm, params))
        assert outcome.output == TEXT
        assert len(recorder.calls) == 2 and recorder.finished == 1
        assert "".join(recorder.calls[0]) == TEXT[:6]  # cut: the retry's text starts over
        assert "".join(recorder.calls[1]) == TEXT

        plain = await processor.run(step_request(StepKind.llm, {**params, "route": "plain"}))
    assert plain.output == TEXT
    assert len(recorder.calls) == 2  # not streamed: the route does not ask for it
    assert "stream" not in openai_server.requests[-1].body


async def test_an_agent_turn_on_a_stream_route_asks_for_the_same_tool_calls(
    anthropic_server: FakeAnthropicServer, http_client: httpx.AsyncClient
) -> None:
    use = ToolUse("orders_lookup", {"order": 7}, id="toolu_9")
    anthropic_server.reply(MessageAnswer("Let me look.", tool_uses=(use,)))
    routes = {
        "live": _route("anthropic", anthropic_server.base_url, stream=True),
        "plain": _route("anthropic", anthropic_server.base_url),
    }
    processor = AgentProcessor(ModelCatalog(routes=routes), http_client, ENV)
    params: dict[str, Any] = {
        "messages": [{"role": "user", "content": "Where is order 7?"}],
        "tools": [LOOKUP.model_dump()],
        "cache": False,
    }
    recorder = _Recorder()
    with streaming_to(recorder):
        live = await processor.run(step_request(StepKind.agent, {**params, "route": "live"}))
    plain = await processor.run(step_request(StepKind.agent, {**params, "route": "plain"}))

    assert live.output == plain.output
    assert live.usage is not None and plain.usage is not None
    assert live.usage.model_copy(update={"route": "plain"}) == plain.usage
    assert isinstance(live.output, dict) and live.output["type"] == "tool_calls"
    assert "".join(recorder.calls[0]) == "Let me look." and recorder.finished == 1
    assert anthropic_server.requests[0].body["stream"] is True


# -- the event-stream format -----------------------------------------------------------------


def test_the_decoder_reads_events_split_anywhere() -> None:
    body = (
        b': keep-alive\r\nevent: message_start\r\ndata: {"a":\r\ndata:  1}\r\n\r\n'
        b"data: second\n\nid: 7\rdata: third\r\r"
    )
    for size in (1, 2, 3, 7, len(body)):
        decoder = SseDecoder()
        events: list[ServerEvent] = []
        for i in range(0, len(body), size):
            events += decoder.feed(body[i : i + size])
        assert events == [
            ServerEvent("message_start", '{"a":\n 1}'),
            ServerEvent("message", "second"),
            ServerEvent("message", "third", "7"),
        ], size


def test_the_decoder_refuses_a_line_or_an_event_over_the_limit() -> None:
    with pytest.raises(JsonLimitExceeded):
        SseDecoder(max_line=10).feed(b"data: " + b"x" * 20)
    with pytest.raises(JsonLimitExceeded):
        SseDecoder(max_line=10).feed(b"data: xxxx\n" * 3)
