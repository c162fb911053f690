import orjson
import pytest

from topics import MAX_JSON_BYTES, MAX_JSON_DEPTH, JsonLimitExceeded, check_json, loads_json


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_json_at_the_depth_limit_parses_and_one_deeper_is_refused_naming_the_limit() -> None:
    assert loads_json(nested(MAX_JSON_DEPTH)) is not None
    with pytest.raises(JsonLimitExceeded, match=f"limit of {MAX_JSON_DEPTH} levels"):
        loads_json(nested(MAX_JSON_DEPTH + 1), what="task input")


@pytest.mark.parametrize("depth", [300, 1_100, 100_000])
def test_json_nested_far_past_every_parser_limit_is_refused_not_crashed_on(depth: int) -> None:
    with pytest.raises(JsonLimitExceeded, match="task input nests deeper"):
        loads_json(nested(depth), what="task input")


def test_json_over_the_size_limit_is_refused_before_parsing() -> None:
    text = b'"' + b"x" * MAX_JSON_BYTES + b'"'
    with pytest.raises(JsonLimitExceeded, match=f"over the limit of {MAX_JSON_BYTES}"):
        loads_json(text, what="tool answer")


def test_not_json_is_a_decode_error_not_a_limit() -> None:
    with pytest.raises(orjson.JSONDecodeError):
        loads_json(b"{nope")


def test_a_parsed_value_is_checked_iteratively_past_the_recursion_limit() -> None:
    value: list[object] = []
    for _ in range(50_000):
        value = [value]
    with pytest.raises(JsonLimitExceeded):
        check_json(value)
    check_json({"a": [{"b": 1}]})
