"""The tool registry (``tools.yaml``): the tools steps and agents may call, and retrieval sources.

Two kinds of tool. An ``http`` tool is one HTTP request to a host fixed by configuration: the
path, query, headers and body are templates over the call's ``args``, but the scheme, host and
port come from ``base_url`` alone, so neither a model nor a template can send a request
anywhere else. A ``python`` tool is a callable registered under the entry-point group
``baton.tools``. Sources (``sources:``) feed ``retrieve`` steps: a ``local`` directory of
documents, or an ``http`` search endpoint with the same pinning rules as tools.

MCP servers (``mcp_servers:``) add the tools they list: each server is a command baton spawns
(stdio) or a Streamable HTTP ``url`` fixed by configuration, and its tool ``add`` is the baton
tool ``SERVER.add`` (``McpToolSpec``), called like any other. Their listing and calls live in
``processors._mcp``, which needs the optional ``mcp`` extra.

Secrets never live in the file: a header template reads one by the name of its environment
variable (``{{ secrets.TICKETS_TOKEN }}``), resolved when the call is made, and only headers
(and an MCP server's ``env``) may. See ``docs/tools.md`` for the format.

Their errors (``ToolTimeout``, ``ToolRejected``, ``UnknownTool``, ...) sit in baton's one
exception tree with the rest, in ``processors._errors``. Arguments that break a tool's
``args_schema`` are ``InvalidParams``, like any bad step params.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal
from urllib.parse import quote, unquote

import httpx
import jmespath
import yaml
from jinja2 import Environment, TemplateSyntaxError, nodes
from jmespath.exceptions import JMESPathError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from processors._errors import (
    ToolFailed,
    ToolRateLimited,
    ToolRejected,
    ToolRequestRefused,
    ToolTimeout,
    ToolUnavailable,
    UnknownSource,
    UnknownTool,
)
from processors._schema import check_schema
from processors._templates import (
    TEMPLATE_GLOBALS,
    TemplateError,
    compile_template,
    is_template,
    references,
)
from topics import ConfigurationError, load_yaml

if TYPE_CHECKING:
    from processors._mcp import McpServers

__all__ = [
    "ENTRY_POINT_GROUP",
    "HttpEndpoint",
    "HttpSourceSpec",
    "HttpToolSpec",
    "LocalSourceSpec",
    "McpServerSpec",
    "McpToolSpec",
    "PythonToolSpec",
    "ResultFields",
    "SourceSpec",
    "ToolCallable",
    "ToolFailed",
    "ToolRateLimited",
    "ToolRegistry",
    "ToolRejected",
    "ToolRequestRefused",
    "ToolSpec",
    "AnyToolSpec",
    "ToolTimeout",
    "ToolUnavailable",
    "ToolsConfig",
    "UnknownSource",
    "UnknownTool",
    "accepts_idempotency_key",
    "load_tools",
    "PATH_PARAMETER",
    "path_parameter",
    "path_problem",
    "path_template_problem",
    "secret_names",
]

logger = logging.getLogger(__name__)

#: The entry-point group python tools are registered under.
ENTRY_POINT_GROUP = "baton.tools"

#: A python tool: called with the args dict (and ``idempotency_key=`` when it has a parameter
#: of that name); sync or async; returns JSON.
ToolCallable = Callable[..., Any]

#: A placeholder of a path template: ``{{ expression }}``.
PATH_PARAMETER = re.compile(r"\{\{(?:(?!\{\{|\}\}).)*\}\}", re.DOTALL)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
# Set by baton itself, or by the HTTP client from what it sends: never by configuration.
_RESERVED_HEADERS = frozenset(
    {"host", "idempotency-key", "content-length", "transfer-encoding", "connection"}
)
# What the MCP transport sets itself: the session, the negotiated revision, the method.
_MCP_RESERVED_HEADERS = _RESERVED_HEADERS | frozenset(
    {"mcp-session-id", "mcp-protocol-version", "mcp-method", "mcp-name", "accept", "content-type"}
)
_PARSER = Environment()  # parses templates to find the secrets they read; never renders


# -- configuration ----------------------------------------------------------------------------


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


_Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]


class HttpEndpoint(_Config):
    """What an HTTP tool and an HTTP search source share: where calls go and how they look.

    Each kind says what its templates may read (``_context_names``); headers may also read
    ``secrets``, and nothing else may.
    """

    _context_names: ClassVar[frozenset[str]] = frozenset()

    method: _Method = Field(default="GET", description="HTTP method.")
    base_url: str = Field(
        description="Scheme, host, port and an optional path prefix, e.g. "
        "https://tickets.example.com/api. Literal: never a template. Every request goes here."
    )
    path: str = Field(
        default="/",
        description="Path under base_url: literal text and {{ expression }} placeholders, "
        "each value percent-encoded as (part of) one segment. Must start with a literal '/'; "
        "the literal text may not hold a scheme, '//', '@', a backslash, '.' or '..' "
        "segments, '?' or '#'; a value may not be empty or hold a '.' or '..' segment.",
    )
    query: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="Query parameters; values are templates. A value rendering to null is "
        "left out; a list repeats the parameter.",
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="Request headers; values are templates that may read secrets by the name "
        "of their environment variable: {{ secrets.TICKETS_TOKEN }}.",
    )
    body: JsonValue = Field(
        default=None,
        description="JSON body; its strings are templates ('{{ args }}' sends the arguments "
        "as they are). Null sends no body.",
    )
    timeout_s: float = Field(
        default=10.0, gt=0, le=600, description="Seconds one call may take, all in."
    )
    retries: int = Field(
        default=2,
        ge=0,
        le=10,
        description="In-process retries of retryable errors, after the first try.",
    )
    max_response_bytes: int = Field(
        default=1_000_000,
        ge=1,
        le=50_000_000,
        description="Largest answer read; a larger one fails the call (results travel in "
        "Kafka events).",
    )

    @model_validator(mode="after")
    def _body_fits_method(self) -> HttpEndpoint:
        if self.body is not None and self.method == "GET":
            raise ValueError("a GET request has no body")
        return self

    @field_validator("base_url")
    @classmethod
    def _literal_origin(cls, value: str) -> str:
        if is_template(value):
            raise ValueError("base_url is fixed by configuration: it cannot be a template")
        try:
            url = httpx.URL(value)
        except httpx.InvalidURL as exc:
            raise ValueError(f"not a URL: {exc}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("must be an http:// or https:// URL with a host")
        if url.userinfo:
            raise ValueError("must not hold credentials: send them in a header from secrets")
        if url.query or url.fragment:
            raise ValueError("must not have a query or fragment: use `query`")
        return value.rstrip("/")

    @field_validator("path")
    @classmethod
    def _path_template(cls, value: str) -> str:
        if not value.startswith("/") or value.startswith("//"):
            raise ValueError("must start with a single literal '/'")
        _check_template(value, cls._context_names)
        problem = path_template_problem(value) if is_template(value) else path_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("query")
    @classmethod
    def _query_templates(
        cls, value: dict[str, str | int | float | bool]
    ) -> dict[str, str | int | float | bool]:
        for item in value.values():
            if isinstance(item, str):
                _check_template(item, cls._context_names)
        return value

    @field_validator("headers")
    @classmethod
    def _header_templates(cls, value: dict[str, str]) -> dict[str, str]:
        for name, item in value.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a header name")
            if name.lower() in _RESERVED_HEADERS:
                raise ValueError(f"{name} is set by baton, not by configuration")
            _check_template(item, cls._context_names | {"secrets"})
            secret_names(item)
        return value

    @field_validator("body")
    @classmethod
    def _body_templates(cls, value: JsonValue) -> JsonValue:
        for item in _strings(value):
            _check_template(item, cls._context_names)
        return value

    def header_secrets(self) -> frozenset[str]:
        """The names of the environment variables the header templates read."""
        found: set[str] = set()
        for value in self.headers.values():
            found |= secret_names(value)
        return frozenset(found)

    def url(self, path: str, what: str) -> httpx.URL:
        """The URL of a rendered ``path``, checked to stay on ``base_url``.

        Args:
            path: The rendered path, its parameters percent-encoded (``render_path``).
            what: Names the tool or source in the error.

        Raises:
            ToolRequestRefused: The path would leave ``base_url``'s origin or prefix.
        """
        shown = path if len(path) <= 120 else path[:117] + "..."
        problem = _sent_path_problem(path)
        if problem:
            raise ToolRequestRefused(f"{what}: path {shown!r} refused: {problem}")
        base = httpx.URL(self.base_url)
        try:
            url = httpx.URL(self.base_url + path)
        except httpx.InvalidURL as exc:
            raise ToolRequestRefused(f"{what}: path {shown!r} refused: {exc}") from None
        prefix = base.path.rstrip("/")
        if (
            (url.scheme, url.host, url.port) != (base.scheme, base.host, base.port)
            or url.userinfo
            or not (url.path == prefix or url.path.startswith(prefix + "/"))
        ):
            raise ToolRequestRefused(f"{what}: path {shown!r} refused: it leaves base_url")
        return url


def path_problem(path: str) -> str | None:
    """Why a rendered path may not be sent under a ``base_url``, or ``None`` when it may.

    Checked as it is and percent-decoded (repeatedly), so ``%2e%2e`` is ``..``.
    """
    if not path.startswith("/"):
        return "a path must start with '/'"
    if "?" in path or "#" in path:
        return "a path may not hold '?' or '#' (put query parameters in `query`)"
    variants = [path]
    for _ in range(3):
        decoded = unquote(variants[-1])
        if decoded == variants[-1]:
            break
        variants.append(decoded)
    for text in variants:
        if "://" in text:
            return "a path may not hold a URL scheme"
        if "//" in text:
            return "a path may not hold '//' (or an empty segment)"
        if "@" in text:
            return "a path may not hold '@'"
        if "\\" in text:
            return "a path may not hold a backslash"
        if any(segment in (".", "..") for segment in text.split("/")):
            return "a path may not hold '.' or '..' segments"
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
            return "a path may not hold control characters"
    return None


def path_template_problem(template: str) -> str | None:
    """Why a path template may not be used, or ``None`` when it may.

    A path template is literal text and ``{{ expression }}`` placeholders; the text around
    them (a placeholder standing for one ordinary segment) must pass ``path_problem``. Values
    are percent-encoded when rendered, so ``| urlencode`` would encode them twice.
    """
    skeleton = PATH_PARAMETER.sub("x", template)
    if "{{" in skeleton or "{%" in skeleton or "{#" in skeleton:
        return (
            "a path template is literal text and {{ expression }} placeholders only "
            "(no {% %} tags or comments)"
        )
    for placeholder in PATH_PARAMETER.findall(template):
        try:
            tree = _PARSER.parse(placeholder)
        except TemplateSyntaxError:
            continue  # reported by the template check
        if any(f.name == "urlencode" for f in tree.find_all(nodes.Filter)):
            return (
                "path parameters are percent-encoded by baton: drop `| urlencode` from "
                f"{placeholder}"
            )
    return path_problem(skeleton)


def path_parameter(value: JsonValue) -> str | None:
    """A rendered path parameter as it is sent, percent-encoded; ``None`` when refused.

    Every character but letters, digits and ``-._~`` is encoded, ``/`` included, so a value
    stays inside its segment (``1/close`` is sent as ``1%2Fclose``). A value that is empty, or
    holds a ``.`` or ``..`` segment as it is or decoded (``../x``, ``%2e%2e``), is refused,
    so not even a server that decodes ``%2F`` before routing could climb out of the path.
    """
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int | float):
        text = str(value)
    elif isinstance(value, str):
        text = value
    else:
        return None
    if not text:
        return None
    decoded = text
    for _ in range(3):
        pieces = decoded.replace("\\", "/").split("/")
        if any(piece.split(";")[0] in (".", "..") for piece in pieces):
            return None
        decoded = unquote(decoded)
    return quote(text, safe="")


def _sent_path_problem(path: str) -> str | None:
    """``path_problem`` for a rendered path, whose parameters are already encoded.

    Its literal text was checked (decoded) when the configuration was loaded, and a
    parameter can only add encoded characters, so it is checked as it is and its segments
    decoded once, as the far side reads them.
    """
    if not path.startswith("/"):
        return "a path must start with '/'"
    if "?" in path or "#" in path:
        return "a path may not hold '?' or '#' (put query parameters in `query`)"
    if "://" in path or "@" in path or "\\" in path:
        return "a path may not hold a URL scheme, '@' or a backslash"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        return "a path may not hold control characters"
    segments = path.split("/")[1:]
    if "" in segments[:-1]:
        return "a path may not hold '//' (or an empty segment)"
    if any(unquote(segment).split(";")[0] in (".", "..") for segment in segments):
        return "a path may not hold '.' or '..' segments"
    return None


def _object_schema() -> dict[str, JsonValue]:
    return {"type": "object"}


class _Tool(_Config):
    description: str = Field(
        min_length=1, description="What the tool does, for people and for models."
    )
    args_schema: dict[str, JsonValue] = Field(
        default_factory=_object_schema,
        description="JSON Schema of the arguments (an object schema). Arguments that break it "
        "fail the step permanently before any call.",
    )

    @field_validator("args_schema")
    @classmethod
    def _object_schema(cls, value: dict[str, JsonValue]) -> dict[str, JsonValue]:
        if value.get("type") != "object":
            raise ValueError("must be an object schema (`type: object`)")
        try:
            check_schema(value)
        except ConfigurationError as exc:
            raise ValueError(str(exc)) from None
        return value


class HttpToolSpec(_Tool, HttpEndpoint):
    """An HTTP tool: one request to ``base_url``.

    Its templates read ``args`` and ``idempotency_key`` (headers also ``secrets``).
    """

    _context_names: ClassVar[frozenset[str]] = frozenset({"args", "idempotency_key"})

    kind: Literal["http"] = Field(description="`http`.")
    method: _Method = Field(default="POST", description="HTTP method.")
    answer: str | None = Field(
        default=None,
        description="JMESPath expression selecting the answer from the response JSON (e.g. "
        "`data.reply`); null answers the whole response (JSON, or its text).",
    )

    @field_validator("answer")
    @classmethod
    def _answer_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            _check_jmespath(value)
        return value


class PythonToolSpec(_Tool):
    """A python tool: a callable registered under the entry-point group ``baton.tools``."""

    kind: Literal["python"] = Field(description="`python`.")
    entry_point: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
        description="Name of the entry point in the `baton.tools` group.",
    )
    timeout_s: float = Field(default=30.0, gt=0, le=3600, description="Seconds one call may take.")
    retries: int = Field(
        default=2,
        ge=0,
        le=10,
        description="In-process retries when the callable raises a retryable baton error.",
    )
    secrets: tuple[str, ...] = Field(
        default=(),
        description="Names of the environment variables holding the secrets the callable "
        "uses (it reads them itself): their values are redacted from its errors, log lines "
        "and answers, as an HTTP tool's are.",
    )

    @field_validator("secrets")
    @classmethod
    def _variable_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not _ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not an environment variable name")
        return value


McpProtocol = Literal["auto", "2026-07-28", "2025-11-25"]


class McpServerSpec(_Config):
    """An MCP server whose tools baton may call: a command it spawns, or a URL.

    Exactly one of ``command`` (stdio: baton starts the process and speaks over its stdin and
    stdout) or ``url`` (Streamable HTTP to that endpoint, and only there) is set. Secrets come
    from the environment by name, in header values or ``env`` values only, as with HTTP tools.
    """

    description: str = Field(default="", description="What the server is, for people.")
    command: str | None = Field(
        default=None,
        min_length=1,
        description="stdio: the executable to start (a path, or a name on PATH). Literal.",
    )
    args: tuple[str, ...] = Field(default=(), description="stdio: its arguments. Literal.")
    env: dict[str, str] = Field(
        default_factory=dict,
        description="stdio: environment variables for the process, on top of a minimal safe "
        "set (PATH, HOME, ...; baton's own environment is not passed on). Values may read "
        "secrets: {{ secrets.NAME }}.",
    )
    cwd: Path | None = Field(
        default=None,
        description="stdio: the working directory; a relative path is relative to the "
        "tools.yaml file.",
    )
    url: str | None = Field(
        default=None,
        description="Streamable HTTP: the MCP endpoint, e.g. https://mcp.example.com/mcp. "
        "Literal: never a template; redirects off its origin are not followed.",
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="Streamable HTTP: request headers; values may read secrets: "
        "{{ secrets.NAME }}.",
    )
    protocol: McpProtocol = Field(
        default="auto",
        description="The MCP revision: 2026-07-28 (stateless, no handshake), 2025-11-25 (the "
        "initialize handshake and a session), or auto (ask with server/discover, fall back to "
        "initialize).",
    )
    tools: tuple[str, ...] | None = Field(
        default=None,
        description="The server's tools baton exposes (as SERVER.TOOL); null exposes every "
        "tool it lists.",
    )
    timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Seconds one call may take, connecting included; also bounds a listing.",
    )
    retries: int = Field(
        default=2,
        ge=0,
        le=10,
        description="In-process retries of retryable errors (transport errors, timeouts), "
        "after the first try.",
    )
    list_ttl_s: float = Field(
        default=300.0,
        ge=0,
        le=86_400,
        description="How long a tools/list answer is used when the server gives no ttlMs of "
        "its own (2025-11-25 servers never do); 0 lists again before every call.",
    )

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerSpec:
        if (self.command is None) == (self.url is None):
            raise ValueError("set exactly one of `command` (stdio) or `url` (Streamable HTTP)")
        if self.url is not None and (self.args or self.env or self.cwd is not None):
            raise ValueError("`args`, `env` and `cwd` are for a `command`, not a `url`")
        if self.command is not None and self.headers:
            raise ValueError("`headers` are for a `url`, not a `command`: use `env`")
        return self

    @field_validator("command", "args")
    @classmethod
    def _literal_command(cls, value: Any) -> Any:
        for item in [value] if isinstance(value, str) else (value or ()):
            if is_template(item):
                raise ValueError("the command line is fixed by configuration: no templates")
        return value

    @field_validator("url")
    @classmethod
    def _literal_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if is_template(value):
            raise ValueError("url is fixed by configuration: it cannot be a template")
        try:
            url = httpx.URL(value)
        except httpx.InvalidURL as exc:
            raise ValueError(f"not a URL: {exc}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("must be an http:// or https:// URL with a host")
        if url.userinfo:
            raise ValueError("must not hold credentials: send them in a header from secrets")
        if url.fragment:
            raise ValueError("must not have a fragment")
        return value

    @field_validator("env")
    @classmethod
    def _env_templates(cls, value: dict[str, str]) -> dict[str, str]:
        for name, item in value.items():
            if not _ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not an environment variable name")
            _check_template(item, frozenset({"secrets"}))
            secret_names(item)
        return value

    @field_validator("headers")
    @classmethod
    def _header_templates(cls, value: dict[str, str]) -> dict[str, str]:
        for name, item in value.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a header name")
            if name.lower() in _MCP_RESERVED_HEADERS:
                raise ValueError(f"{name} is set by the MCP transport, not by configuration")
            _check_template(item, frozenset({"secrets"}))
            secret_names(item)
        return value

    @field_validator("cwd")
    @classmethod
    def _directory(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        base = info.context.get("base_dir") if isinstance(info.context, dict) else None
        if value is not None and not value.is_absolute() and isinstance(base, Path):
            value = base / value
        if value is not None and not value.is_dir():
            raise ValueError(f"{value} is not a directory")
        return value

    @field_validator("tools")
    @classmethod
    def _tool_names(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for name in value or ():
            if not _NAME.match(name):
                raise ValueError(f"tool {name!r} must be letters, digits, '.', '_' or '-'")
        return value

    def secrets(self) -> frozenset[str]:
        """The names of the environment variables its header and env templates read."""
        found: set[str] = set()
        for value in [*self.headers.values(), *self.env.values()]:
            found |= secret_names(value)
        return frozenset(found)


class McpToolSpec(_Tool):
    """A tool an MCP server listed, as baton calls it (``SERVER.TOOL``).

    Not written in tools.yaml: made from the server's ``tools/list`` answer, its
    ``inputSchema`` as ``args_schema``, so arguments are checked before the call as any
    tool's are.
    """

    kind: Literal["mcp"] = Field(default="mcp", description="`mcp`.")
    server: str = Field(description="The server's name in `mcp_servers`.")
    name: str = Field(description="The tool's name on the server.")
    timeout_s: float = Field(gt=0, description="Seconds one call may take (the server's).")
    retries: int = Field(ge=0, description="In-process retries (the server's).")


ToolSpec = Annotated[HttpToolSpec | PythonToolSpec, Field(discriminator="kind")]

#: Every kind of tool the registry holds: those written in tools.yaml, and those MCP servers list.
AnyToolSpec = HttpToolSpec | PythonToolSpec | McpToolSpec


class LocalSourceSpec(_Config):
    """A directory of text and markdown files, chunked and ranked (BM25) in this process."""

    kind: Literal["local"] = Field(description="`local`.")
    description: str = Field(default="", description="What the collection holds.")
    path: Path = Field(
        description="The directory; a relative path is relative to the tools.yaml file."
    )
    glob: str = Field(
        default="**/*.md",
        min_length=1,
        description="Which files under `path` are documents (hidden files are skipped).",
    )
    max_chunk_chars: int = Field(
        default=1200,
        ge=200,
        le=16_000_000,
        description="Largest chunk, in characters; documents are cut at headings, then "
        "paragraphs, then sentences. Chunks past the record limit need claim checks "
        "(`blob_store`, docs/payloads.md).",
    )

    @field_validator("path")
    @classmethod
    def _directory(cls, value: Path, info: ValidationInfo) -> Path:
        base = info.context.get("base_dir") if isinstance(info.context, dict) else None
        if not value.is_absolute() and isinstance(base, Path):
            value = base / value
        if not value.is_dir():
            raise ValueError(f"{value} is not a directory")
        return value


class ResultFields(_Config):
    """Where a search endpoint's answer keeps its results (JMESPath expressions)."""

    items: str = Field(description="The list of results in the response, e.g. `hits.hits`.")
    id: str = Field(default="id", description="A result's id, within one result.")
    text: str = Field(default="text", description="A result's text, within one result.")
    score: str | None = Field(
        default="score",
        description="A result's score; null (or a missing score) scores by rank, 1/(1+rank).",
    )
    metadata: str | None = Field(
        default=None,
        description="An object of metadata, e.g. `{url: url, title: title}`; null for none.",
    )

    @field_validator("items", "id", "text", "score", "metadata")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            _check_jmespath(value)
        return value


