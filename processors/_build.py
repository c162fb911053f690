"""The processors a worker runs, built from its configuration."""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from processors._catalog import ModelCatalog
from processors._llm import LlmProcessor
from processors._processor import Processor
from processors._transform import TransformProcessor
from processors._validate import ValidateProcessor
from topics import StepKind

__all__ = ["build_processors"]


def build_processors(
    catalog: ModelCatalog, http_client: httpx.AsyncClient, environ: Mapping[str, str]
) -> dict[StepKind, Processor]:
    """One processor per step kind this package implements (llm, transform, validate).

    Args:
        catalog: The model catalog for llm steps.
        http_client: The shared HTTP client for model providers (it must not retry).
        environ: Where API keys are read, e.g. ``os.environ``.
    """
    processors: list[Processor] = [
        LlmProcessor(catalog, http_client, environ),
        TransformProcessor(),
        ValidateProcessor(),
    ]
    return {p.kind: p for p in processors}
