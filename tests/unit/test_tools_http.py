"""HTTP tools through the real httpx client against the loopback fake tool server.

The server records every request, so these tests check what was sent byte for byte, that
nothing was sent when a request was refused, and how every answer is classified.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from processors import InvalidParams, execute
from processors._tool import ToolProcessor
from processors._tools import (
    ToolFailed,
    ToolRateLimited,
    ToolRegistry,
    ToolRejected,
    ToolRequestRefused,
    ToolsConfig,
    ToolTimeout,
    ToolUnavailable,
    UnknownTool,
)
from tests.fakes.steps import DISPATCHED_AT, step_request
from tests.fakes.tool_server import (
    Delay,
    Disconnect,
    ErrorStatus,
    FakeToolServer,
    Json,
    RecordedRequest,
    Text,
)
from topics import ConfigurationError, StepKind, StepRequested

TOKEN = "tk-live-7f3a9c21e0"
REPLY_PATH = "/api/tickets/42/replies"
ARGS = {"ticket_id": "42", "text": "Thanks, your refund is on its way."}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["ticket_id", "text"],
    "properties": {
        "ticket_id": {"type": "string"},
        "text": {"type": "string", "minLength": 1},
        "notify": {"type": "boolean"},
    },
}


class _Sleeps:
    """Records the waits it is asked for instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def evil_server() -> Iterator[FakeToolServer]:
    """Another host on loopback: nothing may ever reach it."""
    with FakeToolServer() as server:
        server.route("GET", "/", Json({"stolen": True}))
        yield server


def _spec(base_url: str, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "kind": "http",
        "description": "Post a reply on a support ticket.",
        "base_url": base_url,
        "method": "POST",
        "path": "/tickets/{{ args.ticket_id }}/replies",
        "query": {"notify": "{{ args.notify | default(true) }}", "lang": "en"},
        "headers": {"Authorization": "Bearer {{ secrets.TICKETS_TOKEN }}", "X-Tenant": "acme"},
        "body": {"body": "{{ args.text }}", "public": True, "ticket": "{{ args.ticket_id }}"},
        "args_schema": SCHEMA,
        "retries": 2,
    }
    spec.update(overrides)
    return spec


def _processor(
    client: httpx.AsyncClient,
    base_url: str,
    *,
    environ: dict[str, str] | None = None,
    sleeps: _Sleeps | None = None,
    max_retry_wait: float = 30.0,
    **overrides: Any,
) -> ToolProcessor:
    config = ToolsConfig.model_validate({"tools": {"ticket_reply": _spec(base_url, **overrides)}})
    return ToolProcessor(
        ToolRegistry(config),
        client,
        {"TICKETS_TOKEN": TOKEN} if environ is None else environ,
        sleep=sleeps or _Sleeps(),
        max_retry_wait=max_retry_wait,
    )


def _request(args: Any = None, tool: str = "ticket_reply", **overrides: Any) -> StepRequested:
    return step_request(
        StepKind.tool, {"tool": tool, "args": ARGS if args is None else args}, **overrides
    )


# -- the request ------------------------------------------------------------------------------


async def test_the_request_is_built_exactly(
    tool_server: FakeToolServer, http_client: httpx.AsyncClient
) -> None:
    tool_server.route("POST", REPLY_PATH, Json({"reply": {"id": "r-9"}, "ok": True}))
    processor = _processor(http_client, f"{tool_server.url}/api")

    outcome = await processor.run(_request({**ARGS, "notify": False}))

    assert outcome.output == {"reply": {"id": "r-9"}, "ok": True}
    assert outcome.usage is None
    (seen,) = tool_server.requests
    assert seen.method == "POST"
    assert seen.path == REPLY_PATH
    assert seen.query == {"notify": ["false"], "lang": ["en"]}
    assert seen.header("host") == f"127.0.0.1:{tool_server.port}"
    assert seen.header("authorization") == f"Bearer {TOKEN}"
    assert seen.header("x-tenant") == "acme"
    assert seen.header("idempotency-key") == "run-1/s"
    assert seen.header("content-type") == "application/json"
    assert seen.header("accept") == "application/json"
    assert seen.body == {"body": ARGS["text"], "public": True, "ticket": "42"}


