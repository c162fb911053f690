"""The ``sentiment`` step kind: score a text through the scoring service, label it.

The service's base URL is configuration (``BATON_SENTIMENT_URL`` in the worker's
environment), never a step parameter, so a workflow cannot send texts anywhere else. Errors
are classified as baton's tree asks: the service down, slow or busy (connection errors,
timeouts, 408/409/429/5xx, an answer that is not the format) is ``SentimentUnavailable``,
retryable, with the ``Retry-After`` it asked for; any other 4xx is ``SentimentRejected``.
"""

from __future__ import annotations

from typing import Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from processors import CustomProcessor, KindFailed, KindSetup, KindUnavailable
from topics import BatonError, ConfigurationError, StepRequested

__all__ = [
    "URL_VARIABLE",
    "SentimentParams",
    "SentimentProcessor",
    "SentimentRejected",
    "SentimentUnavailable",
]

#: The environment variable the scoring service's base URL is read from.
URL_VARIABLE = "BATON_SENTIMENT_URL"

_TIMEOUT_S = 10.0
_RETRYABLE_STATUS = frozenset({408, 409, 429})


class SentimentUnavailable(KindUnavailable):
    """The scoring service is down, slow or busy: the step is tried again."""


class SentimentRejected(KindFailed):
    """The scoring service refused the request (a 4xx other than 408/409/429)."""


class SentimentParams(BaseModel):
    """What a ``sentiment`` step takes (``params:`` in the workflow)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    text: str = Field(min_length=1, max_length=20_000, description="The text to score.")
    threshold: float = Field(
        default=0.2,
        ge=0.0,
        le=1.0,
        description="Scores within +-threshold of 0 are neutral.",
    )


class SentimentProcessor(CustomProcessor[SentimentParams]):
    """Scores ``params.text``; the output is ``{label, score, matched}``."""

    description = "The sentiment of a text (positive, negative, neutral), from a scoring service."

    def __init__(self, setup: KindSetup) -> None:
        super().__init__(setup)
        self._base_url = setup.environ.get(URL_VARIABLE)

    async def run(self, params: SentimentParams, request: StepRequested) -> JsonValue:
        """Score the text once; the idempotency key goes with the call.

        Raises:
            SentimentUnavailable: The service did not answer usably (retryable).
            SentimentRejected: It refused the request.
            ConfigurationError: ``BATON_SENTIMENT_URL`` is unset or not an http(s) URL.
        """
        url = f"{self._url()}/v1/score"
        headers = {"Idempotency-Key": request.idempotency_key}
        body = {"text": params.text}
        response = await self.setup.http_client.post(
            url, json=body, headers=headers, timeout=_TIMEOUT_S
        )
        score, matched = _answer(response)
        return {"label": _label(score, params.threshold), "score": score, "matched": matched}

    def classify(self, error: Exception) -> BatonError | None:
        """Connection errors and timeouts of the call are the service being unavailable."""
        if isinstance(error, httpx.TransportError):
            return SentimentUnavailable(f"the scoring service: {type(error).__name__}: {error}")
        return None

    def _url(self) -> str:
        base = (self._base_url or "").rstrip("/")
        if not base:
            raise ConfigurationError(f"{URL_VARIABLE} is not set on this worker")
        parsed = httpx.URL(base)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ConfigurationError(f"{URL_VARIABLE} must be an http(s) URL, not {base!r}")
        return base


def _answer(response: httpx.Response) -> tuple[float, int]:
    status = response.status_code
    if status in _RETRYABLE_STATUS or status >= 500:
        raise SentimentUnavailable(
            f"the scoring service answered HTTP {status}",
            retry_after=_retry_after(response.headers.get("Retry-After")),
        )
    if status != 200:
        raise SentimentRejected(
            f"the scoring service answered HTTP {status}: {response.text[:200]}"
        )
    try:
        body = response.json()
        score, matched = float(body["score"]), int(body["matched"])
    except (ValueError, KeyError, TypeError):
        raise SentimentUnavailable("the scoring service's answer is not {score, matched}") from None
    if not -1.0 <= score <= 1.0:
        raise SentimentUnavailable(f"the scoring service's score {score} is not in [-1, 1]")
    return score, matched


def _label(score: float, threshold: float) -> Literal["positive", "negative", "neutral"]:
    if score > threshold:
        return "positive"
    if score < -threshold:
        return "negative"
    return "neutral"


def _retry_after(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and 0 <= seconds <= 3600 else None
