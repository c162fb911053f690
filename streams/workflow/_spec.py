"""The workflow file format: pydantic models for the YAML a workflow author writes.

A workflow is a DAG of steps: ``after:`` orders them, ``when:`` skips one, steps whose
dependencies are done run in parallel. Strings holding ``{{ }}`` are templates rendered in
the sandbox (see ``processors._templates``) against the run context: ``input``, ``steps``
(``steps.<name>.output``) and ``run`` (``run.id``, ``run.tenant``, ``run.attempt``).
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    WithJsonSchema,
    field_validator,
    model_validator,
)

__all__ = [
    "DEFAULT_TIMEOUTS",
    "BackoffSpec",
    "BudgetSpec",
    "Duration",
    "LlmStep",
    "Message",
    "OnFail",
    "RetrySpec",
    "StepSpec",
    "TransformStep",
    "ValidateRule",
    "ValidateStep",
    "WorkflowSpec",
    "parse_duration",
]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"


def parse_duration(value: Any) -> float:
    """Seconds from ``90``, ``"90s"``, ``"10m"``, ``"4h"``, ``"1d"`` or ``"250ms"``."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '10m'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise ValueError(f"{value!r} is not a duration: use seconds or e.g. '30s', '10m', '4h'")
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


#: Seconds, written as a number or as ``"30s"``, ``"10m"``, ``"4h"``.
Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0},
                {"type": "string", "pattern": _DURATION.pattern},
            ],
            "description": "Seconds, or a string such as '250ms', '30s', '10m', '4h', '1d'.",
        }
    ),
]
StepName = Annotated[str, Field(pattern=NAME_PATTERN)]

#: How long an attempt of each kind may take before it is dispatched again.
DEFAULT_TIMEOUTS: dict[str, float] = {"llm": 120.0, "transform": 30.0, "validate": 30.0}


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class BackoffSpec(_Spec):
    """How long delayed retries wait: ``initial * multiplier^(n-1)``, at most ``max``.

    The wait is rounded up to a retry tier (``BATON_RETRY_TIERS``, default 5s, 1m, 10m) and
    spread by up to ``jitter`` (a fraction of it), so retries of many runs do not arrive
    together. A ``Retry-After`` from the provider lengthens it.
    """

    initial: Duration = Field(default=5.0, description="Wait before the first retry.")
    multiplier: float = Field(default=4.0, ge=1.0, le=100.0)
    max: Duration = Field(default=600.0, description="Longest wait.")
    jitter: float = Field(default=0.1, ge=0.0, le=1.0)


class RetrySpec(_Spec):
    """When and how often a failed step is tried again.

    Attributes:
        attempts: Attempts per route, counting re-dispatches after a timeout.
        backoff: How long delayed retries wait.
        errors: Which failures are retried: ``retryable`` (every error classified
            retryable: timeouts, connection errors, 408/409/429/5xx), ``timeout`` (only step
            timeouts), or error class names (``ProviderRateLimited``). (Not ``on:``, which
            YAML reads as ``true``.)
    """

    attempts: int = Field(default=3, ge=1, le=20)
    backoff: BackoffSpec = Field(default_factory=BackoffSpec)
    errors: list[str] = Field(default_factory=lambda: ["retryable"], min_length=1)


class _StepBase(_Spec):
    after: list[StepName] = Field(
        default_factory=list, description="Steps that must finish before this one starts."
    )
    when: bool | str | None = Field(
        default=None,
        description="Condition (expression, e.g. `input.refund_usd > 100`); false skips the step.",
    )
    timeout: Duration | None = Field(
        default=None, description="How long one attempt may take (e.g. '2m'); kind default."
    )
    retry: RetrySpec = Field(default_factory=RetrySpec, description="Retry policy.")
    description: str = Field(default="", description="What the step is for.")

    @field_validator("after")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("lists a step twice")
        return value


class Message(_Spec):
    """One chat message of an ``llm`` step; ``content`` is a template."""

    role: Literal["system", "user", "assistant"]
    content: str


class LlmStep(_StepBase):
    """A chat completion through a model route of the catalog."""

    kind: Literal["llm"]
    model: str = Field(
        min_length=1,
        description="Route name from the model catalog (`fast`), or a template choosing one.",
    )
    prompt: str | None = Field(default=None, description="The user message (a template).")
    system: str | None = Field(default=None, description="The system message (a template).")
    messages: list[Message] | None = Field(
        default=None, description="Full conversation instead of prompt/system."
    )
    output_schema: dict[str, Any] | None = Field(
        default=None, description="JSON Schema the answer must satisfy; the output is the JSON."
    )
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    fallback: list[str] = Field(
        default_factory=list,
        description="Routes tried in order when the current one fails for good (or its "
        "provider's circuit is open).",
    )

    @model_validator(mode="after")
    def _one_way_to_prompt(self) -> LlmStep:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give either `prompt` (with an optional `system`) or `messages`")
        if self.messages is not None and self.system is not None:
            raise ValueError("`system` goes with `prompt`; with `messages`, add a system message")
        return self


class TransformStep(_StepBase):
    """Computes a value from the run context with templates."""

    kind: Literal["transform"]
    output: JsonValue = Field(description="JSON whose template strings are rendered.")


class ValidateRule(_Spec):
    """A rule: an expression that must be true, and what to say when it is not."""

    check: str = Field(min_length=1, description="Expression; `value` is the value checked.")
    message: str = Field(min_length=1, description="The error when the check is false.")


class OnFail(_Spec):
    """What to do when validation fails: run an earlier step again with the errors fed back."""

    retry_step: StepName = Field(description="The earlier step to run again.")
    max: int = Field(default=2, ge=1, le=10, description="Re-runs allowed before the run fails.")


class ValidateStep(_StepBase):
    """Checks a value against a JSON Schema and rules."""

    kind: Literal["validate"]
    value: JsonValue = Field(description="What to check (templates rendered).")
    schema_: dict[str, Any] | None = Field(
        default=None, alias="schema", description="JSON Schema the value must satisfy."
    )
    rules: list[ValidateRule] = Field(default_factory=list)
    on_fail: OnFail | None = Field(default=None)

    @model_validator(mode="after")
    def _something_to_check(self) -> ValidateStep:
        if self.schema_ is None and not self.rules:
            raise ValueError("give a `schema`, `rules`, or both")
        return self


StepSpec = Annotated[LlmStep | TransformStep | ValidateStep, Field(discriminator="kind")]


class BudgetSpec(_Spec):
    """Caps on one run; a missing cap is no cap."""

    max_steps: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_cost_usd: Decimal | None = Field(default=None, ge=0)
    deadline: Duration | None = Field(default=None, description="Wall time, e.g. '10m'.")


class WorkflowSpec(_Spec):
    """A workflow definition."""

    workflow: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,99}$", description="Its name.")
    version: int = Field(ge=1, description="The author's version number.")
    description: str = ""
    input: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object"},
        description="JSON Schema every task's input must satisfy.",
    )
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    steps: dict[StepName, StepSpec] = Field(min_length=1)
    output: JsonValue = Field(
        default=None,
        description="The run's output (templates rendered); default: the outputs of the steps "
        "nothing else runs after.",
    )