async def test_the_whole_args_can_be_the_body_and_get_sends_none(
    tool_server: FakeToolServer, http_client: httpx.AsyncClient
) -> None:
    tool_server.route("PUT", "/tickets/42/replies", Json({}))
    tool_server.route("GET", "/tickets/42/replies", Json([]))
    put = _processor(http_client, tool_server.url, method="PUT", body="{{ args }}", query={})
    get = _processor(http_client, tool_server.url, method="GET", body=None, headers={})

    await put.run(_request())
    await get.run(_request())

    sent, fetched = tool_server.requests
    assert sent.body == ARGS
    assert fetched.raw_body == b""
    assert fetched.header("content-type") is None
    assert fetched.header("idempotency-key") == "run-1/s"


async def test_the_idempotency_key_is_the_same_on_every_retry_and_attempt(
    tool_server: FakeToolServer, http_client: httpx.AsyncClient
) -> None:
    tool_server.route("POST", REPLY_PATH, Json({"ok": True}))
    tool_server.enqueue("POST", REPLY_PATH, ErrorStatus(503), ErrorStatus(502))
    sleeps = _Sleeps()
    processor = _processor(http_client, f"{tool_server.url}/api", sleeps=sleeps)

    first = await processor.run(_request())
    second = await processor.run(_request(attempt=2))

    assert first.output == second.output == {"ok": True}
    keys = [r.header("idempotency-key") for r in tool_server.requests]
    assert keys == ["run-1/s"] * 4
    assert len(sleeps.waits) == 2


# -- secrets ----------------------------------------------------------------------------------


async def test_secrets_are_read_from_the_environment_when_the_call_is_made(
    tool_server: FakeToolServer, http_client: httpx.AsyncClient
) -> None:
    tool_server.route("POST", REPLY_PATH, Json({}))
    environ = {"TICKETS_TOKEN": "first-token"}
    processor = _processor(http_client, f"{tool_server.url}/api", environ=environ)

    await processor.run(_request())
    environ["TICKETS_TOKEN"] = "rotated-token"
    await processor.run(_request())

    auth = [r.header("authorization") for r in tool_server.requests]
    assert auth == ["Bearer first-token", "Bearer rotated-token"]


async def test_an_unset_secret_is_a_configuration_error_naming_the_variable(
    tool_server: FakeToolServer, http_client: httpx.AsyncClient
) -> None:
    processor = _processor(http_client, f"{tool_server.url}/api", environ={})

    with pytest.raises(ConfigurationError, match="the secret TICKETS_TOKEN is not set"):
        await processor.run(_request())
    assert tool_server.call_count == 0


def _echo_headers(request: RecordedRequest) -> Json:
    return Json(
        {"you_sent": dict(request.headers), "note": f"got {request.header('authorization')}"}
    )


