"""The ``agent`` processor: one model turn of an agent, with a bounded set of tools.

The processor never calls a tool. It makes one model call (through the same ``ModelClient``
as ``llm`` steps: route, breaker, in-process retries, usage and cost) and returns exactly one
of two outputs:

- ``{"type": "final", "content": ...}``: the model answered. ``content`` is the text, or the
  parsed JSON when the turn has an ``output_schema`` (checked like an ``llm`` step's).
- ``{"type": "tool_calls", "assistant": {...}, "calls": [...]}``: the model asked for tools.
  ``assistant`` is the assistant message to append to the conversation as it is;
  ``calls`` are the calls, each ``{id, name, arguments, arguments_error}``.

The coordinator dispatches each call whose ``arguments_error`` is null as its own durable
``tool`` step, answers the others with their error, and sends the next turn with every
result appended as a ``{"role": "tool", ...}`` message.

A turn at temperature 0 is cached like an ``llm`` step (the tools offered are part of the
key): the same conversation gets the same answer, or the same tool calls, without a call.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator

from processors._llm import ModelProcessor, structured_answer
from processors._processor import StepOutput, parse_params
from processors._provider import Completion, Message, ToolCall, ToolDefinition
from processors._schema import check_schema, schema_problems
from topics import ConfigurationError, StepKind, StepRequested, Usage

__all__ = ["AgentParams", "AgentProcessor", "agent_output"]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class AgentParams(BaseModel):
    """What the coordinator sends an ``agent`` turn (templates already rendered)."""

    model_config = ConfigDict(frozen=True)

    route: str = Field(min_length=1, description="Route name in the model catalog.")
    messages: list[Message] = Field(
        min_length=1,
        description="The conversation so far, in the neutral shape: chat messages, assistant "
        "messages with `tool_calls`, and `tool` results.",
    )
    tools: list[ToolDefinition] = Field(
        default_factory=list, description="The tools the model may call; none: a plain turn."
    )
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="Sampling temperature.")
    max_tokens: int | None = Field(default=None, ge=1, description="Cap on completion tokens.")
    output_schema: dict[str, JsonValue] | None = Field(
        default=None, description="JSON Schema the final answer must satisfy."
    )
    cache: bool = Field(
        default=True,
        description="Whether a repeated turn may be answered from the response cache "
        "(only at temperature 0).",
    )

    @model_validator(mode="after")
    def _tool_names_unique(self) -> Self:
        names = [t.name for t in self.tools]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"tool names must be unique: {', '.join(repeated)}")
        return self


class AgentProcessor(ModelProcessor):
    """Runs ``agent`` turns: one model call, tool calls handed back, never made.

    Constructed as ``ModelProcessor``; share breakers and cache with the llm processor.
    """

    kind = StepKind.agent

    async def run(self, request: StepRequested) -> StepOutput:
        """Make the turn's model call and hand back its answer or its tool calls.

        Raises:
            InvalidParams: The params are not an agent turn's.
            UnknownRoute: The route is not in the catalog.
            ConfigurationError: The output schema or a tool's parameters are not a JSON
                Schema, or the route's provider is not available here.
            OutputSchemaViolation: The final answer is not JSON or does not match the schema.
            RetryableError: Still failing after the in-process retries (its subclasses say how).
            PermanentError: The provider refused the call.
        """
        params = parse_params(AgentParams, request)
        self._model.route(params.route)
        # Checked before the call: a bad schema costs nothing.
        if params.output_schema is not None:
            check_schema(params.output_schema)
        for tool in params.tools:
            try:
                check_schema(tool.parameters)
            except ConfigurationError as exc:
                raise ConfigurationError(f"tool {tool.name!r}: parameters: {exc}") from None
        schema = params.output_schema

        def read(completion: Completion, usage: Usage) -> dict[str, JsonValue]:
            if not completion.tool_calls and schema is not None:
                content = structured_answer(completion.text, schema, usage)
                return {"type": "final", "content": content}
            return agent_output(completion, params.tools)

        output, usage = await self._model.answer(
            request,
            params.route,
            params.messages,
            temperature=params.temperature,
            max_tokens=params.max_tokens,
            output_schema=schema,
            read=read,
            tools=params.tools or None,
            cache=params.cache,
        )
        return StepOutput(output, usage)


def agent_output(completion: Completion, tools: list[ToolDefinition]) -> dict[str, JsonValue]:
    """A turn's output for a completion: its text, or its tool calls with the assistant message.

    A call's ``arguments_error`` says why it cannot be made as asked: arguments that are not a
    JSON object (they are then ``{}``), a tool that was not offered, or arguments that break
    the tool's parameters schema.
    """
    if not completion.tool_calls:
        return {"type": "final", "content": completion.text}
    offered = {t.name: t for t in tools}
    calls = [_checked(call, offered) for call in completion.tool_calls]
    return {
        "type": "tool_calls",
        "assistant": {
            "role": "assistant",
            "content": completion.text or None,
            "tool_calls": [call.in_message() for call in completion.tool_calls],
        },
        "calls": [
            {
                "id": call.id,
                "name": call.name,
                "arguments": call.arguments,
                "arguments_error": call.arguments_error,
            }
            for call in calls
        ],
    }


def _checked(call: ToolCall, offered: Mapping[str, ToolDefinition]) -> ToolCall:
    if call.arguments_error is not None:
        return call
    tool = offered.get(call.name)
    if tool is None:
        known = ", ".join(sorted(offered)) or "none"
        error = f"there is no tool {call.name!r} (the tools: {known})"
        return call.model_copy(update={"arguments_error": error})
    problems = schema_problems(tool.parameters, call.arguments, "arguments")
    if problems:
        error = "the arguments do not match the tool's parameters: " + "; ".join(problems)
        return call.model_copy(update={"arguments_error": error})
    return call
