"""baton-sentiment: an example step kind for baton, ``kind: sentiment``.

Registered in the ``baton.processors`` entry-point group (see ``pyproject.toml``); the
scoring service it calls is ``baton_sentiment.service``.
"""

from baton_sentiment._processor import (
    URL_VARIABLE,
    SentimentParams,
    SentimentProcessor,
    SentimentRejected,
    SentimentUnavailable,
)

__all__ = [
    "URL_VARIABLE",
    "SentimentParams",
    "SentimentProcessor",
    "SentimentRejected",
    "SentimentUnavailable",
]
