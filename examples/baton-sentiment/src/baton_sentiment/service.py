"""The scoring service the ``sentiment`` kind calls: a lexicon scorer over HTTP.

``POST /v1/score`` with ``{"text": "..."}`` answers ``{"score": s, "matched": n}``: ``s`` in
``[-1, 1]`` is (positive - negative) / (positive + negative) over the words of the lexicon
found in the text (a word after ``not``, ``no`` or ``never`` counts the other way), ``0`` when
none is. Small on purpose: the example is the step kind, not the model.

Run it with ``baton-sentiment-service --port 8099`` (loopback by default).
"""

from __future__ import annotations

import argparse
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

__all__ = ["MAX_BODY_BYTES", "SentimentService", "main", "score"]

#: The largest request body the service reads.
MAX_BODY_BYTES = 1 << 20

_POSITIVE = frozenset(
    "good great excellent happy love loved lovely thanks thank helpful fast fixed works "
    "working perfect pleased glad wonderful amazing resolved".split()
)
_NEGATIVE = frozenset(
    "bad terrible awful angry hate hated slow broken refund useless worst wrong disappointed "
    "annoyed frustrated late missing crash crashes fails failed".split()
)
_NEGATIONS = frozenset({"not", "no", "never"})
_WORD = re.compile(r"[a-z']+")


def score(text: str) -> tuple[float, int]:
    """The text's score in ``[-1, 1]`` and how many lexicon words it matched."""
    positive = negative = 0
    negated = False
    for word in _WORD.findall(text.lower()):
        if word in _NEGATIONS or word.endswith("n't"):
            negated = True
            continue
        if word in _POSITIVE or word in _NEGATIVE:
            if (word in _POSITIVE) != negated:
                positive += 1
            else:
                negative += 1
        negated = False
    matched = positive + negative
    return ((positive - negative) / matched if matched else 0.0), matched


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        if self.path != "/v1/score":
            self._answer(404, {"error": f"no such endpoint {self.path}"})
            return
        size = int(self.headers.get("Content-Length") or 0)
        if size > MAX_BODY_BYTES:
            self._answer(413, {"error": f"a body has at most {MAX_BODY_BYTES} bytes"})
            return
        try:
            body = json.loads(self.rfile.read(size))
        except ValueError:
            self._answer(400, {"error": "the body is not JSON"})
            return
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str):
            self._answer(400, {"error": "give the text to score as `text`"})
            return
        value, matched = score(text)
        self._answer(200, {"score": value, "matched": matched})

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: texts are the users', and a request line per score is noise."""


class SentimentService:
    """The service on a thread of this process: ``with SentimentService() as service: ...``.

    Args:
        host: The address to listen on.
        port: The port (0: any free one; ``url`` says which).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = ThreadingHTTPServer((host, port), _Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        """The base URL to give the kind (``BATON_SENTIMENT_URL``)."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> SentimentService:
        """Serve in the background."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and free the port."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def __enter__(self) -> SentimentService:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def main(argv: list[str] | None = None) -> None:
    """``baton-sentiment-service [--host H] [--port P]``: serve until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer((args.host, args.port), _Handler)
    print(f"scoring on http://{args.host}:{args.port}/v1/score", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
