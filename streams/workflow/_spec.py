"""The workflow file format: pydantic models for the YAML a workflow author writes.

A workflow is a DAG of steps: ``after:`` orders them, ``when:`` skips one, steps whose
dependencies are done run in parallel. Strings holding ``{{ }}`` are templates rendered in
the sandbox (see ``processors._templates``) against the run context: ``input``, ``steps``
(``steps.<name>.output``) and ``run`` (``run.id``, ``run.tenant``, ``run.attempt``).
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    JsonValue,
    Tag,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from topics import KIND_PATTERN, check_kind

__all__ = [
    "AgentStep",
    "RetrieveStep",
    "DEFAULT_TIMEOUTS",
    "PRINCIPAL_PATTERN",
    "ApprovalStep",
    "EscalationLevel",
    "BackoffSpec",
    "BudgetSpec",
    "CUSTOM_TIMEOUT",
    "CustomStep",
    "Duration",
    "LlmStep",
    "Message",
    "OnFail",
    "Principal",
    "RouteRule",
    "RetrySpec",
    "StepSpec",
    "ToolStep",
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
_NAME = re.compile(NAME_PATTERN)


def _step_name(value: str) -> str:
    """A step name: ids built from it (``<run>/<step>/<n>``) must split one way only."""
    if _NAME.match(value):
        return value
    if not value or len(value) > 63:
        problem = f"it has {len(value)} characters (1 to 63)"
    elif not re.match(r"[a-z0-9]", value[0]):
        problem = "it must start with a lower-case letter or a digit"
    else:
        bad = next(c for c in value if not re.match(r"[a-z0-9_-]", c))
        problem = f"{bad!r} is not allowed (use a-z 0-9 _ -)"
    raise PydanticCustomError("step_name", f"{value!r} is not a step name: {problem}")


StepName = Annotated[
    str,
    AfterValidator(_step_name),
    WithJsonSchema({"type": "string", "pattern": NAME_PATTERN}),
]

#: How long an attempt of each kind may take before it is dispatched again.
DEFAULT_TIMEOUTS: dict[str, float] = {
    "llm": 120.0,
    "agent": 120.0,  # one turn: one model call
    "tool": 60.0,
    "retrieve": 30.0,
    "transform": 30.0,
    "validate": 30.0,
    "approval": 86400.0,  # people: a day per level unless the workflow says otherwise
}

#: How long an attempt of a custom kind may take unless its step says (``timeout:``).
CUSTOM_TIMEOUT = 60.0


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


class RouteRule(_Spec):
    """A routing rule: when the condition holds, use this route."""

    when: str = Field(min_length=1, description="Expression over input, steps, run.")
    model: str = Field(min_length=1, description="The route (name or template).")


class _ModelStep(_StepBase):
    """What llm steps and agent turns have in common: a route, a prompt, the call's settings."""

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
    routes: list[RouteRule] = Field(
        default_factory=list,
        description="Routing rules, first match wins; `model` when none matches.",
    )
    cache: bool = Field(
        default=True,
        description="Serve an identical earlier answer from the response cache (temperature 0 "
        "only); false always calls the model.",
    )

    @model_validator(mode="after")
    def _one_way_to_prompt(self) -> Self:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give either `prompt` (with an optional `system`) or `messages`")
        if self.messages is not None and self.system is not None:
            raise ValueError("`system` goes with `prompt`; with `messages`, add a system message")
        return self


class LlmStep(_ModelStep):
    """A chat completion through a model route of the catalog."""

    kind: Literal["llm"]
    cascade: list[str] = Field(
        default_factory=list,
        description="Stronger routes for the re-runs a validate step's on_fail asks for: the "
        "first re-run uses the first, and so on (the last one keeps being used).",
    )


class ToolStep(_StepBase):
    """Calls one tool of the registry (``tools.yaml``) with templated arguments."""

    kind: Literal["tool"]
    tool: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="Tool name in tools.yaml."
    )
    args: dict[str, JsonValue] = Field(
        default_factory=dict, description="The arguments; template strings are rendered."
    )


class RetrieveStep(_StepBase):
    """Fetches context from a source of the registry: a local collection or a search endpoint."""

    kind: Literal["retrieve"]
    source: str = Field(min_length=1, description="Source name in tools.yaml `sources`.")
    query: str = Field(min_length=1, description="What to look for (a template).")
    top_k: int = Field(default=5, ge=1, le=100, description="How many passages at most.")


