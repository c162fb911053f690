"""The ``transform`` processor: compute a value from the run context with templates."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from processors._processor import StepOutput, parse_params, run_context
from processors._templates import render_value
from topics import StepKind, StepRequested

__all__ = ["TransformParams", "TransformProcessor"]


class TransformParams(BaseModel):
    """What the coordinator sends a ``transform`` step."""

    model_config = ConfigDict(frozen=True)

    output: JsonValue = Field(description="JSON whose template strings are rendered.")


class TransformProcessor:
    """Runs ``transform`` steps: ``params.output`` rendered over the run context."""

    kind = StepKind.transform

    async def run(self, request: StepRequested) -> StepOutput:
        """Render the step's output.

        Raises:
            InvalidParams: The request is not a transform step's.
            TemplateRenderError: A template fails (a missing value, a type error, a limit).
            TemplateError: A template does not compile.
        """
        params = parse_params(TransformParams, request)
        return StepOutput(render_value(params.output, run_context(request)))