class HttpSourceSpec(HttpEndpoint):
    """A search endpoint; its answer is mapped to documents by ``results``, in its order.

    Its templates read ``query`` and ``top_k`` (headers also ``secrets``).
    """

    _context_names: ClassVar[frozenset[str]] = frozenset({"query", "top_k"})

    kind: Literal["http"] = Field(description="`http`.")
    description: str = Field(default="", description="What the endpoint searches.")
    method: Literal["GET", "POST"] = Field(default="GET", description="HTTP method.")
    results: ResultFields = Field(description="Where the results are in the answer.")


SourceSpec = Annotated[LocalSourceSpec | HttpSourceSpec, Field(discriminator="kind")]


class ToolsConfig(_Config):
    """Everything in a tools.yaml file."""

    tools: dict[str, ToolSpec] = Field(
        default_factory=dict, description="Tool name (what steps and agents say) to its tool."
    )
    sources: dict[str, SourceSpec] = Field(
        default_factory=dict, description="Source name (what retrieve steps say) to its source."
    )
    mcp_servers: dict[str, McpServerSpec] = Field(
        default_factory=dict,
        description="Server name to an MCP server; its tool T is the baton tool `NAME.T`.",
    )

    @field_validator("tools", "sources", "mcp_servers")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not _NAME.match(name):
                raise ValueError(
                    f"name {name!r} must be letters, digits, '.', '_' or '-' (at most 64)"
                )
        return value

    @model_validator(mode="after")
    def _mcp_names_apart(self) -> ToolsConfig:
        for server in self.mcp_servers:
            if "." in server:
                raise ValueError(f"mcp_servers.{server}: a server name may not hold '.'")
            clash = sorted(t for t in self.tools if t.startswith(server + "."))
            if clash:
                raise ValueError(
                    f"tools.{clash[0]}: the prefix {server}. belongs to the MCP server {server}"
                )
        return self


