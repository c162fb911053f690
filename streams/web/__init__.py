"""The approval inbox and the runs view: one plain page, a script and a style sheet, no build.

Every coordinator worker serves it: ``GET /`` is the page, ``GET /static/<name>`` the rest.
The page signs reviewers in with their bearer token (kept in ``sessionStorage``), lists the
requests they may decide from ``GET /v1/approvals`` every two seconds, and posts their
decisions to ``POST /v1/approvals/{id}/decision``. Its runs view searches ``GET /v1/runs``
and follows a run's timeline from ``GET /v1/runs/{id}`` and ``GET /v1/runs/{id}/events``.
It loads nothing from elsewhere.
"""

from __future__ import annotations

from importlib.resources import files

__all__ = ["CONTENT_TYPES", "read_assets"]

#: The inbox's files and how each is served.
CONTENT_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}


def read_assets() -> dict[str, tuple[bytes, str]]:
    """Every file of the inbox, by name: its bytes and its content type."""
    root = files(__name__)
    return {name: (root.joinpath(name).read_bytes(), kind) for name, kind in CONTENT_TYPES.items()}
