"""What a step's request carries: its parameters with templates rendered, per kind.

``llm`` and ``agent`` steps get their messages rendered here (the coordinator needs them
anyway, to know what it is sending and what it may cost); so do ``tool`` arguments and
``retrieve`` queries and a custom kind's ``params``. ``transform`` and ``validate`` steps get
their templates and the run context, and the processor renders them.

A tool call an agent's model asked for carries the model's arguments exactly as given: they
are data, never rendered as templates.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import JsonValue

from processors import (
    TemplateRenderError,
    ToolRegistry,
    UnknownTool,
    compile_template,
    render_value,
)
from streams.coordinator._state import StepState
from streams.workflow import (
    AgentStep,
    ContextReads,
    CustomStep,
    LlmStep,
    RetrieveStep,
    StepSpec,
    ToolStep,
    TransformStep,
    ValidateStep,
)

__all__ = ["request_params"]


def request_params(
    spec: StepSpec,
    step: StepState,
    context: dict[str, Any],
    tools: ToolRegistry | None = None,
    reads: ContextReads | None = None,
) -> tuple[JsonValue, JsonValue]:
    """The ``params`` and ``context`` of a step's next request.

    Args:
        spec: The step's definition.
        step: Its state.
        context: What templates see.
        tools: The tool registry, which describes an agent's tools to its model.
        reads: What a transform's or validate's templates read of the context: only that
            travels with its request (``None``: all of it).

    Raises:
        TemplateRenderError: A template does not render.
        UnknownTool: An agent lists a tool the registry does not have.
    """
    if step.call is not None:
        return {"tool": step.call.tool, "args": step.call.arguments}, None
    if isinstance(spec, LlmStep):
        return _llm(spec, step, context), None
    if isinstance(spec, AgentStep):
        return _agent(spec, step, context, tools), None
    if isinstance(spec, ToolStep):
        return {"tool": spec.tool, "args": render_value(spec.args, context)}, None
    if isinstance(spec, RetrieveStep):
        query = compile_template(spec.query).render(context)
        return {"source": spec.source, "query": _text(query), "top_k": spec.top_k}, None
    if isinstance(spec, TransformStep):
        return {"output": spec.output}, _narrowed(context, reads)
    if isinstance(spec, CustomStep):
        return render_value(spec.params, context), None
    assert isinstance(spec, ValidateStep)
    params: dict[str, JsonValue] = {
        "value": spec.value,
        "schema": spec.schema_,
        "rules": [{"check": rule.check, "message": rule.message} for rule in spec.rules],
    }
    return params, _narrowed(context, reads)


def _narrowed(context: dict[str, Any], reads: ContextReads | None) -> JsonValue:
    """The part of the run context a processor's templates read (all of it, unknown)."""
    if reads is None:
        return context
    narrowed: dict[str, JsonValue] = {
        name: context[name] for name in ("input", "run") if name in reads.names
    }
    if "steps" in reads.names:
        steps = context["steps"]
        narrowed["steps"] = (
            steps if reads.steps is None else {n: steps[n] for n in reads.steps if n in steps}
        )
    return narrowed


def _llm(spec: LlmStep, step: StepState, context: dict[str, Any]) -> JsonValue:
    route = step.current_route
    if route is None:
        raise TemplateRenderError("no route to send to")
    return {
        "route": route,
        "messages": _messages(spec, step, context),
        "temperature": spec.temperature,
        "max_tokens": spec.max_tokens,
        "output_schema": spec.output_schema,
        "cache": spec.cache,
    }


def _agent(
    spec: AgentStep, step: StepState, context: dict[str, Any], tools: ToolRegistry | None
) -> JsonValue:
    route = step.current_route
    if route is None:
        raise TemplateRenderError("no route to send to")
    offered: list[JsonValue] = []
    if spec.tools:
        if tools is None:
            raise UnknownTool(
                f"the agent's tools ({', '.join(spec.tools)}) need a tool registry: "
                "set tools_file (BATON_TOOLS_FILE) on the coordinator"
            )
        offered = list(tools.describe(spec.tools))
    return {
        "route": route,
        "messages": [*_messages(spec, step, context), *step.conversation],
        "tools": offered,
        "temperature": spec.temperature,
        "max_tokens": spec.max_tokens,
        "output_schema": spec.output_schema,
        "cache": spec.cache,
    }


def _messages(
    spec: LlmStep | AgentStep, step: StepState, context: dict[str, Any]
) -> list[JsonValue]:
    """The prompt's messages, rendered, with validation feedback when the step is re-run."""
    messages: list[JsonValue] = []
    if spec.messages is not None:
        for message in spec.messages:
            content = compile_template(message.content).render(context)
            messages.append({"role": message.role, "content": _text(content)})
    else:
        if spec.system is not None:
            system = compile_template(spec.system).render(context)
            messages.append({"role": "system", "content": _text(system)})
        prompt = compile_template(spec.prompt or "").render(context)
        messages.append({"role": "user", "content": _text(prompt)})
    if step.feedback:
        if step.output is not None:
            messages.append({"role": "assistant", "content": _text(step.output)})
        problems = "\n".join(f"- {item}" for item in step.feedback[-1].split("; "))
        messages.append(
            {
                "role": "user",
                "content": "Your previous answer did not pass validation:\n"
                f"{problems}\nAnswer again, fixing these problems.",
            }
        )
    return messages


def _text(value: JsonValue) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()
