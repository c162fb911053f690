"""The model catalog (models.yaml): loading, errors naming file and field, pricing."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from processors import (
    ModelCatalog,
    RouteSpec,
    ScriptRule,
    UnknownRoute,
    load_model_catalog,
)
from topics import ConfigurationError

GOOD = """
routes:
  fast:
    provider: openai
    model: gpt-4o-mini
    base_url: https://api.openai.com/v1
    api_key_env: OPENAI_API_KEY
    input_usd_per_mtok: 0.15
    output_usd_per_mtok: 0.60
    context_window: 128000
    timeout_s: 30
    retries: 3
  local:
    provider: scripted
    model: demo-classifier
    latency_ms: 40
    latency_sigma: 0.5
    script:
      - match: "(?i)refund|broken"
        reply: {category: refund, risk: "{{ 'high' if 'lawyer' in prompt else 'low' }}"}
      - reply: "You said: {{ prompt }}"
"""


def _write(tmp_path: Path, text: str, name: str = "models.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _load_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> str:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, text)
    with pytest.raises(ConfigurationError) as caught:
        load_model_catalog("models.yaml")
    return str(caught.value)


def test_a_catalog_loads_with_every_field(tmp_path: Path) -> None:
    catalog = load_model_catalog(_write(tmp_path, GOOD))

    fast = catalog.route("fast")
    assert fast == RouteSpec(
        provider="openai",
        model="gpt-4o-mini",
        base_url="https://api.openai.com/v1",
        api_key_env="OPENAI_API_KEY",
        input_usd_per_mtok=Decimal("0.15"),
        output_usd_per_mtok=Decimal("0.60"),
        context_window=128000,
        timeout_s=30,
        retries=3,
    )
    local = catalog.route("local")
    assert local.provider == "scripted"
    assert local.script[0].match == "(?i)refund|broken"
    assert local.script[1] == ScriptRule(reply="You said: {{ prompt }}")
    assert (local.latency_ms, local.latency_sigma, local.retries, local.timeout_s) == (
        40,
        0.5,
        2,
        60,
    )


def test_the_catalog_is_frozen(tmp_path: Path) -> None:
    catalog = load_model_catalog(_write(tmp_path, GOOD))
    with pytest.raises(ValueError, match="frozen"):
        catalog.route("fast").model = "gpt-5"  # type: ignore[misc]  # proving it is refused


def test_cost_is_exact_decimal_arithmetic_per_million_tokens(tmp_path: Path) -> None:
    catalog = load_model_catalog(_write(tmp_path, GOOD))

    cost = catalog.cost("fast", 1234, 567)

    # 1234 * 0.15 / 1e6 + 567 * 0.60 / 1e6, with no float rounding anywhere
    assert cost == Decimal("0.0005253")
    assert isinstance(cost, Decimal)
    assert catalog.cost("local", 10**9, 10**9) == 0
    assert catalog.route("fast").cost(1, 0) == Decimal("0.00000015")


def test_an_unknown_route_names_the_known_ones(tmp_path: Path) -> None:
    catalog = load_model_catalog(_write(tmp_path, GOOD))

    with pytest.raises(
        UnknownRoute, match=r"'strong' is not in the model catalog \(known: fast, local\)"
    ):
        catalog.route("strong")
    with pytest.raises(UnknownRoute):
        catalog.cost("strong", 1, 1)
    assert isinstance(UnknownRoute("x"), ConfigurationError)
    with pytest.raises(UnknownRoute, match=r"known: none"):
        ModelCatalog(routes={}).route("fast")


def test_a_bad_provider_names_the_file_and_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = _load_error(tmp_path, monkeypatch, "routes:\n  fast: {provider: gemini, model: m}\n")
    assert message == (
        "models.yaml: routes.fast.provider: "
        "Input should be 'openai', 'openai-responses', 'anthropic' or 'scripted'"
    )


def test_an_anthropic_route_without_a_base_url_names_the_route(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = _load_error(
        tmp_path, monkeypatch, "routes:\n  fast: {provider: anthropic, model: m}\n"
    )
    assert message == "models.yaml: routes.fast: an anthropic route needs `base_url`"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "routes:\n  fast: {provider: openai, model: m}\n",
            "models.yaml: routes.fast: an openai route needs `base_url`",
        ),
        (
            "routes:\n  fast: {provider: openai, model: m, base_url: ftp://x}\n",
            "models.yaml: routes.fast: `base_url` must start with http:// or https://",
        ),
        (
            "routes:\n  fast: {provider: scripted, model: m}\n",
            "models.yaml: routes.fast: a scripted route needs at least one `script` rule",
        ),
        (
            "routes:\n  fast: {provider: openai, model: m, base_url: 'http://x', api_key: sk-1}\n",
            "models.yaml: routes.fast.api_key: Extra inputs are not permitted",
        ),
        (
            "routes:\n  fast: {provider: openai, model: m, base_url: 'http://x', timeout_s: 0}\n",
            "models.yaml: routes.fast.timeout_s: Input should be greater than 0",
        ),
        (
            "routes:\n  fast: {provider: openai, model: m, base_url: 'http://x',"
            " input_usd_per_mtok: -1}\n",
            "models.yaml: routes.fast.input_usd_per_mtok: Input should be greater than or equal",
        ),
        (
            "routes:\n  fast: {provider: openai, model: m, base_url: 'http://x',"
            " api_key_env: 'sk-live-123'}\n",
            "models.yaml: routes.fast.api_key_env: String should match pattern",
        ),
        (
            "routes:\n  fast: {provider: scripted, model: m, script: [{match: '(', reply: x}]}\n",
            "models.yaml: routes.fast.script.0.match: not a valid regular expression",
        ),
        (
            "routes:\n  fast: {provider: scripted, model: m, script: [{reply: '{{ oops'}]}\n",
            "models.yaml: routes.fast.script.0.reply",
        ),
        (
            "routes:\n  'no spaces': {provider: scripted, model: m, script: [{reply: x}]}\n",
            "models.yaml: routes: route name 'no spaces' must be letters",
        ),
        ("models: {}\n", "models.yaml: routes: Field required; models: Extra inputs"),
    ],
)
def test_catalog_errors_name_the_file_and_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, expected: str
) -> None:
    assert _load_error(tmp_path, monkeypatch, text).startswith(expected)


def test_every_problem_is_reported_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    message = _load_error(
        tmp_path,
        monkeypatch,
        "routes:\n  a: {provider: openai, model: ''}\n  b: {provider: nope, model: m}\n",
    )
    assert "routes.a.model: String should have at least 1 character" in message
    expected = "Input should be 'openai', 'openai-responses', 'anthropic' or 'scripted'"
    assert f"routes.b.provider: {expected}" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("routes: [a\n", "models.yaml: not valid YAML"),
        ("- a\n- b\n", "models.yaml: must hold a mapping with `routes`"),
        ("", "models.yaml: must hold a mapping with `routes`"),
    ],
)
def test_a_file_that_is_not_a_catalog_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, expected: str
) -> None:
    assert _load_error(tmp_path, monkeypatch, text).startswith(expected)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigurationError, match=f"cannot read model catalog {missing}"):
        load_model_catalog(missing)


def test_an_empty_catalog_is_allowed_for_workers_without_llm_steps() -> None:
    assert ModelCatalog(routes={}).routes == {}


def test_the_script_and_latency_belong_to_scripted_routes_only() -> None:
    with pytest.raises(ValueError, match="are for scripted"):
        RouteSpec(
            provider="openai",
            model="m",
            base_url="http://x",
            script=[ScriptRule(reply="x")],
        )
