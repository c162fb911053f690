"""Settings: environment and file, validated, with errors that name the field and the source."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams._config import load_settings
from topics import ConfigurationError


def test_defaults() -> None:
    settings = load_settings({})
    assert settings.bootstrap is None
    assert settings.topic_prefix == "baton" and settings.partitions == 12


def test_environment_overrides_file_and_options_override_both(tmp_path: Path) -> None:
    config = tmp_path / "baton.yaml"
    config.write_text("partitions: 4\ntopic_prefix: fromfile\n")
    env = {"BATON_CONFIG": str(config), "BATON_TOPIC_PREFIX": "fromenv"}
    settings = load_settings(env)
    assert (settings.partitions, settings.topic_prefix) == (4, "fromenv")
    assert load_settings(env, partitions=8).partitions == 8
    assert settings.catalog().tasks.name == "fromenv.tasks"


def test_a_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_settings({"BATON_PARTITIONS": "lots"})
    assert "partitions (environment variable BATON_PARTITIONS)" in str(caught.value)


def test_a_bad_file_value_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "baton.yaml"
    config.write_text("partitions: 0\n")
    with pytest.raises(ConfigurationError) as caught:
        load_settings({"BATON_CONFIG": str(config)})
    assert f"partitions ({config})" in str(caught.value)
    assert "greater than or equal to 1" in str(caught.value)


def test_an_unknown_setting_in_a_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "baton.yaml"
    config.write_text("partitons: 3\n")
    with pytest.raises(ConfigurationError, match=rf"partitons \({config}\): Extra inputs"):
        load_settings({"BATON_CONFIG": str(config)})


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read configuration file"):
        load_settings({"BATON_CONFIG": str(tmp_path / "missing.yaml")})
    bad = tmp_path / "bad.yaml"
    bad.write_text("partitions: [\n")
    with pytest.raises(ConfigurationError, match="not valid YAML"):
        load_settings({"BATON_CONFIG": str(bad)})
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n")
    with pytest.raises(ConfigurationError, match="must hold a mapping"):
        load_settings({"BATON_CONFIG": str(listing)})
