"""What a step's request carries: its parameters with templates rendered, per kind.

``llm`` steps get their messages rendered here (the coordinator needs them anyway, to know
what it is sending and what it may cost); ``transform`` and ``validate`` steps get their
templates and the run context, and the processor renders them.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import JsonValue

from processors import TemplateRenderError, compile_template
from streams.coordinator._state import StepState
from streams.workflow import LlmStep, StepSpec, TransformStep, ValidateStep

__all__ = ["request_params"]


def request_params(
    spec: StepSpec, step: StepState, context: dict[str, Any]
) -> tuple[JsonValue, JsonValue]:
    """The ``params`` and ``context`` of a step's next request.

    Raises:
        TemplateRenderError: A template does not render.
    """
    if isinstance(spec, LlmStep):
        return _llm(spec, step, context), None
    if isinstance(spec, TransformStep):
        return {"output": spec.output}, context
    assert isinstance(spec, ValidateStep)
    params: dict[str, JsonValue] = {
        "value": spec.value,
        "schema": spec.schema_,
        "rules": [{"check": rule.check, "message": rule.message} for rule in spec.rules],
    }
    return params, context


def _llm(spec: LlmStep, step: StepState, context: dict[str, Any]) -> JsonValue:
    route = step.current_route
    if route is None:
        raise TemplateRenderError("no route to send to")
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
    return {
        "route": route,
        "messages": messages,
        "temperature": spec.temperature,
        "max_tokens": spec.max_tokens,
        "output_schema": spec.output_schema,
    }


def _text(value: JsonValue) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()