async def test_a_secret_echoed_back_never_reaches_an_error_a_log_or_the_output(
    tool_server: FakeToolServer, http_client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    def echo_error(request: RecordedRequest) -> ErrorStatus:
        return ErrorStatus(400, f"bad token {request.header('authorization')}")

    tool_server.route("POST", REPLY_PATH, echo_error)
    tool_server.route("POST", "/api/tickets/43/replies", _echo_headers)
    tool_server.enqueue(
        "POST", "/api/tickets/43/replies", lambda r: ErrorStatus(503, f"{r.headers}")
    )
    processor = _processor(http_client, f"{tool_server.url}/api")
    caplog.set_level(logging.DEBUG)

    with pytest.raises(ToolRejected) as rejected:
        await processor.run(_request())
    echoed = await processor.run(_request({**ARGS, "ticket_id": "43"}))
    result = await execute(processor, _request(), worker="w", now=lambda: DISPATCHED_AT)

    assert "bad token Bearer [redacted]" in str(rejected.value)
    assert result.error is not None and "[redacted]" in result.error.message
    assert echoed.output == {
        "you_sent": {**tool_server.requests[-2].headers, "authorization": "Bearer [redacted]"},
        "note": "got Bearer [redacted]",
    }
    assert "503" in caplog.text  # the retry was logged, without the token
    for text in (str(rejected.value), result.model_dump_json(), str(echoed.output), caplog.text):
        assert TOKEN not in text


# -- host pinning -----------------------------------------------------------------------------


# Values that would climb out of the path (as they are, or once a server decodes them).
CLIMBING = [
    "../../../steal",
    "..%2F..%2F..%2Fsteal",
    "%2e%2e/%2e%2e/steal",
    "%252e%252e/steal",
    "1/../../../steal",
    "..\\..\\steal",
    "..;",
    ".",
    "..",
    "",
]
# Values that are only data once encoded inside their segment.
ENCODED = {
    "1/close": "1%2Fclose",
    "http://{evil}/steal": "http%3A%2F%2F{evil_encoded}%2Fsteal",
    "//{evil}/steal": "%2F%2F{evil_encoded}%2Fsteal",
    "@{evil}/steal": "%40{evil_encoded}%2Fsteal",
    "x@{evil}": "x%40{evil_encoded}",
    "1?redirect=http://{evil}/": "1%3Fredirect%3Dhttp%3A%2F%2F{evil_encoded}%2F",
    "1#fragment": "1%23fragment",
    "1%0d%0aHost: {evil}": "1%250d%250aHost%3A%20{evil_encoded}",
    "a b": "a%20b",
    "Zoë": "Zo%C3%AB",
    "...": "...",
}


@pytest.mark.parametrize("ticket_id", CLIMBING)
async def test_a_path_parameter_that_would_climb_is_refused_before_sending(
    tool_server: FakeToolServer,
    evil_server: FakeToolServer,
    http_client: httpx.AsyncClient,
    ticket_id: str,
) -> None:
    processor = _processor(http_client, f"{tool_server.url}/api")
    args = {**ARGS, "ticket_id": ticket_id}

    with pytest.raises(ToolRequestRefused, match="tool 'ticket_reply': path parameter .* refused"):
        await processor.run(_request(args))
    result = await execute(processor, _request(args), worker="w", now=lambda: DISPATCHED_AT)

    assert result.error is not None
    assert (result.error.error_class, result.error.retryable) == ("ToolRequestRefused", False)
    assert tool_server.call_count == 0
    assert evil_server.call_count == 0


@pytest.mark.parametrize(("ticket_id", "sent"), ENCODED.items())
async def test_a_path_parameter_is_percent_encoded_as_one_segment(
    tool_server: FakeToolServer,
    evil_server: FakeToolServer,
    http_client: httpx.AsyncClient,
    ticket_id: str,
    sent: str,
) -> None:
    evil = f"127.0.0.1:{evil_server.port}"
    segment = sent.format(evil_encoded=evil.replace(":", "%3A"))
    tool_server.route("POST", f"/api/tickets/{segment}/replies", Json({"ok": True}))
    processor = _processor(http_client, f"{tool_server.url}/api")

    outcome = await processor.run(_request({**ARGS, "ticket_id": ticket_id.format(evil=evil)}))

    assert outcome.output == {"ok": True}
    (seen,) = tool_server.requests
    assert seen.path == f"/api/tickets/{segment}/replies"  # what the server received
    assert unquote(seen.path.split("/")[3]) == ticket_id.format(evil=evil)
    assert evil_server.call_count == 0


@pytest.mark.parametrize(
    ("target", "sent"),
    [
        ("/{evil}/steal", "%2F{evil_encoded}%2Fsteal"),
        ("http://{evil}/steal", "http%3A%2F%2F{evil_encoded}%2Fsteal"),
        ("/@{evil}", "%2F%40{evil_encoded}"),
        ("/..", None),
        ("/./x", None),
    ],
)
async def test_a_whole_path_from_args_cannot_leave_the_host_either(
    tool_server: FakeToolServer,
    evil_server: FakeToolServer,
    http_client: httpx.AsyncClient,
    target: str,
    sent: str | None,
) -> None:
    schema = {"type": "object", "properties": {"target": {"type": "string"}}}
    processor = _processor(
        http_client,
        tool_server.url,
        path="/{{ args.target }}",
        body=None,
        query={},
        args_schema=schema,
    )
    evil = f"127.0.0.1:{evil_server.port}"
    args = {"target": target.format(evil=evil)}

    if sent is None:
        with pytest.raises(ToolRequestRefused):
            await processor.run(_request(args))
        assert tool_server.call_count == 0
    else:
        segment = sent.format(evil_encoded=evil.replace(":", "%3A"))
        tool_server.route("POST", f"/{segment}", Json({"ok": True}))
        await processor.run(_request(args))
        assert [r.path for r in tool_server.requests] == [f"/{segment}"]
    assert evil_server.call_count == 0


@pytest.mark.parametrize("value", [None, {"id": 1}, [1, 2]])
async def test_a_path_parameter_must_be_a_string_or_number(
    tool_server: FakeToolServer, http_client: httpx.AsyncClient, value: object
) -> None:
    processor = _processor(http_client, tool_server.url, args_schema={"type": "object"})

    with pytest.raises(InvalidParams, match=r"path parameter \{\{ args.ticket_id \}\} is "):
        await processor.run(_request({**ARGS, "ticket_id": value}))
    assert tool_server.call_count == 0


async def test_numbers_and_booleans_are_path_parameters_too(
    tool_server: FakeToolServer, http_client: httpx.AsyncClient
) -> None:
    tool_server.route("POST", "/t/42/true/1.5", Json({"ok": True}))
    processor = _processor(
        http_client,
        tool_server.url,
        path="/t/{{ args.n }}/{{ args.flag }}/{{ args.x }}",
        args_schema={"type": "object"},
    )

    await processor.run(_request({"n": 42, "flag": True, "x": 1.5, "text": "t", "ticket_id": "1"}))

    assert tool_server.requests[0].path == "/t/42/true/1.5"


@pytest.mark.parametrize(
    ("name", "message"),
    [("Bob\r\nX-Admin: true", "would hold a line break"), ("Zoë", "would hold non-ASCII text")],
)
async def test_args_cannot_break_the_header_block(
    tool_server: FakeToolServer, http_client: httpx.AsyncClient, name: str, message: str
) -> None:
    processor = _processor(
        http_client,
        tool_server.url,
        headers={"X-Customer": "{{ args.text }}"},
    )

    with pytest.raises(ToolRequestRefused, match=f"header X-Customer {message}"):
        await processor.run(_request({**ARGS, "text": name}))
    assert tool_server.call_count == 0


async def test_a_path_under_a_base_path_stays_under_it(
    tool_server: FakeToolServer, http_client: httpx.AsyncClient
) -> None:
    tool_server.route("POST", "/api/tickets/a%20b/replies", Json({"ok": True}))
    processor = _processor(http_client, f"{tool_server.url}/api/")

    outcome = await processor.run(_request({**ARGS, "ticket_id": "a b"}))

    assert outcome.output == {"ok": True}
    assert tool_server.requests[0].path == "/api/tickets/a%20b/replies"


async def test_redirects_are_not_followed(
    tool_server: FakeToolServer, evil_server: FakeToolServer
) -> None:
    location = {"Location": f"{evil_server.url}/"}
    tool_server.route("POST", REPLY_PATH, Json({}, status=302, headers=location))
    async with httpx.AsyncClient(follow_redirects=True) as client:  # even when the client would
        processor = _processor(client, f"{tool_server.url}/api")
        with pytest.raises(ToolRejected, match="HTTP 302: redirects are not followed"):
            await processor.run(_request())

    assert tool_server.call_count == 1
    assert evil_server.call_count == 0


# -- arguments and answers --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"text": "hi"}, r"tool 'ticket_reply': args: 'ticket_id' is a required property"),
        ({**ARGS, "notify": "yes"}, r"args\.notify: 'yes' is not of type 'boolean'"),
        ({**ARGS, "text": ""}, r"args\.text: '' should be non-empty"),
    ],
)
async def test_args_that_break_the_schema_fail_permanently_before_any_call(
    tool_server: FakeToolServer,
    http_client: httpx.AsyncClient,
    args: dict[str, Any],
    message: str,
) -> None:
    processor = _processor(http_client, f"{tool_server.url}/api")

    with pytest.raises(InvalidParams, match=message):
        await processor.run(_request(args))
    assert tool_server.call_count == 0


