"""What every processor is, and how one attempt becomes a ``StepResult``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, JsonValue, ValidationError

from processors._errors import InvalidParams
from topics import (
    BatonError,
    RetryableError,
    StepError,
    StepRequested,
    StepResult,
    StepStatus,
    Usage,
)

__all__ = ["INTERNAL_ERROR", "STEP_TRACE", "Processor", "StepOutput", "execute"]

#: ``StepError.error_class`` of a failure that is a bug rather than one of baton's errors.
INTERNAL_ERROR = "InternalError"

#: The W3C trace context (``traceparent``, and ``tracestate`` when there is one) of the step
#: request being run, for processors that pass it on (an MCP call puts it in its ``_meta``).
#: Set by the shell that consumes the requests, only when tracing is on; empty otherwise.
STEP_TRACE: ContextVar[Mapping[str, str]] = ContextVar(
    "baton_step_trace", default=MappingProxyType({})
)

_MAX_INTERNAL_MESSAGE = 500

logger = logging.getLogger(__name__)

_P = TypeVar("_P", bound=BaseModel)


@dataclass(frozen=True)
class StepOutput:
    """What one successful attempt produced.

    Attributes:
        output: The step's output (JSON).
        usage: Tokens and money the attempt used, for steps that use any.
    """

    output: JsonValue
    usage: Usage | None = None


class Processor(Protocol):
    """Runs one attempt of a step of one kind. No Kafka: a plain async object.

    ``run`` raises errors of baton's tree (``BatonError``) to say how the attempt failed;
    anything else it raises is treated as a bug.
    """

    @property
    def kind(self) -> str:
        """The step kind this processor runs (a ``StepKind``, or a custom kind's name)."""
        ...

    async def run(self, request: StepRequested) -> StepOutput:
        """Run one attempt of the step ``request`` asks for."""
        ...


async def execute(
    processor: Processor,
    request: StepRequested,
    *,
    worker: str,
    now: Callable[[], datetime],
) -> StepResult:
    """Run one attempt and turn every outcome into a ``StepResult``; nothing escapes.

    A ``BatonError`` becomes a failed result named by its class, retryable as its branch says,
    with its ``retry_after``. Any other exception is a bug: it is logged with its traceback and
    becomes a failed, non-retryable ``InternalError``. Cancellation still propagates.

    Args:
        processor: The processor for the request's kind.
        request: The attempt to run.
        worker: Name of this worker, recorded in the result.
        now: The clock, read when the attempt starts and ends.
    """
    started_at = now()
    error: StepError
    usage: Usage | None = None
    try:
        outcome = await processor.run(request)
        return StepResult(
            run_id=request.run_id,
            step=request.step,
            attempt=request.attempt,
            status=StepStatus.ok,
            output=outcome.output,
            usage=outcome.usage,
            started_at=started_at,
            finished_at=now(),
            worker=worker,
        )
    except BatonError as exc:
        retry_after = exc.retry_after if isinstance(exc, RetryableError) else None
        error = StepError(
            error_class=type(exc).__name__,
            message=str(exc) or type(exc).__name__,
            retryable=exc.retryable,
            retry_after_s=retry_after,
        )
        spent = getattr(exc, "usage", None)
        usage = spent if isinstance(spent, Usage) else None
    except Exception as exc:
        logger.exception(
            "bug in the %s processor: run %s step %s attempt %d",
            request.kind_name,
            request.run_id,
            request.step,
            request.attempt,
        )
        message = f"{type(exc).__name__}: {exc}"
        if len(message) > _MAX_INTERNAL_MESSAGE:
            message = message[: _MAX_INTERNAL_MESSAGE - 3] + "..."
        error = StepError(error_class=INTERNAL_ERROR, message=message, retryable=False)
    return StepResult(
        run_id=request.run_id,
        step=request.step,
        attempt=request.attempt,
        status=StepStatus.failed,
        error=error,
        usage=usage,
        started_at=started_at,
        finished_at=now(),
        worker=worker,
    )


def parse_params(model: type[_P], request: StepRequested) -> _P:
    """The request's ``params`` as ``model``.

    Raises:
        InvalidParams: They do not have the shape the kind needs.
    """
    try:
        return model.model_validate(request.params)
    except ValidationError as exc:
        raise InvalidParams(f"{request.kind_name} params: {_describe(exc)}") from None


def run_context(request: StepRequested) -> dict[str, Any]:
    """The run context a transform or validate step computes over.

    Raises:
        InvalidParams: The request carries no context object.
    """
    if not isinstance(request.context, dict):
        raise InvalidParams(f"{request.kind_name} step: the request has no context object")
    return request.context


def _describe(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in item['loc']) or '(params)'}: {item['msg']}"
        for item in error.errors()
    )
