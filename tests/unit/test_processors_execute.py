"""``execute``: every outcome of an attempt becomes a StepResult; the public surface is pinned."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal

import httpx
import pytest

import processors
from processors import (
    INTERNAL_ERROR,
    LlmProcessor,
    ModelCatalog,
    OutputSchemaViolation,
    ProviderRateLimited,
    ProviderRejected,
    StepOutput,
    TransformProcessor,
    UnknownRoute,
    ValidateProcessor,
    build_processors,
    execute,
)
from tests.fakes.steps import DISPATCHED_AT, step_request
from topics import BUILTIN_KINDS, StepKind, StepRequested, StepResult, StepStatus, Usage

REQUEST = step_request(StepKind.transform, {"output": 1}, {}, step="shape", attempt=3)


def _clock() -> Callable[[], datetime]:
    ticks = itertools.count()
    return lambda: DISPATCHED_AT + timedelta(seconds=next(ticks))


class _Fixed:
    """A processor whose run is whatever the test says."""

    kind = StepKind.transform

    def __init__(self, run: Callable[[], object]) -> None:
        self._run = run

    async def run(self, request: StepRequested) -> StepOutput:
        outcome = self._run()
        assert isinstance(outcome, StepOutput)
        return outcome


def _raising(error: BaseException) -> _Fixed:
    def run() -> object:
        raise error

    return _Fixed(run)


async def test_success_becomes_an_ok_result() -> None:
    usage = Usage(input_tokens=3, output_tokens=4, cost_usd=Decimal("0.01"), route="fast")
    processor = _Fixed(lambda: StepOutput({"a": [1, "b"]}, usage))

    result = await execute(processor, REQUEST, worker="worker-7", now=_clock())

    assert result == StepResult(
        run_id="run-1",
        step="shape",
        attempt=3,
        status=StepStatus.ok,
        output={"a": [1, "b"]},
        usage=usage,
        started_at=DISPATCHED_AT,
        finished_at=DISPATCHED_AT + timedelta(seconds=1),
        worker="worker-7",
    )


@pytest.mark.parametrize(
    ("error", "error_class", "retryable", "retry_after"),
    [
        (ProviderRateLimited("slow down", retry_after=2.5), "ProviderRateLimited", True, 2.5),
        (ProviderRejected("HTTP 400: bad", status=400), "ProviderRejected", False, None),
        (UnknownRoute("no route"), "UnknownRoute", False, None),
    ],
)
async def test_baton_errors_become_failed_results_named_by_class(
    error: Exception, error_class: str, retryable: bool, retry_after: float | None
) -> None:
    result = await execute(_raising(error), REQUEST, worker="w", now=_clock())

    assert result.status is StepStatus.failed
    assert result.output is None
    assert result.error is not None
    assert result.error.error_class == error_class
    assert result.error.message == str(error)
    assert result.error.retryable is retryable
    assert result.error.retry_after_s == retry_after
    assert (result.started_at, result.finished_at) == (
        DISPATCHED_AT,
        DISPATCHED_AT + timedelta(seconds=1),
    )


async def test_a_failure_that_was_billed_keeps_its_usage() -> None:
    usage = Usage(input_tokens=10, output_tokens=2, cost_usd=Decimal("0.5"))
    error = OutputSchemaViolation("output.x: bad", usage=usage)

    result = await execute(_raising(error), REQUEST, worker="w", now=_clock())

    assert result.error is not None
    assert result.error.error_class == "OutputSchemaViolation"
    assert result.usage == usage


async def test_a_bug_becomes_a_non_retryable_internal_error_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="processors"):
        result = await execute(_raising(KeyError("oops")), REQUEST, worker="w", now=_clock())

    assert result.status is StepStatus.failed
    assert result.error is not None
    assert result.error.error_class == INTERNAL_ERROR == "InternalError"
    assert result.error.message == "KeyError: 'oops'"
    assert result.error.retryable is False
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.exc_info is not None
    assert record.exc_info[0] is KeyError
    assert "run run-1 step shape attempt 3" in record.getMessage()


async def test_an_output_that_is_not_json_is_a_bug_too() -> None:
    processor = _Fixed(lambda: StepOutput(object()))  # type: ignore[arg-type]  # the bug tested

    result = await execute(processor, REQUEST, worker="w", now=_clock())

    assert result.error is not None
    assert result.error.error_class == INTERNAL_ERROR


async def test_an_internal_error_message_is_bounded() -> None:
    result = await execute(_raising(ValueError("x" * 5000)), REQUEST, worker="w", now=_clock())
    assert result.error is not None
    assert len(result.error.message) == 500


async def test_cancellation_is_not_swallowed() -> None:
    with pytest.raises(asyncio.CancelledError):
        await execute(_raising(asyncio.CancelledError()), REQUEST, worker="w", now=_clock())


async def test_real_processors_report_through_execute() -> None:
    ok = await execute(TransformProcessor(), REQUEST, worker="w", now=_clock())
    bad = await execute(
        TransformProcessor(),
        step_request(StepKind.transform, {"output": "{{ nope }}"}, {}),
        worker="w",
        now=_clock(),
    )

    assert (ok.status, ok.output) == (StepStatus.ok, 1)
    assert bad.error is not None
    assert (bad.error.error_class, bad.error.retryable) == ("TemplateRenderError", False)


async def test_build_processors_covers_every_step_kind_a_worker_runs() -> None:
    async with httpx.AsyncClient() as client:
        built = build_processors(ModelCatalog(routes={}), client, {})

    assert set(built) == set(BUILTIN_KINDS)
    assert isinstance(built[StepKind.llm], LlmProcessor)
    assert isinstance(built[StepKind.agent], processors.AgentProcessor)
    assert isinstance(built[StepKind.tool], processors.ToolProcessor)
    assert isinstance(built[StepKind.retrieve], processors.RetrieveProcessor)
    assert isinstance(built[StepKind.transform], TransformProcessor)
    assert isinstance(built[StepKind.validate], ValidateProcessor)
    assert all(kind is processor.kind for kind, processor in built.items())


def test_the_public_surface_is_pinned() -> None:
    assert sorted(processors.__all__) == [
        "AgentParams",
        "AgentProcessor",
        "AnthropicProvider",
        "BlobCorrupt",
        "BlobMissing",
        "BlobReference",
        "BlobStore",
        "BlobStoreUnavailable",
        "Breakers",
        "ChatMessage",
        "CircuitOpen",
        "Claims",
        "Completion",
        "CustomKindProcessor",
        "CustomProcessor",
        "DEFAULT_CLAIM_THRESHOLD",
        "Expression",
        "HttpSourceSpec",
        "HttpToolSpec",
        "INTERNAL_ERROR",
        "InstalledKind",
        "InvalidParams",
        "KIND_ENTRY_POINT_GROUP",
        "KindFailed",
        "KindSetup",
        "KindTimeout",
        "KindUnavailable",
        "LlmParams",
        "LlmProcessor",
        "LocalBlobStore",
        "LocalSourceSpec",
        "MAX_TEMPLATE_CALL_DEPTH",
        "MAX_TEMPLATE_CHARS",
        "MAX_TEMPLATE_DEPTH",
        "MAX_TEMPLATE_INT_BITS",
        "MAX_TEMPLATE_STEPS",
        "McpServerSpec",
        "McpToolSpec",
        "MemoryResponseCache",
        "ModelCatalog",
        "ModelClient",
        "OpenAIProvider",
        "OutputSchemaViolation",
        "Processor",
        "Provider",
        "ProviderRateLimited",
        "ProviderRejected",
        "ProviderTimeout",
        "ProviderUnavailable",
        "PythonToolSpec",
        "ResponseCache",
        "ResponsesProvider",
        "RetrieveParams",
        "RetrieveProcessor",
        "RouteSpec",
        "STEP_TRACE",
        "ScriptRule",
        "ScriptedProvider",
        "StepOutput",
        "StreamingProvider",
        "TEMPLATE_GLOBALS",
        "TEMPLATE_TIME_BUDGET_S",
        "Template",
        "TemplateError",
        "TemplateLimitExceeded",
        "TemplateRenderError",
        "TextCallback",
        "TextStream",
        "ToolCall",
        "ToolCallMessage",
        "ToolDefinition",
        "ToolFailed",
        "ToolParams",
        "ToolProcessor",
        "ToolRateLimited",
        "ToolRegistry",
        "ToolRejected",
        "ToolRequestRefused",
        "ToolResultMessage",
        "ToolTimeout",
        "ToolUnavailable",
        "ToolsConfig",
        "TransformParams",
        "TransformProcessor",
        "UnknownRoute",
        "UnknownSource",
        "UnknownTool",
        "ValidateParams",
        "ValidateProcessor",
        "ValidateRule",
        "ValidationFailed",
        "build_processors",
        "cache_key",
        "cacheable",
        "compile_expression",
        "compile_template",
        "current_stream",
        "execute",
        "installed_kinds",
        "is_template",
        "load_kinds",
        "load_model_catalog",
        "load_tools",
        "references",
        "render_value",
        "step_reads",
        "streaming_to",
        "template_budget",
    ]
    assert all(hasattr(processors, name) for name in processors.__all__)


@pytest.mark.parametrize(
    ("name", "branch"),
    [
        ("ProviderTimeout", "RetryableError"),
        ("ProviderUnavailable", "RetryableError"),
        ("ProviderRateLimited", "RetryableError"),
        ("ProviderRejected", "PermanentError"),
        ("OutputSchemaViolation", "PermanentError"),
        ("ValidationFailed", "PermanentError"),
        ("InvalidParams", "PermanentError"),
        ("UnknownRoute", "ConfigurationError"),
        ("ToolTimeout", "RetryableError"),
        ("ToolUnavailable", "RetryableError"),
        ("ToolRateLimited", "RetryableError"),
        ("ToolRejected", "PermanentError"),
        ("ToolRequestRefused", "PermanentError"),
        ("ToolFailed", "PermanentError"),
        ("UnknownTool", "PermanentError"),
        ("UnknownSource", "PermanentError"),
    ],
)
def test_every_processor_error_sits_in_the_tree(name: str, branch: str) -> None:
    import topics

    error_type = getattr(processors, name)
    assert issubclass(error_type, getattr(topics, branch))
    assert issubclass(error_type, topics.BatonError)
    assert error_type.retryable is (branch == "RetryableError")
    assert name in (processors._errors.__doc__ or "")
