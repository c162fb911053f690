"""MCP tools against a real MCP server built with the official SDK (``tests/mcp_server.py``).

Over stdio (a spawned process) and Streamable HTTP (uvicorn on loopback), at both protocol
revisions, through baton's own path: ``ToolRegistry`` lists the tools, ``ToolProcessor`` and
``execute`` call them as any tool step does.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from processors import STEP_TRACE, InvalidParams, execute
from processors._mcp import IDEMPOTENCY_KEY_META
from processors._tool import ToolProcessor
from processors._tools import (
    McpToolSpec,
    ToolRegistry,
    ToolsConfig,
    UnknownTool,
    load_tools,
)
from streams._access import Access
from streams._policies import Policies
from streams.workflow import parse_workflow
from tests.fakes.steps import DISPATCHED_AT, step_request
from tests.mcp_server import TTL_MS, http_app
from tests.unit.test_agents import calls
from tests.unit.test_decide import Run, ok, task
from topics import ApprovalRequested, ConfigurationError, StepKind, StepStatus

SERVER = str(Path(__file__).resolve().parents[1] / "mcp_server.py")
PROTOCOLS = ["2025-11-25", "2026-07-28"]
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TOKEN = "s3cret-token-value"


@asynccontextmanager
async def serving() -> AsyncIterator[str]:
    """The test MCP server over Streamable HTTP on a random loopback port, until left."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(http_app(), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    deadline = asyncio.get_running_loop().time() + 10
    while not server.started:
        assert asyncio.get_running_loop().time() < deadline, "uvicorn did not start"
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture
async def mcp_url() -> AsyncIterator[str]:
    async with serving() as url:
        yield url


