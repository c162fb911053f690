"""Python tools: callables from the ``baton.tools`` entry points, or the test seam."""

from __future__ import annotations

import asyncio
import textwrap
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from processors import InvalidParams, execute
from processors._tool import ToolProcessor
from processors._tools import (
    ToolCallable,
    ToolFailed,
    ToolRateLimited,
    ToolRegistry,
    ToolsConfig,
    ToolTimeout,
)
from tests.fakes.steps import DISPATCHED_AT, step_request
from topics import ConfigurationError, StepKind, StepRequested

SCHEMA = {
    "type": "object",
    "required": ["order_id"],
    "properties": {"order_id": {"type": "string"}},
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


def _config(**overrides: Any) -> ToolsConfig:
    spec: dict[str, Any] = {
        "kind": "python",
        "description": "The status of an order.",
        "entry_point": "order_status",
        "args_schema": SCHEMA,
    }
    spec.update(overrides)
    return ToolsConfig.model_validate({"tools": {"order_status": spec}})


def _processor(
    client: httpx.AsyncClient, function: ToolCallable, **overrides: Any
) -> tuple[ToolProcessor, _Sleeps]:
    sleeps = _Sleeps()
    registry = ToolRegistry(_config(**overrides), callables={"order_status": function})
    return ToolProcessor(registry, client, {}, sleep=sleeps), sleeps


def _request(args: Any = None, **overrides: Any) -> StepRequested:
    params = {"tool": "order_status", "args": {"order_id": "A-1"} if args is None else args}
    return step_request(StepKind.tool, params, **overrides)


async def test_a_sync_tool_gets_the_args_off_the_event_loop(
    http_client: httpx.AsyncClient,
) -> None:
    seen: list[tuple[dict[str, Any], int]] = []

    def order_status(args: dict[str, Any]) -> dict[str, Any]:
        seen.append((args, threading.get_ident()))
        args["order_id"] = "changed"  # the tool's copy, not the request
        return {"status": "shipped", "carrier": "DHL", "parcels": (1, 2)}

    processor, _ = _processor(http_client, order_status)
    request = _request()

    outcome = await processor.run(request)

    assert outcome.output == {"status": "shipped", "carrier": "DHL", "parcels": [1, 2]}
    assert seen[0][1] != threading.get_ident()
    assert request.params == {"tool": "order_status", "args": {"order_id": "A-1"}}


async def test_async_tools_and_the_idempotency_key(http_client: httpx.AsyncClient) -> None:
    async def with_key(args: dict[str, Any], idempotency_key: str) -> list[str]:
        await asyncio.sleep(0)
        return [args["order_id"], idempotency_key]

    class Callable:
        async def __call__(self, args: dict[str, Any]) -> str:
            return f"object:{args['order_id']}"

    keyed, _ = _processor(http_client, with_key)
    an_object, _ = _processor(http_client, Callable())

    assert (await keyed.run(_request())).output == ["A-1", "run-1/s"]
    assert (await an_object.run(_request())).output == "object:A-1"


async def test_args_are_checked_before_the_call(http_client: httpx.AsyncClient) -> None:
    calls: list[Any] = []
    processor, _ = _processor(http_client, calls.append)

    with pytest.raises(InvalidParams, match="args: 'order_id' is a required property"):
        await processor.run(_request({"order": "A-1"}))
    assert calls == []


async def test_any_other_exception_is_a_permanent_tool_failure(
    http_client: httpx.AsyncClient,
) -> None:
    def broken(args: dict[str, Any]) -> None:
        raise KeyError("warehouse")

    processor, sleeps = _processor(http_client, broken)

    result = await execute(processor, _request(), worker="w", now=lambda: DISPATCHED_AT)

    assert result.error is not None
    assert result.error.error_class == "ToolFailed"
    assert result.error.message == "tool 'order_status': KeyError: 'warehouse'"
    assert result.error.retryable is False
    assert sleeps.waits == []


async def test_a_baton_error_keeps_its_class_and_retryable_ones_are_retried(
    http_client: httpx.AsyncClient,
) -> None:
    calls = 0

    def flaky(args: dict[str, Any]) -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ToolRateLimited("the warehouse API is busy", retry_after=1.5)
        return "ok"

    def refuses(args: dict[str, Any]) -> str:
        raise InvalidParams("order A-1 belongs to another tenant")

    retried, sleeps = _processor(http_client, flaky)
    refused, _ = _processor(http_client, refuses)

    assert (await retried.run(_request())).output == "ok"
    assert sleeps.waits == [1.5, 1.5]
    with pytest.raises(InvalidParams, match="another tenant"):
        await refused.run(_request())


async def test_retries_run_out(http_client: httpx.AsyncClient) -> None:
    calls: list[int] = []

    async def busy(args: dict[str, Any]) -> str:
        calls.append(1)
        raise ToolRateLimited("busy")

    processor, _ = _processor(http_client, busy, retries=1)

    with pytest.raises(ToolRateLimited):
        await processor.run(_request())
    assert len(calls) == 2


@pytest.mark.parametrize("answer", [{1, 2}, object(), float("nan"), {1: "x"}, {"a": [b"x"]}])
async def test_an_answer_that_is_not_json_fails(
    http_client: httpx.AsyncClient, answer: Any
) -> None:
    processor, _ = _processor(http_client, lambda args: answer)

    with pytest.raises(ToolFailed, match="tool 'order_status': the answer"):
        await processor.run(_request())


SECRET = "pg-pass-9f8e7d6c5b"


def _secret_processor(
    client: httpx.AsyncClient, function: ToolCallable, **overrides: Any
) -> tuple[ToolProcessor, _Sleeps]:
    sleeps = _Sleeps()
    config = _config(secrets=["ORDERS_DB_PASSWORD"], **overrides)
    registry = ToolRegistry(config, callables={"order_status": function})
    environ = {"ORDERS_DB_PASSWORD": SECRET}
    return ToolProcessor(registry, client, environ, sleep=sleeps), sleeps


async def test_a_python_tools_exception_text_is_redacted_and_capped(
    http_client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    def leaks(args: dict[str, Any]) -> None:
        dsn = f"postgresql://orders:{SECRET}@db:5432/orders"
        raise ConnectionError(f"could not connect to {dsn}: " + "timeout; " * 200) from (
            RuntimeError(f"pool for {dsn} is exhausted")
        )

    processor, _ = _secret_processor(http_client, leaks)

    with caplog.at_level("WARNING", logger="processors._tool"):
        result = await execute(processor, _request(), worker="w", now=lambda: DISPATCHED_AT)

    assert result.error is not None
    assert result.error.error_class == "ToolFailed"
    assert result.error.message.startswith(
        "tool 'order_status': ConnectionError: could not connect to "
        "postgresql://orders:[redacted]@db:5432/orders: timeout;"
    )
    assert len(result.error.message) <= 300
    assert SECRET not in result.error.message
    assert "tool 'order_status' raised" in caplog.text
    assert "pool for postgresql://orders:[redacted]@db" in caplog.text  # the cause, too
    assert SECRET not in caplog.text


async def test_a_python_tools_own_baton_error_is_redacted_and_keeps_its_class(
    http_client: httpx.AsyncClient,
) -> None:
    def busy(args: dict[str, Any]) -> str:
        raise ToolRateLimited(f"quota for key {SECRET} spent " + "x" * 500, retry_after=2.0)

    processor, sleeps = _secret_processor(http_client, busy, retries=1)

    with pytest.raises(ToolRateLimited) as caught:
        await processor.run(_request())

    assert caught.value.retry_after == 2.0
    assert str(caught.value).startswith("quota for key [redacted] spent xxx")
    assert len(str(caught.value)) <= 300
    assert sleeps.waits == [2.0]


async def test_a_python_tools_answer_is_redacted(http_client: httpx.AsyncClient) -> None:
    processor, _ = _secret_processor(
        http_client, lambda args: {"echo": f"connected with {SECRET}", SECRET: [SECRET]}
    )

    outcome = await processor.run(_request())

    assert outcome.output == {"echo": "connected with [redacted]", "[redacted]": ["[redacted]"]}


async def test_an_unset_secret_variable_redacts_nothing_and_is_not_an_error(
    http_client: httpx.AsyncClient,
) -> None:
    registry = ToolRegistry(
        _config(secrets=["ORDERS_DB_PASSWORD"]), callables={"order_status": lambda args: "ok"}
    )

    outcome = await ToolProcessor(registry, http_client, {}).run(_request())

    assert outcome.output == "ok"


def test_secrets_are_named_by_environment_variable() -> None:
    with pytest.raises(ValueError, match="'not a name' is not an environment variable name"):
        _config(secrets=["not a name"])


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


def _cycle() -> Any:
    value: dict[str, Any] = {}
    value["self"] = value
    return value


@pytest.mark.parametrize(
    ("answer", "limit"),
    [
        (_nested(10_000), "nests deeper than the limit of 64 levels"),
        (_cycle(), "nests deeper than the limit of 64 levels"),
        ({"blob": "x" * (1 << 20)}, f"bytes of JSON, over the limit of {1 << 20}"),
    ],
    ids=["deep", "cycle", "large"],
)
async def test_an_answer_over_the_json_limits_fails_permanently_naming_the_limit(
    http_client: httpx.AsyncClient, answer: Any, limit: str
) -> None:
    processor, _ = _processor(http_client, lambda args: answer)

    result = await execute(processor, _request(), worker="w", now=lambda: DISPATCHED_AT)

    assert result.error is not None
    assert (result.error.error_class, result.error.retryable) == ("JsonLimitExceeded", False)
    assert limit in result.error.message
    assert result.error.message.startswith("tool 'order_status': the answer ")


async def test_a_slow_tool_times_out(http_client: httpx.AsyncClient) -> None:
    async def slow(args: dict[str, Any]) -> str:
        await asyncio.sleep(5)
        return "late"

    processor, _ = _processor(http_client, slow, timeout_s=0.05, retries=0)

    with pytest.raises(ToolTimeout, match=r"no answer within 0\.05 s"):
        await processor.run(_request())


# -- entry points -----------------------------------------------------------------------------


def _install(root: Path, distribution: str, entry_points: dict[str, str], module: str) -> None:
    """A distribution on sys.path, as pip would leave it: a module and its dist-info."""
    (root / f"{module}.py").write_text(
        textwrap.dedent(
            """
            def order_status(args):
                return {"order": args["order_id"], "status": "delivered"}

            NOT_CALLABLE = 3
            """
        )
    )
    info = root / f"{distribution}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.0\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[baton.tools]\n{lines}")


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    module = f"acme_tools_{uuid.uuid4().hex[:8]}"
    _install(
        tmp_path,
        f"acme_tools_{module[-8:]}",
        {
            "order_status": f"{module}:order_status",
            "broken": "no_such_module_anywhere:order_status",
            "three": f"{module}:NOT_CALLABLE",
        },
        module,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return module


async def test_a_callable_is_found_through_its_entry_point(
    plugin_module: str, http_client: httpx.AsyncClient
) -> None:
    registry = ToolRegistry(_config())
    processor = ToolProcessor(registry, http_client, {})

    outcome = await processor.run(_request())

    assert outcome.output == {"order": "A-1", "status": "delivered"}


@pytest.mark.parametrize(
    ("entry_point", "message"),
    [
        (
            "missing",
            r"tools\.order_status\.entry_point: no entry point 'missing' in group baton\.tools "
            r"\(installed: .*broken, (clock, )?order_status, three",
        ),
        ("broken", r"'broken' \(no_such_module_anywhere:order_status\) cannot be loaded: "),
        ("three", "'three' is not callable"),
    ],
)
def test_entry_points_that_cannot_be_used_are_configuration_errors(
    plugin_module: str, entry_point: str, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ToolRegistry(_config(entry_point=entry_point))


def test_an_entry_point_registered_twice_is_ambiguous(
    plugin_module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    _install(other, "other_tools", {"order_status": "other_tools_mod:order_status"}, "other_mod")
    monkeypatch.syspath_prepend(str(other))

    with pytest.raises(ConfigurationError, match="'order_status' is registered more than once"):
        ToolRegistry(_config())


def test_the_seam_stands_in_for_the_entry_points(plugin_module: str) -> None:
    with pytest.raises(ConfigurationError, match=r"\(installed: other\)"):
        ToolRegistry(_config(), callables={"other": print})