@pytest.mark.parametrize(
    "params",
    [{"args": ARGS}, {"tool": "", "args": ARGS}, {"tool": "ticket_reply", "args": [1]}, "x"],
)
async def test_params_that_are_not_a_tool_steps_are_invalid(
    http_client: httpx.AsyncClient, params: Any
) -> None:
    processor = _processor(http_client, "http://127.0.0.1:9")

    with pytest.raises(InvalidParams, match="tool params"):
        await processor.run(step_request(StepKind.tool, params))


async def test_an_unknown_tool_is_permanent_and_names_the_known_ones(
    http_client: httpx.AsyncClient,
) -> None:
    processor = _processor(http_client, "http://127.0.0.1:9")

    with pytest.raises(UnknownTool, match=r"'payments\.refund' is not registered.*ticket_reply"):
        await processor.run(_request(tool="payments.refund"))


@pytest.mark.parametrize(
    ("answer", "expression", "output"),
    [
        (Json({"reply": {"id": "r-1"}, "x": 1}), "reply.id", "r-1"),
        (
            Json({"reply": {"id": "r-1"}, "t": {"s": "open"}}),
            "{id: reply.id, s: t.s}",
            {"id": "r-1", "s": "open"},
        ),
        (Json({"items": [{"n": 1}, {"n": 2}]}), "items[].n", [1, 2]),
        (Json({"reply": {}}), "reply.id", None),
        (Json({"a": 1}), None, {"a": 1}),
        (Text("accepted"), None, "accepted"),
        (Text(b"", status=204), None, None),
        (Json("just a string"), "@", "just a string"),
    ],
)
async def test_the_answer_is_the_json_or_what_the_expression_selects(
    tool_server: FakeToolServer,
    http_client: httpx.AsyncClient,
    answer: Json | Text,
    expression: str | None,
    output: Any,
) -> None:
    tool_server.route("POST", REPLY_PATH, answer)
    processor = _processor(http_client, f"{tool_server.url}/api", answer=expression)

    outcome = await processor.run(_request())

    assert outcome.output == output