# -- the registry -----------------------------------------------------------------------------


class ToolRegistry:
    """The tools and sources of one tools.yaml, with every python tool's callable resolved.

    The tools of its MCP servers join once listed (``start``, then whenever a listing goes
    stale: ``lookup``, ``keep_fresh``); until then, and between listings, ``tool`` and
    ``describe`` answer from the last listing, without I/O, so the coordinator may use them.

    Args:
        config: The tools and sources (``ToolsConfig()`` for none).
        callables: Test seam: entry-point name to callable. When given, it stands in for the
            ``baton.tools`` entry-point group entirely, so tests register callables without
            packaging anything; leave it out in production.
        environ: Where MCP servers' secrets are read (``os.environ`` when left out).

    Raises:
        ConfigurationError: A python tool's entry point is missing, ambiguous, fails to load
            or is not callable (the message names the tool), or MCP servers are configured
            and the ``mcp`` extra is not installed.
    """

    def __init__(
        self,
        config: ToolsConfig | None = None,
        *,
        callables: Mapping[str, ToolCallable] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config or ToolsConfig()
        wanted = {
            name: spec.entry_point
            for name, spec in self.config.tools.items()
            if isinstance(spec, PythonToolSpec)
        }
        found: Mapping[str, ToolCallable | ConfigurationError]
        if callables is not None:
            found, installed = callables, ", ".join(sorted(callables)) or "none"
        elif wanted:
            found, installed = _entry_points(set(wanted.values()))
        else:
            found, installed = {}, "none"
        resolved: dict[str, ToolCallable] = {}
        for name, entry_point in wanted.items():
            where = f"tools.{name}.entry_point"
            function = found.get(entry_point)
            if function is None:
                raise ConfigurationError(
                    f"{where}: no entry point {entry_point!r} in group {ENTRY_POINT_GROUP} "
                    f"(installed: {installed})"
                )
            if isinstance(function, ConfigurationError):
                raise ConfigurationError(f"{where}: {function}")
            if not callable(function):
                raise ConfigurationError(f"{where}: {entry_point!r} is not callable")
            resolved[name] = function
        self._callables = MappingProxyType(resolved)
        self._mcp: McpServers | None = None
        if self.config.mcp_servers:
            self._mcp = _mcp_servers(self.config, os.environ if environ is None else environ)

    @property
    def tools(self) -> Mapping[str, AnyToolSpec]:
        """Every tool, by name: those of the file, and those MCP servers listed last."""
        if self._mcp is None:
            return MappingProxyType(self.config.tools)
        return MappingProxyType({**self.config.tools, **self._mcp.listed()})

    @property
    def sources(self) -> Mapping[str, LocalSourceSpec | HttpSourceSpec]:
        """Every retrieval source, by name."""
        return MappingProxyType(self.config.sources)

    @property
    def mcp(self) -> McpServers | None:
        """The MCP servers' connections and listings; ``None`` when there are none."""
        return self._mcp

    def tool(self, name: str) -> AnyToolSpec:
        """The tool called ``name``, as last listed for an MCP server's tool.

        Raises:
            UnknownTool: There is none (the message lists the known tools).
        """
        spec = self.config.tools.get(name)
        if spec is not None:
            return spec
        if self._mcp is not None:
            listed = self._mcp.tool(name)
            if listed is not None:
                return listed
        known = ", ".join(sorted(self.tools)) or "none"
        raise UnknownTool(f"tool {name!r} is not registered (known: {known})")

    async def lookup(self, name: str) -> AnyToolSpec:
        """``tool``, listing the MCP server the name belongs to first if its listing is stale.

        Raises:
            UnknownTool: There is no such tool.
            ToolUnavailable, ToolTimeout: The tool's MCP server has never been listed, and
                cannot be now.
        """
        if self._mcp is not None and name not in self.config.tools:
            await self._mcp.fresh(name.partition(".")[0])
        return self.tool(name)

    async def start(self) -> None:
        """List every MCP server's tools; one that cannot be reached is logged and left."""
        if self._mcp is not None:
            await self._mcp.refresh()

    async def keep_fresh(self) -> None:
        """List MCP servers again as their listings go stale, until cancelled."""
        if self._mcp is not None:
            await self._mcp.keep_fresh()

    async def aclose(self) -> None:
        """Close the MCP servers' connections (and stop the processes baton started)."""
        if self._mcp is not None:
            await self._mcp.aclose()

    def function(self, name: str) -> ToolCallable:
        """The callable of the python tool ``name``.

        Raises:
            UnknownTool: There is no python tool of that name.
        """
        self.tool(name)
        try:
            return self._callables[name]
        except KeyError:
            raise UnknownTool(f"tool {name!r} is not a python tool") from None

    def describe(self, names: Iterable[str] | None = None) -> list[dict[str, JsonValue]]:
        """What an agent's model is offered: each tool's name, description and parameters.

        Args:
            names: The tools to describe, in this order; every tool (sorted) when ``None``.

        Raises:
            UnknownTool: A name is not registered.
        """
        chosen = sorted(self.tools) if names is None else list(names)
        described: list[dict[str, JsonValue]] = []
        for name in chosen:
            spec = self.tool(name)
            described.append(
                {"name": name, "description": spec.description, "parameters": spec.args_schema}
            )
        return described


def _mcp_servers(config: ToolsConfig, environ: Mapping[str, str]) -> McpServers:
    """The MCP runtime, imported here so a registry without MCP servers never needs the SDK."""
    try:
        from processors._mcp import McpServers
    except ImportError as exc:
        names = ", ".join(sorted(config.mcp_servers))
        raise ConfigurationError(
            f"mcp_servers ({names}): the MCP SDK is not installed ({exc.name or exc}); "
            "install baton with the `mcp` extra: pip install 'baton[mcp]'"
        ) from None
    return McpServers(config.mcp_servers, environ)


def load_tools(
    path: str | Path,
    *,
    callables: Mapping[str, ToolCallable] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ToolRegistry:
    """Read and check a tools.yaml file and resolve its python tools.

    Args:
        path: The file. Relative ``path``s of local sources are relative to its directory.
        callables: Test seam passed to ``ToolRegistry`` (stands in for the entry points).
        environ: Where MCP servers' secrets are read (``os.environ`` when left out).

    Raises:
        ConfigurationError: The file cannot be read, is not YAML, or breaks the format, or an
            entry point cannot be resolved; the message names the file and every bad field
            (``tools.yaml: tools.ticket_reply.http.base_url: ...``).
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot read tools file {path}: {exc.strerror}") from None
    try:
        data = load_yaml(text, origin=str(path))
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigurationError(
            f"{path}: must hold a mapping with `tools`, `sources` and/or `mcp_servers`"
        )
    try:
        config = ToolsConfig.model_validate(data, context={"base_dir": file.parent})
    except ValidationError as exc:
        raise ConfigurationError(f"{path}: {_describe(exc)}") from None
    try:
        return ToolRegistry(config, callables=callables, environ=environ)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{path}: {exc}") from None


# -- helpers ----------------------------------------------------------------------------------


def accepts_idempotency_key(function: ToolCallable) -> bool:
    """Whether a python tool takes the step's idempotency key (a parameter of that name)."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return "idempotency_key" in parameters


@lru_cache(maxsize=1024)
def secret_names(source: str) -> frozenset[str]:
    """The environment variables a template reads as ``secrets.NAME`` / ``secrets['NAME']``.

    Raises:
        ValueError: It reads ``secrets`` any other way (a computed name, the whole mapping),
            or names something that is not a variable name.
    """
    try:
        tree = _PARSER.parse(source)
    except TemplateSyntaxError as exc:
        raise ValueError(f"template {source!r}: {exc.message}") from None
    uses = [n for n in tree.find_all(nodes.Name) if n.name == "secrets"]
    found: dict[int, str] = {}
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        assert isinstance(node, nodes.Getattr | nodes.Getitem)
        target = node.node
        if not (isinstance(target, nodes.Name) and target.name == "secrets"):
            continue
        if isinstance(node, nodes.Getattr):
            found[id(target)] = node.attr
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            found[id(target)] = node.arg.value
    if any(id(n) not in found or n.ctx != "load" for n in uses):
        raise ValueError(
            f"template {source!r}: read secrets by a literal name: {{{{ secrets.NAME }}}}"
        )
    for name in found.values():
        if not _ENV_NAME.match(name):
            raise ValueError(f"template {source!r}: {name!r} is not an environment variable name")
    return frozenset(found.values())


def _check_template(source: str, allowed: frozenset[str]) -> None:
    if not is_template(source):
        return
    try:
        compile_template(source)
        names, _ = references(source)
    except TemplateError as exc:
        raise ValueError(str(exc)) from None
    if "secrets" in names and "secrets" not in allowed:
        raise ValueError(f"template {source!r}: only headers may read secrets")
    unknown = names - allowed - TEMPLATE_GLOBALS
    if unknown:
        readable = ", ".join(sorted(allowed - {"secrets"})) or "secrets.NAME only"
        raise ValueError(
            f"template {source!r} reads {', '.join(sorted(unknown))}; it may read {readable}"
        )


def _check_jmespath(expression: str) -> None:
    try:
        jmespath.compile(expression)
    except JMESPathError as exc:
        raise ValueError(f"not a JMESPath expression: {expression!r}: {exc}") from None


def _strings(value: JsonValue) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _entry_points(names: set[str]) -> tuple[dict[str, ToolCallable | ConfigurationError], str]:
    """The entry points of ``baton.tools`` among ``names``, loaded, and every installed name.

    A name that is ambiguous or fails to load maps to the error, raised for the tool using it.
    """
    by_name: dict[str, dict[str, importlib.metadata.EntryPoint]] = {}
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        # The same distribution can be found twice on sys.path; only distinct targets clash.
        by_name.setdefault(entry_point.name, {})[entry_point.value] = entry_point
    found: dict[str, ToolCallable | ConfigurationError] = {}
    for name in names & by_name.keys():
        candidates = by_name[name]
        if len(candidates) > 1:
            targets = ", ".join(sorted(candidates))
            found[name] = ConfigurationError(
                f"entry point {name!r} is registered more than once ({targets})"
            )
            continue
        (entry_point,) = candidates.values()
        try:
            found[name] = entry_point.load()
        except Exception as exc:  # user code: any import error is a configuration mistake
            found[name] = ConfigurationError(
                f"entry point {name!r} ({entry_point.value}) cannot be loaded: "
                f"{type(exc).__name__}: {exc}"
            )
    return found, ", ".join(sorted(by_name)) or "none"


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(file)"
        parts.append(f"{where}: {item['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)
