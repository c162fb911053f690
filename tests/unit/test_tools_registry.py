"""The tools.yaml format: loading, the errors that name file and field, and the registry."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from processors._tools import (
    HttpSourceSpec,
    HttpToolSpec,
    LocalSourceSpec,
    PythonToolSpec,
    ToolRegistry,
    ToolsConfig,
    UnknownTool,
    load_tools,
    path_problem,
    secret_names,
)
from topics import ConfigurationError, PermanentError

EXAMPLE = Path(__file__).parents[2] / "examples" / "tools.yaml"
HTTP_TOOL: dict[str, Any] = {
    "kind": "http",
    "description": "Reply on a ticket.",
    "base_url": "https://tickets.example.com/api",
    "path": "/tickets/{{ args.id }}",
}


def _write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "tools.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_the_example_loads() -> None:
    registry = load_tools(EXAMPLE)  # its python tool is baton's own, a real entry point

    assert set(registry.tools) == {"ticket_reply", "clock"}
    assert isinstance(registry.tool("ticket_reply"), HttpToolSpec)
    assert isinstance(registry.tool("clock"), PythonToolSpec)
    policies = registry.sources["policies"]
    assert isinstance(policies, LocalSourceSpec)
    assert policies.path == EXAMPLE.parent / "policies"  # relative to the file
    assert isinstance(registry.sources["help_center"], HttpSourceSpec)
    reply = registry.tool("ticket_reply")
    assert isinstance(reply, HttpToolSpec)
    assert reply.header_secrets() == {"TICKETS_TOKEN"}


def test_describe_offers_name_description_and_parameters() -> None:
    registry = load_tools(EXAMPLE)

    (described,) = registry.describe(["clock"])

    assert described == {
        "name": "clock",
        "description": "The current date and time, in UTC and in a given timezone.",
        "parameters": {
            "type": "object",
            "properties": {
                "timezone": {
                    "type": "string",
                    "description": "An IANA timezone, e.g. Europe/Paris.",
                }
            },
        },
    }
    assert [d["name"] for d in registry.describe()] == ["clock", "ticket_reply"]
    with pytest.raises(UnknownTool, match=r"'refund' is not registered \(known: clock"):
        registry.describe(["clock", "refund"])


def test_an_unknown_tool_is_permanent() -> None:
    registry = ToolRegistry()

    with pytest.raises(UnknownTool, match=r"tool 'x' is not registered \(known: none\)") as err:
        registry.tool("x")
    assert isinstance(err.value, PermanentError)


def test_an_empty_file_is_an_empty_registry(tmp_path: Path) -> None:
    registry = load_tools(_write(tmp_path, ""))

    assert registry.tools == {} and registry.sources == {}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"base_url": "https://{{ args.host }}/"}, r"base_url: .*cannot be a template"),
        ({"base_url": "ftp://files.example.com"}, r"base_url: must be an http:// or https://"),
        ({"base_url": "https://u:p@tickets.example.com"}, r"base_url: must not hold credentials"),
        ({"base_url": "https://tickets.example.com/?a=1"}, r"base_url: must not have a query"),
        ({"path": "{{ args.url }}"}, r"path: must start with a single literal '/'"),
        ({"path": "//{{ args.host }}/x"}, r"path: must start with a single literal '/'"),
        ({"path": "/a/../admin"}, r"path: a path may not hold '\.' or '\.\.' segments"),
        ({"path": "/tickets/{{ arg.id }}"}, r"path: template .* reads arg; it may read args, "),
        ({"path": "/a/../{{ args.id }}"}, r"path: a path may not hold '\.' or '\.\.' segments"),
        ({"path": "/a//{{ args.id }}"}, r"path: a path may not hold '//'"),
        ({"path": "/t/{{ args.id | urlencode }}"}, r"path: path parameters are percent-encoded"),
        (
            {"path": "/t/{% if args.id %}{{ args.id }}{% endif %}"},
            r"path: a path template is literal text and \{\{ expression \}\} placeholders",
        ),
        ({"path": "/t/{{ secrets.TOKEN }}"}, r"path: .*only headers may read secrets"),
        ({"query": {"k": "{{ secrets.TOKEN }}"}}, r"query: .*only headers may read secrets"),
        ({"body": {"k": ["{{ secrets.TOKEN }}"]}}, r"body: .*only headers may read secrets"),
        ({"headers": {"X": "{{ secrets[args.name] }}"}}, r"headers: .*by a literal name"),
        ({"headers": {"X": "{{ secrets | tojson }}"}}, r"headers: .*by a literal name"),
        ({"headers": {"Host": "evil.example"}}, r"headers: Host is set by baton"),
        ({"headers": {"idempotency-key": "x"}}, r"headers: idempotency-key is set by baton"),
        ({"headers": {"Bad Name": "x"}}, r"headers: 'Bad Name' is not a header name"),
        ({"method": "GET", "body": {"a": 1}}, r"a GET request has no body"),
        ({"method": "TRACE"}, r"method: Input should be"),
        ({"answer": "reply.[id"}, r"answer: not a JMESPath expression"),
        ({"args_schema": {"type": "string"}}, r"args_schema: must be an object schema"),
        ({"args_schema": {"type": "object", "required": 3}}, r"args_schema: not a valid JSON"),
        ({"description": ""}, r"description: String should have at least 1 character"),
        ({"api_key": "sk-123"}, r"api_key: Extra inputs are not permitted"),
        ({"timeout_s": 0}, r"timeout_s: Input should be greater than 0"),
        ({"path": "/{{ args.id"}, r"path: template .*: unexpected end of template"),
    ],
)
def test_a_bad_http_tool_is_refused_naming_file_and_field(
    tmp_path: Path, spec: dict[str, Any], message: str
) -> None:
    path = _write(tmp_path, {"tools": {"reply": {**HTTP_TOOL, **spec}}})

    prefix = rf"^{re.escape(str(path))}: tools\.reply\.http(\.|: )"
    with pytest.raises(ConfigurationError, match=prefix + message):
        load_tools(path)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"tools": {"bad name": HTTP_TOOL}}, r"tools: name 'bad name' must be letters"),
        ({"tools": {"t": {"kind": "shell", "description": "x"}}}, r"tools\.t: Input tag 'shell'"),
        (
            {"sources": {"docs": {"kind": "local", "path": "nowhere"}}},
            r"sources\.docs\.local\.path: .*nowhere is not a directory",
        ),
        (
            {"sources": {"s": {"kind": "http", "base_url": "https://s.example", "results": {}}}},
            r"sources\.s\.http\.results\.items: Field required",
        ),
        (
            {
                "sources": {
                    "s": {
                        "kind": "http",
                        "base_url": "https://s.example",
                        "query": {"q": "{{ args.q }}"},
                        "results": {"items": "hits"},
                    }
                }
            },
            r"sources\.s\.http\.query: template .* reads args; it may read query, top_k",
        ),
        ({"routes": {}}, r"routes: Extra inputs are not permitted"),
    ],
)
def test_bad_files_are_refused_naming_file_and_field(
    tmp_path: Path, data: dict[str, Any], message: str
) -> None:
    path = _write(tmp_path, data)

    with pytest.raises(ConfigurationError, match=rf"^{re.escape(str(path))}: {message}"):
        load_tools(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [("tools: [", "not valid YAML"), ("- a\n- b\n", "must hold a mapping")],
)
def test_files_that_are_not_a_mapping_are_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        load_tools(_write(tmp_path, text))


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read tools file .*nope.yaml"):
        load_tools(tmp_path / "nope.yaml")


def test_a_missing_entry_point_names_the_file(tmp_path: Path) -> None:
    tool = {"kind": "python", "description": "x", "entry_point": "nothing_installed_by_that_name"}
    path = _write(tmp_path, {"tools": {"lookup": tool}})

    where = rf"^{re.escape(str(path))}: tools\.lookup\.entry_point: no "
    with pytest.raises(ConfigurationError, match=where):
        load_tools(path)


def test_secret_names_are_read_from_header_templates() -> None:
    assert secret_names("Bearer {{ secrets.TOKEN }}") == {"TOKEN"}
    assert secret_names("{{ secrets['A_B'] }}:{{ secrets.C | trim }}") == {"A_B", "C"}
    assert secret_names("no secrets here") == frozenset()
    with pytest.raises(ValueError, match="not an environment variable name"):
        secret_names("{{ secrets['A-B'] }}")


@pytest.mark.parametrize(
    ("path", "ok"),
    [
        ("/tickets/42/replies", True),
        ("/a:b/c;d=1", True),
        ("/", True),
        ("/files/report.final.pdf", True),
        ("tickets", False),
        ("/a//b", False),
        ("/a/./b", False),
        ("/a/%2E%2E/b", False),
        ("/a/%252F%252Fb", False),
        ("/users/@me", False),
        ("/a\\b", False),
        ("/a?b", False),
        ("/a\tb", False),
    ],
)
def test_path_problem(path: str, ok: bool) -> None:
    assert (path_problem(path) is None) is ok


def test_a_config_built_in_code_needs_no_file() -> None:
    config = ToolsConfig.model_validate({"tools": {"reply": HTTP_TOOL}})

    reply = ToolRegistry(config).tool("reply")
    assert isinstance(reply, HttpToolSpec)
    assert reply.base_url == "https://tickets.example.com/api"