@pytest.fixture(params=["stdio", "http"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=PROTOCOLS)
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def server_config(transport: str, protocol: str, url: str, **extra: Any) -> dict[str, Any]:
    if transport == "stdio":
        spec: dict[str, Any] = {
            "command": sys.executable,
            "args": [SERVER, "stdio"],
            "env": {"CALC_TOKEN": "{{ secrets.CALC_TOKEN }}"},
        }
    else:
        spec = {"url": url, "headers": {"X-Api-Key": "{{ secrets.CALC_TOKEN }}"}}
    return {**spec, "protocol": protocol, "timeout_s": 10, "retries": 0, **extra}


@pytest.fixture
async def make_registry() -> AsyncIterator[Callable[..., ToolRegistry]]:
    made: list[ToolRegistry] = []

    def make(servers: dict[str, Any], **config: Any) -> ToolRegistry:
        registry = ToolRegistry(
            ToolsConfig.model_validate({"mcp_servers": servers, **config}),
            environ={"CALC_TOKEN": TOKEN},
        )
        made.append(registry)
        return registry

    yield make
    for registry in made:
        await registry.aclose()


@pytest.fixture
async def calc(
    make_registry: Callable[..., ToolRegistry], transport: str, protocol: str, mcp_url: str
) -> ToolRegistry:
    url = mcp_url
    registry = make_registry({"calc": server_config(transport, protocol, url)})
    await registry.start()
    return registry


@pytest.fixture
async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


async def attempt(processor: ToolProcessor, request: Any) -> Any:
    return await execute(processor, request, worker="w", now=lambda: DISPATCHED_AT)


def tool_step(tool: str, args: dict[str, Any], **overrides: Any) -> Any:
    return step_request(StepKind.tool, {"tool": tool, "args": args}, **overrides)


async def test_the_servers_tools_are_baton_tools_with_its_input_schemas(
    calc: ToolRegistry,
) -> None:
    names = {n for n in calc.tools if n.startswith("calc.")}
    assert names == {"calc.add", "calc.echo", "calc.fail", "calc.whoami", "calc.slow", "calc.crash"}
    add = calc.tool("calc.add")
    assert isinstance(add, McpToolSpec) and add.name == "add"
    assert add.args_schema["required"] == ["a", "b"]
    assert add.args_schema["properties"]["a"]["type"] == "integer"  # type: ignore[index]  # JSON
    (described,) = calc.describe(["calc.add"])
    assert described["description"] == "Add two integers."
    assert described["parameters"] == add.args_schema, "an agent's model sees the server's schema"


async def test_a_tool_step_answers_the_structured_content(
    calc: ToolRegistry, http_client: httpx.AsyncClient
) -> None:
    processor = ToolProcessor(calc, http_client, {})
    output = await processor.run(tool_step("calc.add", {"a": 2, "b": 40}))
    assert output.output == {"sum": 42}


async def test_without_structured_content_the_text_is_the_answer(
    calc: ToolRegistry, http_client: httpx.AsyncClient
) -> None:
    output = await ToolProcessor(calc, http_client, {}).run(tool_step("calc.echo", {"text": "hi"}))
    assert output.output == "hi"


async def test_the_idempotency_key_and_the_trace_context_arrive_in_meta(
    calc: ToolRegistry, http_client: httpx.AsyncClient, transport: str, protocol: str
) -> None:
    processor = ToolProcessor(calc, http_client, {})
    request = tool_step("calc.whoami", {}, idempotency_key="run-7/notify")
    token = STEP_TRACE.set({"traceparent": TRACEPARENT, "tracestate": "baton=1"})
    try:
        output = (await processor.run(request)).output
    finally:
        STEP_TRACE.reset(token)
    assert isinstance(output, dict)
    meta = output["meta"]
    assert isinstance(meta, dict)
    assert meta[IDEMPOTENCY_KEY_META] == "run-7/notify"
    assert meta["traceparent"] == TRACEPARENT
    assert meta["tracestate"] == "baton=1"
    assert output["protocol"] == protocol
    if transport == "http":
        headers = output["headers"]
        assert isinstance(headers, dict)
        assert headers["mcp-protocol-version"] == protocol
        # The configured header went out with the secret, and came back redacted.
        assert headers["x-api-key"] == "[redacted]"


async def test_is_error_fails_the_step_permanently(
    calc: ToolRegistry, http_client: httpx.AsyncClient
) -> None:
    processor = ToolProcessor(calc, http_client, {})
    result = await attempt(processor, tool_step("calc.fail", {"reason": "card declined"}))
    assert result.status is StepStatus.failed and result.error is not None
    assert result.error.error_class == "ToolFailed"
    assert not result.error.retryable
    assert "card declined" in result.error.message


async def test_arguments_that_break_the_input_schema_are_refused_before_the_call(
    calc: ToolRegistry, http_client: httpx.AsyncClient
) -> None:
    processor = ToolProcessor(calc, http_client, {})
    with pytest.raises(InvalidParams, match=r"args\.a"):
        await processor.run(tool_step("calc.add", {"a": "two", "b": 1}))


async def test_a_tool_slower_than_the_timeout_is_a_retryable_timeout(
    make_registry: Callable[..., ToolRegistry],
    http_client: httpx.AsyncClient,
    transport: str,
    protocol: str,
    mcp_url: str,
) -> None:
    url = mcp_url
    registry = make_registry({"calc": server_config(transport, protocol, url)})
    await registry.start()
    # The listing took its time (a spawn); the call gets a tight bound of its own.
    spec = registry.tool("calc.slow")
    assert isinstance(spec, McpToolSpec)
    servers = registry.mcp
    assert servers is not None
    servers._servers["calc"].spec = servers._servers["calc"].spec.model_copy(  # noqa: SLF001
        update={"timeout_s": 0.5}
    )
    result = await attempt(
        ToolProcessor(registry, http_client, {}), tool_step("calc.slow", {"seconds": 5})
    )
    assert result.status is StepStatus.failed and result.error is not None
    assert result.error.error_class == "ToolTimeout"
    assert result.error.retryable
    # The connection survives a slow call: the next one is answered.
    again = await ToolProcessor(registry, http_client, {}).run(
        tool_step("calc.add", {"a": 1, "b": 1})
    )
    assert again.output == {"sum": 2}


async def test_the_listing_lives_as_long_as_the_server_says_else_as_configured(
    calc: ToolRegistry, protocol: str
) -> None:
    servers = calc.mcp
    assert servers is not None
    left = servers.fresh_for("calc")
    if protocol == "2026-07-28":
        assert TTL_MS / 1000 - 5 < left <= TTL_MS / 1000, "the server's ttlMs"
    else:
        assert 300 - 5 < left <= 300, "list_ttl_s: 2025-11-25 has no cache hints"


async def test_only_the_allowed_tools_are_exposed(
    make_registry: Callable[..., ToolRegistry], transport: str, mcp_url: str
) -> None:
    url = mcp_url
    registry = make_registry({"calc": server_config(transport, "auto", url, tools=["add", "echo"])})
    await registry.start()
    assert sorted(n for n in registry.tools if n.startswith("calc.")) == ["calc.add", "calc.echo"]
    with pytest.raises(UnknownTool, match="calc.whoami"):
        await registry.lookup("calc.whoami")


async def test_a_lost_stdio_server_is_unavailable_then_started_again(
    make_registry: Callable[..., ToolRegistry], http_client: httpx.AsyncClient, protocol: str
) -> None:
    registry = make_registry({"calc": server_config("stdio", protocol, "")})
    await registry.start()
    processor = ToolProcessor(registry, http_client, {})
    crashed = await attempt(processor, tool_step("calc.crash", {}))
    assert crashed.status is StepStatus.failed and crashed.error is not None
    assert crashed.error.error_class == "ToolUnavailable", crashed.error.message
    assert crashed.error.retryable
    again = await processor.run(tool_step("calc.add", {"a": 3, "b": 4}))
    assert again.output == {"sum": 7}


async def test_a_server_that_cannot_be_reached_is_retryable_and_named(
    make_registry: Callable[..., ToolRegistry], http_client: httpx.AsyncClient
) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there
    registry = make_registry(
        {"down": {"url": f"http://127.0.0.1:{port}/mcp", "timeout_s": 5, "retries": 0}}
    )
    await registry.start()  # logged, not raised: the worker starts all the same
    assert not [n for n in registry.tools if n.startswith("down.")]
    result = await attempt(ToolProcessor(registry, http_client, {}), tool_step("down.add", {}))
    assert result.status is StepStatus.failed and result.error is not None
    assert result.error.error_class in ("ToolUnavailable", "ToolTimeout"), result.error.message
    assert result.error.retryable
    assert "down" in result.error.message


async def test_a_server_gone_after_listing_keeps_its_tools_and_fails_calls_retryably(
    make_registry: Callable[..., ToolRegistry], http_client: httpx.AsyncClient
) -> None:
    async with serving() as url:
        # 2025-11-25 gives no lifetime, and list_ttl_s 0 makes every call list again.
        registry = make_registry({"calc": server_config("http", "2025-11-25", url, list_ttl_s=0)})
        await registry.start()
        assert "calc.add" in registry.tools
    assert isinstance(await registry.lookup("calc.add"), McpToolSpec), "the last listing"
    result = await attempt(
        ToolProcessor(registry, http_client, {}), tool_step("calc.add", {"a": 1, "b": 2})
    )
    assert result.status is StepStatus.failed and result.error is not None
    assert result.error.error_class in ("ToolUnavailable", "ToolTimeout"), result.error.message
    assert result.error.retryable


async def test_a_missing_secret_is_a_configuration_error(
    make_registry: Callable[..., ToolRegistry], http_client: httpx.AsyncClient
) -> None:
    registry = ToolRegistry(
        ToolsConfig.model_validate({"mcp_servers": {"calc": server_config("stdio", "auto", "")}}),
        environ={},
    )
    try:
        with pytest.raises(ConfigurationError, match="CALC_TOKEN is not set"):
            await registry.lookup("calc.add")
    finally:
        await registry.aclose()


# -- configuration --------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tools.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("server", "problem"),
    [
        ("{command: x, url: 'http://h/mcp'}", "exactly one of `command`"),
        ("{}", "exactly one of `command`"),
        ("{url: 'http://h/mcp', args: [a]}", "are for a `command`"),
        ("{command: x, headers: {A: b}}", "are for a `url`"),
        ("{url: '{{ args.u }}'}", "fixed by configuration"),
        ("{url: 'ftp://h/mcp'}", "http:// or https://"),
        ("{url: 'http://u:p@h/mcp'}", "credentials"),
        ("{url: 'http://h/mcp', headers: {Mcp-Session-Id: x}}", "set by the MCP transport"),
        ("{url: 'http://h/mcp', headers: {A: '{{ args.x }}'}}", "may read"),
        ("{command: x, env: {T: '{{ secrets[name] }}'}}", "may read secrets.NAME only"),
        ("{command: '{{ secrets.X }}'}", "no templates"),
        ("{command: x, protocol: '2024-11-05'}", "protocol"),
    ],
)
def test_a_bad_server_is_refused_at_start_naming_the_field(
    tmp_path: Path, server: str, problem: str
) -> None:
    path = write(tmp_path, f"mcp_servers:\n  calc: {server}\n")
    with pytest.raises(ConfigurationError, match="tools.yaml: mcp_servers.calc") as caught:
        load_tools(path)
    assert problem in str(caught.value)


