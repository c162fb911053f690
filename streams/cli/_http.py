"""How the commands call a worker's HTTP API: as the principal whose token they were given.

The token is ``--token`` or ``BATON_TOKEN``, sent as ``Authorization: Bearer``. An error
answer becomes one line naming what went wrong (and so exit status 2).
"""

from __future__ import annotations

from typing import Any

import httpx

from streams.cli._main import settings
from topics import ConfigurationError, PermanentError, RetryableError

__all__ = ["TOKEN_HELP", "call_api"]

TOKEN_HELP = "Your API token (default: the BATON_TOKEN environment variable)."


def call_api(
    method: str,
    path: str,
    token: str | None,
    body: dict[str, Any] | None = None,
    *,
    what: str = "token",
) -> Any:
    """One API call's JSON answer.

    Raises:
        ConfigurationError: No token (``no <what>``), or the API did not accept it (401).
        PermanentError: 403, 404, 409 or another refusal, with the API's words.
        RetryableError: No API there, or 502/503.
    """
    if not token:
        raise ConfigurationError(f"no {what}: give --token or set BATON_TOKEN")
    api = settings().api
    try:
        response = httpx.request(
            method,
            f"{api}{path}",
            headers={"Authorization": f"Bearer {token}"},
            json=body,
            timeout=15,
        )
    except httpx.HTTPError as exc:
        raise RetryableError(
            f"no worker API at {api} ({exc}): start `baton worker` or set BATON_API_URL"
        ) from None
    if response.is_success:
        return response.json()
    try:
        said = str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        said = response.text.strip()[:200] or response.reason_phrase
    status = response.status_code
    if status == 401:
        raise ConfigurationError(f"not signed in: {said} (check --token or BATON_TOKEN)")
    if status == 403:
        raise PermanentError(f"not allowed: {said}")
    if status == 404:
        raise PermanentError(f"not found: {said}")
    if status == 409:
        raise PermanentError(f"already decided: {said}")
    if status in (502, 503):
        raise RetryableError(f"try again: {said}")
    raise PermanentError(f"the API answered {status}: {said}")
