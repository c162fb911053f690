"""The model catalog (``models.yaml``): route names mapped to a provider, a model and prices.

Workflows name routes (``fast``, ``strong``), never vendor models, so a model is swapped in
one place. Secrets never live in the file: a route names the environment variable that holds
its API key. See ``docs/models.md`` for the format.
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    field_validator,
    model_validator,
)

from processors._errors import UnknownRoute
from processors._templates import TemplateError, compile_template, is_template
from topics import ConfigurationError, load_yaml

__all__ = [
    "DEFAULT_ANTHROPIC_MAX_TOKENS",
    "TOOL_NAME",
    "ModelCatalog",
    "RouteSpec",
    "ScriptRule",
    "load_model_catalog",
    "script_tool_calls",
]

_ROUTE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

#: A tool name, as the tool registry spells it (providers that allow no '.' get '_' instead).
TOOL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

#: The completion cap sent to Anthropic, which requires one, when neither the step nor the
#: route gives one.
DEFAULT_ANTHROPIC_MAX_TOKENS = 1024
_PER_MTOK = -6  # prices are per million tokens: scale by 10**-6, exactly


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ScriptRule(_Config):
    """One rule of a ``scripted`` route: when it matches, what the model answers."""

    match: str | None = Field(
        default=None,
        description="Regular expression searched in the last user message or, when the "
        "conversation ends with tool results, in those results; null matches all.",
    )
    reply: str | dict[str, JsonValue] = Field(
        description="The answer. A string is a template; a JSON object has its string values "
        "rendered and is answered as JSON text; `{tool_calls: [{name, arguments}]}` asks for "
        "tool calls (string values of the arguments rendered). Templates see `prompt` (what "
        "`match` is searched in), `messages`, `match` (the match, then its groups), "
        "`input_text` (every message's content, one per line) and `tool_results` (the tool "
        "results that end the conversation: `{name, tool_call_id, content, output}`).",
    )

    @field_validator("match")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @field_validator("reply")
    @classmethod
    def _templates_compile(cls, value: str | dict[str, JsonValue]) -> str | dict[str, JsonValue]:
        if isinstance(value, dict) and "tool_calls" in value:
            _check_tool_calls(value)
        try:
            _compile_all(value)
        except TemplateError as exc:
            raise ValueError(str(exc)) from None
        return value


def script_tool_calls(reply: str | dict[str, JsonValue]) -> list[dict[str, JsonValue]] | None:
    """The tool calls a scripted reply asks for, or ``None`` when it answers with content.

    A reply asks for tool calls when it is an object whose only key is ``tool_calls``;
    ``ScriptRule`` has checked their shape (``name``, optional ``arguments`` object).
    """
    if not isinstance(reply, dict) or set(reply) != {"tool_calls"}:
        return None
    calls = reply["tool_calls"]
    assert isinstance(calls, list)
    return [call for call in calls if isinstance(call, dict)]


def _check_tool_calls(reply: dict[str, JsonValue]) -> None:
    if set(reply) != {"tool_calls"}:
        raise ValueError("a reply with `tool_calls` has no other keys")
    calls = reply["tool_calls"]
    if not isinstance(calls, list) or not calls:
        raise ValueError("`tool_calls` must be a non-empty list of {name, arguments}")
    for index, call in enumerate(calls):
        where = f"tool_calls.{index}"
        if not isinstance(call, dict) or not set(call) <= {"name", "arguments"}:
            raise ValueError(f"{where}: must be an object with `name` and `arguments` only")
        name = call.get("name")
        if not isinstance(name, str) or not re.fullmatch(TOOL_NAME, name):
            raise ValueError(f"{where}.name: a tool name of letters, digits, '.', '_' or '-'")
        if not isinstance(call.get("arguments", {}), dict):
            raise ValueError(f"{where}.arguments: must be an object")


def _compile_all(value: JsonValue) -> None:
    if isinstance(value, str):
        if is_template(value):
            compile_template(value)
    elif isinstance(value, dict):
        for item in value.values():
            _compile_all(item)
    elif isinstance(value, list):
        for item in value:
            _compile_all(item)


class RouteSpec(_Config):
    """Where one route's calls go and what they cost."""

    provider: Literal["openai", "openai-responses", "anthropic", "scripted"] = Field(
        description="`openai`: any OpenAI-compatible chat-completions API (OpenAI, vLLM, "
        "Ollama, LM Studio). `openai-responses`: the OpenAI Responses API. `anthropic`: the "
        "Anthropic Messages API. `scripted`: a deterministic built-in model for demos and tests."
    )
    model: str = Field(min_length=1, description="The provider's model id, e.g. gpt-4o-mini.")
    base_url: str | None = Field(
        default=None,
        description="API root the provider's paths hang off, e.g. https://api.openai.com/v1 "
        "or https://api.anthropic.com/v1 (required for openai and anthropic).",
    )
    api_key_env: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Name of the environment variable holding the API key (never the key). "
        "Null sends no key header (local servers, proxies that add it).",
    )
    input_usd_per_mtok: Decimal = Field(
        default=Decimal(0), ge=0, description="US dollars per million prompt tokens."
    )
    output_usd_per_mtok: Decimal = Field(
        default=Decimal(0), ge=0, description="US dollars per million completion tokens."
    )
    cached_input_usd_per_mtok: Decimal | None = Field(
        default=None,
        ge=0,
        description="US dollars per million prompt tokens the provider served from its prompt "
        "cache (and says so: openai-responses). Null prices them as ordinary prompt tokens.",
    )
    accepts_temperature: bool = Field(
        default=True,
        description="openai-responses only: false for models that refuse a `temperature` "
        "(reasoning models), so none is sent.",
    )
    context_window: int | None = Field(
        default=None, ge=1, description="Tokens the model accepts in total; null if unknown."
    )
    max_output_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Cap on completion tokens when a step gives none. Null: openai routes "
        "send no cap (the model's own limit); anthropic, which requires one, sends 1024.",
    )
    timeout_s: float = Field(
        default=60.0, gt=0, description="Seconds one HTTP call may take before it times out."
    )
    retries: int = Field(
        default=2,
        ge=0,
        le=10,
        description="In-process retries of retryable errors, after the first try.",
    )
    stream: bool = Field(
        default=False,
        description="Stream the answer (openai and anthropic): its text is published to the "
        "`stream` topic as it arrives, for `GET /v1/runs/{id}/stream`. The step's result is "
        "the same either way. A provider that cannot stream answers whole, as one piece.",
    )
    script: list[ScriptRule] = Field(
        default_factory=list,
        description="scripted only: the rules, tried in order; the first match answers.",
    )
    breaker_failures: int = Field(
        default=5,
        ge=1,
        description="Failures in a row (timeouts, connection errors, 429, 5xx) that open the "
        "circuit of this route's provider endpoint.",
    )
    breaker_cooldown_s: float = Field(
        default=30.0,
        gt=0,
        description="Seconds an open circuit refuses calls before one probe call is let through.",
    )
    latency_ms: float = Field(
        default=0.0, ge=0, description="scripted only: median simulated latency, milliseconds."
    )
    latency_sigma: float = Field(
        default=0.0,
        ge=0,
        le=5,
        description="scripted only: sigma of the log-normal latency tail; 0 is a fixed latency.",
    )

    @model_validator(mode="after")
    def _fits_provider(self) -> RouteSpec:
        if self.provider != "scripted":
            if not self.base_url:
                raise ValueError(f"an {self.provider} route needs `base_url`")
            if not self.base_url.startswith(("http://", "https://")):
                raise ValueError("`base_url` must start with http:// or https://")
            if self.script or self.latency_ms or self.latency_sigma:
                raise ValueError("`script`, `latency_ms` and `latency_sigma` are for scripted")
        elif not self.script:
            raise ValueError("a scripted route needs at least one `script` rule")
        if not self.accepts_temperature and self.provider != "openai-responses":
            # The other providers always send one: a false here would silently do nothing.
            raise ValueError("`accepts_temperature: false` is for openai-responses routes")
        return self

    def output_cap(self, max_tokens: int | None) -> int | None:
        """The completion cap a call sends: the step's, else the route's ``max_output_tokens``."""
        return max_tokens if max_tokens is not None else self.max_output_tokens

    def cost(
        self, input_tokens: int, output_tokens: int, *, cached_input_tokens: int = 0
    ) -> Decimal:
        """What a call with these token counts costs, in US dollars, exactly.

        Args:
            input_tokens: Every prompt token billed, cached ones included.
            output_tokens: Every completion token billed, reasoning ones included.
            cached_input_tokens: How many of ``input_tokens`` the provider served from its
                prompt cache: priced at ``cached_input_usd_per_mtok`` when the route sets it.
        """
        cached = min(cached_input_tokens, input_tokens)
        cached_price = self.cached_input_usd_per_mtok
        if cached_price is None:
            cached, cached_price = 0, self.input_usd_per_mtok
        per_mtok = (
            (input_tokens - cached) * self.input_usd_per_mtok
            + cached * cached_price
            + output_tokens * self.output_usd_per_mtok
        )
        return per_mtok.scaleb(_PER_MTOK)


