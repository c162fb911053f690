"""The one interface every model provider implements, and what it answers."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, JsonValue

from processors._catalog import RouteSpec

__all__ = ["ChatMessage", "Completion", "Provider", "estimate_tokens"]


class ChatMessage(BaseModel):
    """One message of a chat conversation."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True)
class Completion:
    """A model's answer to one call.

    Attributes:
        text: The answer as the model wrote it.
        input_tokens: Prompt tokens billed.
        output_tokens: Completion tokens billed.
    """

    text: str
    input_tokens: int
    output_tokens: int


class Provider(Protocol):
    """A model provider: one chat completion per call, errors classified.

    Implementations raise only errors of baton's tree (``ProviderTimeout``,
    ``ProviderUnavailable``, ``ProviderRateLimited``, ``ProviderRejected``,
    ``ConfigurationError``) and never retry on their own: the caller owns the one retry layer.
    """

    async def complete(
        self,
        route: RouteSpec,
        messages: Sequence[ChatMessage],
        *,
        temperature: float,
        max_tokens: int | None,
        output_schema: Mapping[str, JsonValue] | None,
        idempotency_key: str,
    ) -> Completion:
        """Ask the route's model for one completion.

        Args:
            route: Where the call goes (provider, model, timeout, prices).
            messages: The conversation, templates already rendered.
            temperature: Sampling temperature.
            max_tokens: Cap on completion tokens, or ``None`` for the model's default.
            output_schema: JSON Schema the answer should follow, or ``None`` for free text.
            idempotency_key: Stable across retries of the step.
        """
        ...


def estimate_tokens(text: str) -> int:
    """A deterministic token count for text whose real count is unknown: ~4 chars a token."""
    return max(1, math.ceil(len(text) / 4))
