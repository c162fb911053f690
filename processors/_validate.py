"""The ``validate`` processor: a value checked against a JSON Schema and rules."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from processors._errors import ValidationFailed
from processors._processor import StepOutput, parse_params, run_context
from processors._schema import schema_problems
from processors._templates import TemplateRenderError, compile_expression, render_value
from topics import StepKind, StepRequested

__all__ = ["ValidateParams", "ValidateProcessor", "ValidateRule"]


class ValidateRule(BaseModel):
    """A rule: an expression that must hold, and what to say when it does not."""

    model_config = ConfigDict(frozen=True)

    check: str = Field(min_length=1, description="Expression over the context and `value`.")
    message: str = Field(min_length=1, description="The problem reported when it is false.")


class ValidateParams(BaseModel):
    """What the coordinator sends a ``validate`` step."""

    model_config = ConfigDict(frozen=True)

    value: JsonValue = Field(description="What to check (templates are rendered first).")
    schema_: dict[str, JsonValue] | None = Field(
        default=None, alias="schema", description="JSON Schema the value must satisfy."
    )
    rules: list[ValidateRule] = Field(default_factory=list, description="Rules, in order.")


class ValidateProcessor:
    """Runs ``validate`` steps; the output is the value when every check passes."""

    kind = StepKind.validate

    async def run(self, request: StepRequested) -> StepOutput:
        """Render the value and check it; every problem is collected before failing.

        Raises:
            ValidationFailed: Problems were found (the message joins them with ``"; "``).
            InvalidParams: The request is not a validate step's.
            TemplateRenderError: The value does not render.
            ConfigurationError: The schema is not a JSON Schema, or a template or rule does
                not compile.
        """
        params = parse_params(ValidateParams, request)
        context = run_context(request)
        value = render_value(params.value, context)
        problems: list[str] = []
        if params.schema_ is not None:
            problems += schema_problems(params.schema_, value, "value")
        scope = {**context, "value": value}
        for rule in params.rules:
            try:
                holds = compile_expression(rule.check).holds(scope)
            except TemplateRenderError as exc:
                problems.append(f"{rule.message} (the check could not run: {exc})")
                continue
            if not holds:
                problems.append(rule.message)
        if problems:
            raise ValidationFailed(problems)
        return StepOutput(value)