def test_a_tool_may_not_take_a_servers_prefix(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "tools:\n  calc.add: {kind: python, description: d, entry_point: e}\n"
        "mcp_servers:\n  calc: {command: x}\n",
    )
    with pytest.raises(ConfigurationError, match="calc. belongs to the MCP server calc"):
        load_tools(path, callables={"e": lambda args: args})


def test_servers_without_the_sdk_fail_at_start_naming_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "processors._mcp", None)  # import fails, as uninstalled
    path = write(tmp_path, "mcp_servers:\n  calc: {command: x}\n")
    with pytest.raises(ConfigurationError, match=r"baton\[mcp\]"):
        load_tools(path)
    assert load_tools(write(tmp_path, "tools: {}\n")).mcp is None, "no servers, no SDK needed"


# -- agents ---------------------------------------------------------------------------------

AGENT = """
workflow: w
version: 1
steps:
  help:
    kind: agent
    model: fast
    prompt: "{{ input.text }}"
    tools: [calc.add, calc.echo]
    max_turns: 3
"""


async def test_an_agent_is_offered_the_servers_tools_and_its_calls_are_tool_steps(
    calc: ToolRegistry, http_client: httpx.AsyncClient
) -> None:
    run = Run(parse_workflow(AGENT), tools=calc)
    run.send(task(input={"text": "add 2 and 3"}))
    turn = run.request("help")
    offered = turn.params["tools"]  # type: ignore[index]
    assert [t["name"] for t in offered] == ["calc.add", "calc.echo"]
    assert offered[0]["parameters"] == calc.tool("calc.add").args_schema

    run.send(ok(turn, calls(("c1", "calc.add", {"a": 2, "b": 3}))))
    [call] = run.requests()
    assert call.kind is StepKind.tool
    assert call.params == {"tool": "calc.add", "args": {"a": 2, "b": 3}}
    answer = await ToolProcessor(calc, http_client, {}).run(call)
    run.send(ok(call, answer.output))
    [turn2] = run.requests()
    assert turn2.params["messages"][-1]["content"] == '{"sum":5}'  # type: ignore[index]


async def test_an_approval_policy_on_a_servers_tools_gates_its_calls(calc: ToolRegistry) -> None:
    policies = Policies.model_validate(
        {"approvals": [{"name": "calc", "tools": ["calc.*"], "approvers": ["group:finance"]}]}
    )
    run = Run(parse_workflow(AGENT), tools=calc, policies=policies, access=Access())
    run.send(task(input={"text": "add"}))
    run.send(ok(run.request("help"), calls(("c1", "calc.add", {"a": 1, "b": 1}))))
    assert not run.requests(), "the call waits for an approval"
    [asked] = [e for e in run.last.emit if isinstance(e, ApprovalRequested)]
    assert asked.context["call"]["tool"] == "calc.add"  # type: ignore[index]