async def test_an_expression_over_an_answer_that_is_not_json_is_retryable(
    tool_server: FakeToolServer, http_client: httpx.AsyncClient
) -> None:
    tool_server.route(
        "POST", REPLY_PATH, Text("<html>maintenance</html>", content_type="text/html")
    )
    processor = _processor(http_client, f"{tool_server.url}/api", answer="reply.id", retries=0)

    with pytest.raises(ToolUnavailable, match="the answer is not JSON"):
        await processor.run(_request())


async def test_an_answer_larger_than_the_limit_fails(
    tool_server: FakeToolServer, http_client: httpx.AsyncClient
) -> None:
    tool_server.route("POST", REPLY_PATH, Json({"blob": "x" * 5000}))
    processor = _processor(http_client, f"{tool_server.url}/api", max_response_bytes=1000)

    with pytest.raises(ToolFailed, match="larger than 1000 bytes"):
        await processor.run(_request())
    assert tool_server.call_count == 1


# -- failures: classification and the one retry layer -----------------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, ToolRejected), (401, ToolRejected), (404, ToolRejected), (422, ToolRejected)],
)
async def test_client_errors_are_permanent_and_not_retried(
    tool_server: FakeToolServer, http_client: httpx.AsyncClient, status: int, error: type
) -> None:
    tool_server.route("POST", REPLY_PATH, ErrorStatus(status, "no such ticket"))
    processor = _processor(http_client, f"{tool_server.url}/api")

    with pytest.raises(error, match=f"HTTP {status}: no such ticket") as raised:
        await processor.run(_request())

    assert isinstance(raised.value, ToolRejected) and raised.value.status == status
    assert tool_server.call_count == 1


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (ErrorStatus(408), ToolUnavailable),
        (ErrorStatus(409), ToolUnavailable),
        (ErrorStatus(500), ToolUnavailable),
        (ErrorStatus(503, body=b"<html>down</html>"), ToolUnavailable),
        (ErrorStatus(429), ToolRateLimited),
        (Disconnect(), ToolUnavailable),
        (Disconnect(reset=True), ToolUnavailable),
    ],
)
async def test_retryable_failures_are_retried_then_reported(
    tool_server: FakeToolServer,
    http_client: httpx.AsyncClient,
    answer: Any,
    error: type,
) -> None:
    tool_server.route("POST", REPLY_PATH, answer)
    sleeps = _Sleeps()
    processor = _processor(http_client, f"{tool_server.url}/api", sleeps=sleeps)

    with pytest.raises(error):
        await processor.run(_request())

    assert tool_server.call_count == 3  # the first try and two retries
    assert len(sleeps.waits) == 2
    assert all(0.2 <= w <= 0.4 for w in sleeps.waits[:1])


