"""The errors processors raise, each placed in baton's one exception tree.

The branch decides what happens next: the processor retries retryable errors in-process
(tenacity, a few times), then reports the failure; the coordinator decides about the rest::

    BatonError                       (topics)
     ├── RetryableError              (topics) try again
     │    ├── ProviderTimeout        the model call did not answer within the route's timeout
     │    ├── ProviderUnavailable    connection errors, HTTP 408/409/5xx, unparseable bodies
     │    ├── ProviderRateLimited    HTTP 429; ``retry_after`` from ``Retry-After``
     │    ├── CircuitOpen            the provider's breaker is open: not called, go elsewhere
     │    ├── ToolTimeout            a tool or search source did not answer within its timeout
     │    ├── ToolUnavailable        connection errors, HTTP 408/409/5xx, unusable answers
     │    ├── ToolRateLimited        HTTP 429 from a tool; ``retry_after`` from ``Retry-After``
     │    ├── KindUnavailable        a custom kind's far side is down or busy (packages raise it)
     │    └── KindTimeout            a custom kind's attempt was still running at its deadline
     ├── PermanentError              (topics) trying again cannot help
     │    ├── ProviderRejected       any other 4xx: the provider refused the request
     │    ├── OutputSchemaViolation  the model's answer is not JSON or misses the output schema
     │    ├── ValidationFailed       a validate step found problems ("; "-joined)
     │    ├── InvalidParams          a step request whose params break the processor contract
     │    ├── ToolRejected           a tool refused the request (4xx, or a redirect)
     │    ├── ToolRequestRefused     the rendered request would leave the configured host: not sent
     │    ├── ToolFailed             a python tool raised, or an answer has the wrong shape
     │    ├── UnknownTool            a tool name the registry lacks (an agent's model may ask)
     │    ├── UnknownSource          a retrieval source the registry lacks
     │    ├── KindFailed             a custom kind failed for good (packages raise it)
     │    └── TemplateRenderError    a template failed while rendering: a missing value, a type
     │         │                     error
     │         └── TemplateLimitExceeded  it went over a sandbox limit (size, time, ...): named
     └── ConfigurationError          (topics) a mistake in config: fix it, never retried
          ├── UnknownRoute           a route name the model catalog does not have
          └── TemplateError          a template or expression that does not compile

A step result names the error by its class name (``StepError.error_class``). An exception that
is none of these is a bug: ``execute`` reports it as ``InternalError``, not retryable.
"""

from __future__ import annotations

from collections.abc import Iterable

from topics import ConfigurationError, PermanentError, RetryableError, Usage

__all__ = [
    "CircuitOpen",
    "InvalidParams",
    "KindFailed",
    "KindTimeout",
    "KindUnavailable",
    "OutputSchemaViolation",
    "ProviderRateLimited",
    "ProviderRejected",
    "ProviderTimeout",
    "ProviderUnavailable",
    "TemplateError",
    "TemplateLimitExceeded",
    "TemplateRenderError",
    "ToolFailed",
    "ToolRateLimited",
    "ToolRejected",
    "ToolRequestRefused",
    "ToolTimeout",
    "ToolUnavailable",
    "UnknownRoute",
    "UnknownSource",
    "UnknownTool",
    "ValidationFailed",
]


class ProviderTimeout(RetryableError):
    """The model provider did not answer within the route's ``timeout_s``."""


class ProviderUnavailable(RetryableError):
    """The provider could not be reached or answered with something unusable.

    Connection errors, HTTP 408, 409 and 5xx, and bodies that are not the wire format.
    """


class ProviderRateLimited(RetryableError):
    """The provider answered HTTP 429; ``retry_after`` is what its ``Retry-After`` asked for."""


class CircuitOpen(RetryableError):
    """The provider's circuit breaker is open, so it was not called.

    Retryable (the provider may recover), but not retried in-process: the coordinator moves
    the step to its next fallback route, or retries it later.
    """


class ProviderRejected(PermanentError):
    """The provider refused the request (a 4xx other than 408/409/429).

    Args:
        message: What was refused and the provider's own explanation (never the API key).
        status: The HTTP status, or ``None`` when no HTTP exchange was involved.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class OutputSchemaViolation(PermanentError):
    """The model's answer is not JSON, or does not match the step's ``output_schema``.

    Args:
        message: Why, and where in the answer.
        usage: What the call that produced the answer cost: it was billed all the same.
    """

    def __init__(self, message: str, *, usage: Usage | None = None) -> None:
        super().__init__(message)
        self.usage = usage


class ValidationFailed(PermanentError):
    """A validate step found problems.

    The message is the problems joined by ``"; "``: the coordinator splits it again to feed
    the problems back to an earlier step, so a problem never contains ``"; "`` itself.

    Args:
        problems: Every problem found, in the order found.
    """

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = tuple(p.replace("; ", ", ") for p in problems)
        super().__init__("; ".join(self.problems))


class InvalidParams(PermanentError):
    """A step request whose ``params`` or ``context`` do not have the shape its kind needs."""


class UnknownRoute(ConfigurationError):
    """A model route the catalog does not define."""


class ToolTimeout(RetryableError):
    """An HTTP tool, search source or python tool did not answer within its ``timeout_s``."""


class ToolUnavailable(RetryableError):
    """The far side could not be reached or answered with something unusable.

    Connection errors, HTTP 408, 409 and 5xx, and a body that is not JSON where JSON is needed.
    """


class ToolRateLimited(RetryableError):
    """The far side answered HTTP 429; ``retry_after`` is what its ``Retry-After`` asked for."""


class ToolRejected(PermanentError):
    """The far side refused the request: a 4xx other than 408/409/429, or a redirect.

    Args:
        message: What was refused and the far side's explanation (secrets redacted).
        status: The HTTP status.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ToolRequestRefused(PermanentError):
    """The rendered request would leave the endpoint's ``base_url``, so it was never sent.

    A path with a scheme, ``//``, ``@``, a backslash, a ``.``/``..`` segment (also
    percent-encoded) or a ``?``/``#``, or a header value with a line break.
    """


class ToolFailed(PermanentError):
    """A tool failed in a way trying again cannot fix.

    A python tool raised something other than a baton error or returned something that is not
    JSON, or an answer is not in the shape the configuration expects.
    """


class UnknownTool(PermanentError):
    """A tool name the registry does not have.

    Permanent rather than a configuration error: an agent's model may ask for a tool that does
    not exist, which is its mistake, not the operator's.
    """


class UnknownSource(PermanentError):
    """A retrieval source name the registry does not have."""


class KindUnavailable(RetryableError):
    """A custom kind's far side is down or busy: the step is tried again, as its policy says.

    Packages raise it (or a subclass of their own) from ``CustomProcessor.run``; a
    ``retry_after`` asks the coordinator to wait at least that long.
    """


class KindTimeout(RetryableError):
    """A custom kind's attempt was still running at its deadline, so it was stopped."""


class KindFailed(PermanentError):
    """A custom kind failed in a way trying again cannot fix (packages raise it)."""


class TemplateError(ConfigurationError):
    """A template or expression that does not compile (found when a workflow is loaded)."""


class TemplateRenderError(PermanentError):
    """A template that failed while rendering: a missing value, a type error, a limit."""


class TemplateLimitExceeded(TemplateRenderError):
    """A template went over one of the sandbox's limits; the message names the limit."""
