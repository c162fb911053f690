"""Circuit breakers: stop calling a provider that keeps failing, and let it recover.

One breaker per provider endpoint (provider and base URL), per worker process. ``failures``
consecutive retryable failures (timeouts, connection errors, 429, 5xx) open it: every call
then fails at once with ``CircuitOpen`` (retryable, with the time left as ``retry_after``),
which the coordinator answers by moving the step to its next fallback route. After
``cooldown`` one call is let through: success closes the breaker, failure opens it again.
Client errors (other 4xx) and bad answers say nothing about the provider's health and do not
count.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from processors._errors import (
    CircuitOpen,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
)

__all__ = ["Breakers", "counts_against"]

_UNHEALTHY = (ProviderTimeout, ProviderUnavailable, ProviderRateLimited)


def counts_against(error: BaseException) -> bool:
    """Whether an error says the provider is unhealthy."""
    return isinstance(error, _UNHEALTHY)


@dataclass
class _State:
    failures: int = 0
    opened_at: float | None = None
    probing: bool = False


@dataclass
class Breakers:
    """The breakers of one process, by endpoint.

    Args:
        clock: Monotonic seconds.
    """

    clock: Callable[[], float] = time.monotonic
    _states: dict[str, _State] = field(default_factory=dict)

    def before_call(self, endpoint: str, failures: int, cooldown: float) -> None:
        """Let a call through, or refuse it.

        Raises:
            CircuitOpen: The endpoint's breaker is open (or a probe call is under way).
        """
        state = self._states.setdefault(endpoint, _State())
        if state.opened_at is None:
            return
        left = state.opened_at + cooldown - self.clock()
        if left > 0:
            raise CircuitOpen(
                f"circuit open for {endpoint} after {failures} failures in a row; "
                f"retry in {left:.1f}s",
                retry_after=left,
            )
        if state.probing:
            raise CircuitOpen(
                f"circuit half-open for {endpoint}: a probe call is under way", retry_after=1.0
            )
        state.probing = True

    def after_call(self, endpoint: str, failures: int, error: BaseException | None) -> None:
        """Record how a call went."""
        state = self._states.setdefault(endpoint, _State())
        probing, state.probing = state.probing, False
        if error is None or not counts_against(error):
            if error is None or probing:
                state.failures = 0
                state.opened_at = None
            return
        state.failures += 1
        if probing or state.failures >= failures:
            state.opened_at = self.clock()

    def states(self) -> dict[str, str]:
        """Each endpoint's breaker state: ``closed``, ``open`` or ``half_open``.

        ``open``: calls are refused (or, once the cooldown has passed, the next one is a
        probe); ``half_open``: a probe call is under way.
        """
        return {
            endpoint: "half_open"
            if state.probing
            else ("open" if state.opened_at is not None else "closed")
            for endpoint, state in list(self._states.items())
        }

    def is_open(self, endpoint: str) -> bool:
        """Whether calls to an endpoint are refused now (for metrics and tests)."""
        state = self._states.get(endpoint)
        return state is not None and state.opened_at is not None
