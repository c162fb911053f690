"""Circuit breakers: open after failures in a row, refuse, probe after the cooldown, close."""

from __future__ import annotations

import pytest

from processors import Breakers, CircuitOpen, ProviderRejected, ProviderUnavailable


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def fail(breakers: Breakers, error: BaseException | None = None) -> None:
    breakers.before_call("p", 3, 10)
    breakers.after_call("p", 3, error or ProviderUnavailable("503"))


def test_opens_after_failures_in_a_row_and_refuses_with_the_time_left() -> None:
    clock = Clock()
    breakers = Breakers(clock=clock)
    for _ in range(3):
        fail(breakers)
    assert breakers.is_open("p")
    clock.now += 4
    with pytest.raises(CircuitOpen) as caught:
        breakers.before_call("p", 3, 10)
    assert caught.value.retry_after == pytest.approx(6)
    assert caught.value.retryable


def test_a_success_in_between_resets_the_count() -> None:
    breakers = Breakers(clock=Clock())
    fail(breakers)
    fail(breakers)
    breakers.before_call("p", 3, 10)
    breakers.after_call("p", 3, None)
    fail(breakers)
    fail(breakers)
    assert not breakers.is_open("p")


def test_client_errors_say_nothing_about_health() -> None:
    breakers = Breakers(clock=Clock())
    for _ in range(10):
        fail(breakers, ProviderRejected("400 bad request"))
    assert not breakers.is_open("p")


def test_after_the_cooldown_one_probe_decides() -> None:
    clock = Clock()
    breakers = Breakers(clock=clock)
    for _ in range(3):
        fail(breakers)
    clock.now += 10
    breakers.before_call("p", 3, 10)  # the probe goes through
    with pytest.raises(CircuitOpen, match="probe call is under way"):
        breakers.before_call("p", 3, 10)  # others wait for it
    breakers.after_call("p", 3, ProviderUnavailable("still down"))
    assert breakers.is_open("p")  # failed probe: open again, a full cooldown
    with pytest.raises(CircuitOpen):
        breakers.before_call("p", 3, 10)
    clock.now += 10
    breakers.before_call("p", 3, 10)
    breakers.after_call("p", 3, None)
    assert not breakers.is_open("p")
    breakers.before_call("p", 3, 10)  # closed: calls flow


def test_endpoints_are_independent() -> None:
    breakers = Breakers(clock=Clock())
    for _ in range(3):
        fail(breakers)
    breakers.before_call("other", 3, 10)