async def test_a_retryable_failure_that_clears_up_succeeds(
    tool_server: FakeToolServer, http_client: httpx.AsyncClient
) -> None:
    tool_server.route("POST", REPLY_PATH, Json({"ok": True}))
    tool_server.enqueue(
        "POST", REPLY_PATH, Disconnect(reset=True), ErrorStatus(429, retry_after="3")
    )
    sleeps = _Sleeps()
    processor = _processor(http_client, f"{tool_server.url}/api", sleeps=sleeps)

    outcome = await processor.run(_request())

    assert outcome.output == {"ok": True}
    assert sleeps.waits[1] == 3.0  # Retry-After honoured
    assert tool_server.call_count == 3


async def test_a_long_retry_after_is_left_to_the_coordinator(
    tool_server: FakeToolServer, http_client: httpx.AsyncClient
) -> None:
    tool_server.route("POST", REPLY_PATH, ErrorStatus(429, "slow down", retry_after="120"))
    processor = _processor(http_client, f"{tool_server.url}/api", max_retry_wait=30)

    result = await execute(processor, _request(), worker="w", now=lambda: DISPATCHED_AT)

    assert result.error is not None
    assert result.error.error_class == "ToolRateLimited"
    assert result.error.retryable is True
    assert result.error.retry_after_s == 120
    assert tool_server.call_count == 1


async def test_a_slow_tool_times_out_and_is_retryable(
    tool_server: FakeToolServer, http_client: httpx.AsyncClient
) -> None:
    tool_server.route("POST", REPLY_PATH, Delay(2.0, then=Json({})))
    processor = _processor(http_client, f"{tool_server.url}/api", timeout_s=0.2, retries=0)

    with pytest.raises(ToolTimeout, match=r"no answer within 0\.2 s"):
        await processor.run(_request())


async def test_connection_refused_is_retryable(http_client: httpx.AsyncClient) -> None:
    with FakeToolServer() as gone:
        url = gone.url
    processor = _processor(http_client, url, retries=0)

    with pytest.raises(ToolUnavailable, match="ConnectError"):
        await processor.run(_request())
