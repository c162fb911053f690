"""The processors a worker runs, built from its configuration."""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from processors._agent import AgentProcessor
from processors._breaker import Breakers
from processors._cache import ResponseCache
from processors._catalog import ModelCatalog
from processors._kinds import InstalledKind, KindSetup
from processors._llm import LlmProcessor
from processors._processor import Processor
from processors._retrieve import RetrieveProcessor
from processors._tool import ToolProcessor
from processors._tools import ToolRegistry, ToolsConfig
from processors._transform import TransformProcessor
from processors._validate import ValidateProcessor

__all__ = ["build_processors"]


def build_processors(
    catalog: ModelCatalog,
    http_client: httpx.AsyncClient,
    environ: Mapping[str, str],
    tools: ToolRegistry | None = None,
    cache: ResponseCache | None = None,
    custom: Mapping[str, InstalledKind] | None = None,
) -> dict[str, Processor]:
    """One processor per step kind: the built-in ones, and the custom kinds given.

    Without a tool registry, ``tool`` and ``retrieve`` steps still run, and fail with
    ``UnknownTool`` / ``UnknownSource``: a mistake is reported, never left waiting.

    Args:
        catalog: The model catalog for llm and agent steps.
        http_client: The shared HTTP client for providers and tools (it must not retry).
        environ: Where API keys and tool secrets are read, e.g. ``os.environ``.
        tools: The tool registry (``tools.yaml``), if the worker has one.
        cache: The response cache llm steps and agent turns share, if the worker has one.
        custom: The custom kinds to run too (``installed_kinds()`` gives those installed).
    """
    breakers = Breakers()  # one breaker per provider, whichever step kind calls it
    processors: list[Processor] = [
        LlmProcessor(catalog, http_client, environ, breakers=breakers, cache=cache),
        AgentProcessor(catalog, http_client, environ, breakers=breakers, cache=cache),
        TransformProcessor(),
        ValidateProcessor(),
    ]
    registry = tools if tools is not None else ToolRegistry(ToolsConfig())
    processors.append(ToolProcessor(registry, http_client, environ))
    processors.append(RetrieveProcessor(registry.sources, http_client, environ))
    setup = KindSetup(http_client=http_client, environ=environ)
    processors += [kind.build(setup) for kind in (custom or {}).values()]
    return {p.kind: p for p in processors}