class AgentStep(_ModelStep):
    """A bounded agent: model turns that may call the allowed tools, each call its own step.

    Every tool call the model asks for is dispatched as a durable ``tool`` step (in parallel
    within a turn), gated by the approval policies and counted in the budgets; the results
    go back to the model in the next turn, up to ``max_turns`` turns.
    """

    kind: Literal["agent"]
    tools: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]] = Field(
        default_factory=list, description="The tools the model may call (names in tools.yaml)."
    )
    max_turns: int = Field(default=5, ge=1, le=50, description="Model turns at most.")
    tool_timeout: Duration | None = Field(
        default=None, description="How long one tool call may take (default: the tool kind's)."
    )
    tool_retry: RetrySpec = Field(
        default_factory=RetrySpec, description="Retry policy of each tool call."
    )

    @field_validator("tools")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        repeated = sorted({name for name in value if value.count(name) > 1})
        if repeated:
            raise ValueError(f"listed more than once: {', '.join(repeated)}")
        return value


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


class CustomStep(_StepBase):
    """A step of a kind a package adds (entry-point group ``baton.processors``).

    ``params`` go to the kind's processor, template strings rendered. They are checked
    against the kind's parameter model when the workflow is deployed; a field holding a
    template is checked once rendered, by the processor.
    """

    kind: Annotated[
        str,
        AfterValidator(check_kind),
        WithJsonSchema(
            {
                "type": "string",
                "pattern": KIND_PATTERN,
                "maxLength": 64,
                "not": {"enum": sorted([*DEFAULT_TIMEOUTS, "custom"])},
                "description": "A custom step kind, as installed (`baton.processors`).",
            }
        ),
    ]
    params: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="The kind's parameters, as its parameter model says; template strings "
        "are rendered.",
    )


PRINCIPAL_PATTERN = r"^(user|group):[A-Za-z0-9_.@-]+$"
Principal = Annotated[str, Field(pattern=PRINCIPAL_PATTERN)]


class EscalationLevel(_Spec):
    """One level of an escalation path: who decides once the previous level timed out."""

    approvers: list[Principal] = Field(min_length=1)
    quorum: int = Field(default=1, ge=1, le=20)
    timeout: Duration | None = Field(default=None, description="Default: the step's timeout.")


def _levels(value: Any) -> Any:
    """``escalate_to`` accepts a list of principals as shorthand for one level."""
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return [{"approvers": value}]
    return value


class ApprovalStep(_StepBase):
    """People decide: the run waits until enough allowed approvers approve, or one rejects."""

    kind: Literal["approval"]
    approvers: list[Principal] = Field(min_length=1, description="user:<id> or group:<name>.")
    quorum: int = Field(default=1, ge=1, le=20, description="Distinct approvals needed.")
    escalate_to: Annotated[list[EscalationLevel], BeforeValidator(_levels)] = Field(
        default_factory=list, description="Who decides, level by level, when a level times out."
    )
    on_timeout: Literal["reject", "approve", "fail"] = Field(
        default="reject", description="What happens when the last level times out."
    )
    reason: str = Field(default="", description="Why approval is needed (a template).")
    show: JsonValue = Field(
        default=None,
        description="What reviewers see (templates rendered); default: the input and the "
        "outputs of the steps before this one.",
    )

    @model_validator(mode="after")
    def _quorum_possible(self) -> ApprovalStep:
        users = [a for a in self.approvers if a.startswith("user:")]
        if not any(a.startswith("group:") for a in self.approvers) and self.quorum > len(users):
            raise ValueError(f"quorum {self.quorum} needs at least {self.quorum} approvers")
        return self


def _step_tag(value: Any) -> str | None:
    """Which model a step is: its kind when built in, ``custom`` for any other name."""
    kind = value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)
    if kind is None:
        return None
    return kind if isinstance(kind, str) and kind in DEFAULT_TIMEOUTS else "custom"


StepSpec = Annotated[
    Annotated[LlmStep, Tag("llm")]
    | Annotated[AgentStep, Tag("agent")]
    | Annotated[ToolStep, Tag("tool")]
    | Annotated[RetrieveStep, Tag("retrieve")]
    | Annotated[TransformStep, Tag("transform")]
    | Annotated[ValidateStep, Tag("validate")]
    | Annotated[ApprovalStep, Tag("approval")]
    | Annotated[CustomStep, Tag("custom")],
    Discriminator(_step_tag),
]


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
