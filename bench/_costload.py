"""T9's two workflows and their model catalog. Pure: YAML text from constants.

Both workflows have one ``llm`` step, ``solve``, with the same system message, the question
as the prompt and the same output schema (``{"answer": integer}``); the run's output is the
step's JSON.

- ``bench-cost-strong`` (the baseline) always calls ``strong``.
- ``bench-cost-routed`` calls ``strong`` when the task is labelled hard
  (``routes: [{when: "input.difficulty == 'hard'", model: strong}]``) and ``fast``
  otherwise, with ``cascade: [strong]``: a fast answer that misses the output schema is
  asked again of ``strong``. Its worker keeps the response cache on.

The routes point at the bench's loopback model server (``bench._chatserver``); each arm has
its own path under it, so the server can bill the two apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import yaml

from bench._questions import FAST_MODEL, STRONG_MODEL

__all__ = [
    "BASELINE_WORKFLOW",
    "OUTPUT_SCHEMA",
    "PRICES",
    "ROUTED_WORKFLOW",
    "STEP",
    "SYSTEM",
    "RoutePrice",
    "baseline_workflow_yaml",
    "cost_models_yaml",
    "routed_workflow_yaml",
]

BASELINE_WORKFLOW = "bench-cost-strong"
ROUTED_WORKFLOW = "bench-cost-routed"
STEP = "solve"

SYSTEM = (
    "You are a careful arithmetic assistant. Work the question out step by step, then reply "
    "with exactly one JSON object and nothing else: a short `working` string that shows "
    "the intermediate results, and the final `answer` as an integer. Do not round, do not "
    "estimate, and do not add any explanation outside the JSON object."
)

OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["answer"],
    "properties": {"answer": {"type": "integer"}, "working": {"type": "string"}},
}


@dataclass(frozen=True)
class RoutePrice:
    """A route of the catalog: the provider's model id and its prices per million tokens."""

    model: str
    input_usd_per_mtok: Decimal
    output_usd_per_mtok: Decimal

    def cost(self, input_tokens: int, output_tokens: int) -> Decimal:
        """What a call with these token counts costs, exactly."""
        return (
            input_tokens * self.input_usd_per_mtok + output_tokens * self.output_usd_per_mtok
        ) / Decimal(1_000_000)


#: The two routes, by name: list prices of a frontier model and of a small one.
PRICES: dict[str, RoutePrice] = {
    "strong": RoutePrice(STRONG_MODEL, Decimal("3"), Decimal("15")),
    "fast": RoutePrice(FAST_MODEL, Decimal("0.15"), Decimal("0.6")),
}


def cost_models_yaml(base_url: str) -> str:
    """The model catalog: both routes on the OpenAI-compatible server at ``base_url``."""
    routes = {
        name: {
            "provider": "openai",
            "model": price.model,
            "base_url": base_url,
            "api_key_env": None,
            "input_usd_per_mtok": str(price.input_usd_per_mtok),
            "output_usd_per_mtok": str(price.output_usd_per_mtok),
            "timeout_s": 30,
        }
        for name, price in PRICES.items()
    }
    return yaml.safe_dump({"routes": routes}, sort_keys=False, width=1 << 16)


def _workflow(name: str, description: str, step: dict[str, Any]) -> str:
    spec = {
        "workflow": name,
        "version": 1,
        "description": description,
        "input": {
            "type": "object",
            "required": ["question", "difficulty"],
            "properties": {
                "question": {"type": "string"},
                "difficulty": {"type": "string", "enum": ["easy", "hard"]},
            },
        },
        "steps": {
            STEP: {
                "kind": "llm",
                **step,
                "system": SYSTEM,
                "prompt": "{{ input.question }}",
                "output_schema": OUTPUT_SCHEMA,
            }
        },
        "output": f"{{{{ steps.{STEP}.output }}}}",
    }
    return yaml.safe_dump(spec, sort_keys=False, width=1 << 16)


def baseline_workflow_yaml() -> str:
    """The baseline: every question to ``strong``."""
    return _workflow(
        BASELINE_WORKFLOW,
        "baton bench T9 baseline: every question to the strong model.",
        {"model": "strong"},
    )


def routed_workflow_yaml() -> str:
    """Routed by the label, with a cascade to ``strong`` for answers that miss the schema."""
    return _workflow(
        ROUTED_WORKFLOW,
        "baton bench T9: hard-labelled questions to the strong model, the rest to the fast "
        "one; a fast answer that misses the output schema cascades to the strong model.",
        {
            "model": "fast",
            "routes": [{"when": "input.difficulty == 'hard'", "model": "strong"}],
            "cascade": ["strong"],
        },
    )