class ModelCatalog(_Config):
    """Every route workflows may name."""

    routes: dict[str, RouteSpec] = Field(
        description="Route name (what workflows say) to its route; may be empty for workers "
        "that run no llm steps."
    )

    @field_validator("routes")
    @classmethod
    def _names(cls, value: dict[str, RouteSpec]) -> dict[str, RouteSpec]:
        for name in value:
            if not _ROUTE_NAME.match(name):
                raise ValueError(
                    f"route name {name!r} must be letters, digits, '.', '_' or '-' (at most 64)"
                )
        return value

    def route(self, name: str) -> RouteSpec:
        """The route called ``name``.

        Raises:
            UnknownRoute: The catalog has no such route (the message lists the known ones).
        """
        try:
            return self.routes[name]
        except KeyError:
            known = ", ".join(sorted(self.routes)) or "none"
            raise UnknownRoute(
                f"model route {name!r} is not in the model catalog (known: {known})"
            ) from None

    def cost(self, route: str, input_tokens: int, output_tokens: int) -> Decimal:
        """What a call on ``route`` with these token counts costs, in US dollars, exactly.

        Raises:
            UnknownRoute: The catalog has no such route.
        """
        return self.route(route).cost(input_tokens, output_tokens)


def load_model_catalog(path: str | Path) -> ModelCatalog:
    """Read and check a model catalog file.

    Raises:
        ConfigurationError: The file cannot be read, is not YAML, or breaks the format; the
            message names the file and every bad field (``models.yaml: routes.fast.model: ...``).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot read model catalog {path}: {exc.strerror}") from None
    try:
        data = load_yaml(text, origin=str(path))
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigurationError(f"{path}: must hold a mapping with `routes`")
    try:
        return ModelCatalog.model_validate(data)
    except ValidationError as exc:
        raise ConfigurationError(f"{path}: {_describe(exc)}") from None


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(file)"
        parts.append(f"{where}: {item['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)
