"""The workload: a five-step linear workflow on a zero-latency scripted model, 1 KB payloads.

``draft`` (llm) -> ``shape`` (transform) -> ``review`` (llm) -> ``package`` (transform) ->
``check`` (validate). The task input, both model answers and both transform outputs are
about 1 KB each; the validate step checks the packaged text and passes it on as the output.

Variants of it for the figures that need another model or a longer chain, all deployed to
every baton worker of the suite and served by one model catalog (``models_yaml``):

- ``bench-linear5`` on route ``zero`` (no latency): B1/B2's twin, T1-T4, T8, T11, T12;
- ``bench-linear5-tail`` on route ``tail800`` (median 800 ms, log-normal tail): T5;
- ``bench-linear5-fixed500`` on route ``fixed500`` (500 ms, no tail): T6;
- ``bench-linear5-hold``: ``bench-linear5`` with a 30-minute ``draft`` timeout, so runs
  parked at ``draft`` (T8) are not dispatched again while they wait;
- ``bench-linear200``: 200 steps in a line, ``llm`` and ``transform`` in turn, on ``zero`` (T10).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from topics import TaskSubmitted

__all__ = [
    "EVENTS_DEFINITION",
    "EVENTS_PER_RUN",
    "FIXED_ROUTE",
    "HOLD_WORKFLOW",
    "LONG_STEPS",
    "LONG_WORKFLOW",
    "PAYLOAD_BYTES",
    "ROUTE",
    "STEPS",
    "TAIL_ROUTE",
    "TAIL_WORKFLOW",
    "FIXED_WORKFLOW",
    "WORKFLOW_NAME",
    "ROUTE_LATENCIES",
    "RouteLatency",
    "bench_workflows",
    "long_steps",
    "long_workflow_yaml",
    "models_yaml",
    "payload",
    "task",
    "workflow_yaml",
    "write_files",
]

WORKFLOW_NAME = "bench-linear5"
ROUTE = "zero"
PAYLOAD_BYTES = 1024

#: T5's route and workflow: a model with a median latency of 800 ms and a log-normal tail.
TAIL_ROUTE = "tail800"
TAIL_WORKFLOW = "bench-linear5-tail"
#: T6's route and workflow: a model that always takes 500 ms.
FIXED_ROUTE = "fixed500"
FIXED_WORKFLOW = "bench-linear5-fixed500"
#: T8's workflow: runs wait at ``draft`` (its processor absent) without being re-dispatched.
HOLD_WORKFLOW = "bench-linear5-hold"
HOLD_TIMEOUT = "30m"
#: T10's workflow: one long line of steps.
LONG_WORKFLOW = "bench-linear200"
LONG_STEPS = 200

#: The steps in order, with their kinds.
STEPS: tuple[tuple[str, str], ...] = (
    ("draft", "llm"),
    ("shape", "transform"),
    ("review", "llm"),
    ("package", "transform"),
    ("check", "validate"),
)

#: Records a stage consumes on one run's path: the task and each step's request and result.
EVENTS_PER_RUN = 1 + 2 * len(STEPS)

EVENTS_DEFINITION = (
    "An event is a record consumed by a stage on a run's path: the coordinator consumes the "
    "task and each step's result (1 + 5), the processors consume each step's request (5); "
    "11 per run, each answered by one record produced on the path (5 requests, 5 results, "
    "1 run result). baton's other writes (12 run events and 6 run-state changelog records "
    "per run) are its own cost and are not counted. The raw pipe B1 moves each of its "
    "records through the same 11 consume->produce hops over the same partitions."
)

_WORDS = (
    "orchestration",
    "kafka",
    "partition",
    "coordinator",
    "transaction",
    "workflow",
    "processor",
    "latency",
    "throughput",
    "baton",
)


def payload(size: int, seed: int = 0) -> str:
    """A readable ASCII text of exactly ``size`` bytes (no template braces)."""
    words: list[str] = []
    length = 0
    i = seed
    while length < size:
        word = _WORDS[i % len(_WORDS)]
        words.append(word)
        length += len(word) + 1
        i += 1
    return " ".join(words)[:size]


@dataclass(frozen=True)
class RouteLatency:
    """A scripted route's simulated latency: median ``latency_ms``, log-normal ``sigma``."""

    latency_ms: float
    sigma: float

    @property
    def mean_ms(self) -> float:
        """The mean of the log-normal draw: ``median * exp(sigma^2 / 2)``."""
        return self.latency_ms * math.exp(self.sigma**2 / 2)


#: The routes of the suite's model catalog besides ``zero``.
ROUTE_LATENCIES: dict[str, RouteLatency] = {
    TAIL_ROUTE: RouteLatency(800.0, 0.5),
    FIXED_ROUTE: RouteLatency(500.0, 0.0),
}


def _route(name: str, latency_ms: float, sigma: float) -> dict[str, object]:
    route: dict[str, object] = {
        "provider": "scripted",
        "model": f"bench-{name}",
        "script": [{"reply": payload(PAYLOAD_BYTES, seed=3)}],
    }
    if latency_ms:
        route["latency_ms"] = latency_ms
        route["latency_sigma"] = sigma
    return route


def models_yaml(latency_ms: float = 0.0, latency_sigma: float = 0.0) -> str:
    """The model catalog: scripted routes answering ~1 KB.

    ``zero`` answers after ``latency_ms`` (0 by default); ``tail800`` and ``fixed500``
    simulate the latencies of ``ROUTE_LATENCIES``. All are free, so no answer is cached.
    """
    routes = {ROUTE: _route(ROUTE, latency_ms, latency_sigma)}
    for name, latency in ROUTE_LATENCIES.items():
        routes[name] = _route(name, latency.latency_ms, latency.sigma)
    return yaml.safe_dump({"routes": routes}, sort_keys=False, width=1 << 16)


def workflow_yaml(
    name: str = WORKFLOW_NAME, route: str = ROUTE, draft_timeout: str | None = None
) -> str:
    """The five-step workflow (or a variant: another name, model route, ``draft`` timeout)."""
    draft: dict[str, Any] = {"kind": "llm", "model": route, "prompt": "{{ input.text }}"}
    if draft_timeout is not None:
        draft["timeout"] = draft_timeout
    spec = {
        "workflow": name,
        "version": 1,
        "description": f"baton bench: five steps in a line, model route {route}, 1 KB payloads.",
        "input": {
            "type": "object",
            "required": ["text"],
            "properties": {"text": {"type": "string"}},
        },
        "steps": {
            "draft": draft,
            "shape": {
                "kind": "transform",
                "after": ["draft"],
                "output": {"text": "{{ steps.draft.output }}", "stage": "shaped"},
            },
            "review": {
                "kind": "llm",
                "after": ["shape"],
                "model": route,
                "prompt": "{{ steps.shape.output.text }}",
            },
            "package": {
                "kind": "transform",
                "after": ["review"],
                "output": {"text": "{{ steps.review.output }}", "stage": "packaged"},
            },
            "check": {
                "kind": "validate",
                "after": ["package"],
                "value": "{{ steps.package.output.text }}",
                "schema": {"type": "string", "minLength": 1, "maxLength": 4096},
                "rules": [
                    {"check": "'password' not in value", "message": "no passwords in replies"}
                ],
            },
        },
        "output": "{{ steps.check.output }}",
    }
    return yaml.safe_dump(spec, sort_keys=False, width=1 << 16)


def long_steps(count: int = LONG_STEPS) -> list[tuple[str, str]]:
    """T10's steps in order: ``s001`` (llm), ``s002`` (transform), ... in turn."""
    return [(f"s{i:03d}", "llm" if i % 2 else "transform") for i in range(1, count + 1)]


def long_workflow_yaml(count: int = LONG_STEPS) -> str:
    """T10's workflow: ``count`` steps in a line, each passing a ~1 KB text to the next.

    An ``llm`` step (route ``zero``) is prompted with the text before it and answers 1 KB;
    a ``transform`` step wraps the answer before it (``{text, n}``).
    """
    steps: dict[str, dict[str, Any]] = {}
    previous: str | None = None
    for index, (name, kind) in enumerate(long_steps(count), start=1):
        if kind == "llm":
            prompt = (
                "{{ input.text }}"
                if previous is None
                else f"{{{{ steps.{previous}.output.text }}}}"
            )
            step: dict[str, Any] = {"kind": "llm", "model": ROUTE, "prompt": prompt}
        else:
            step = {
                "kind": "transform",
                "output": {"text": f"{{{{ steps.{previous}.output }}}}", "n": index},
            }
        if previous is not None:
            step["after"] = [previous]
        steps[name] = step
        previous = name
    spec = {
        "workflow": LONG_WORKFLOW,
        "version": 1,
        "description": f"baton bench T10: {count} steps in a line, zero-latency model.",
        "input": {
            "type": "object",
            "required": ["text"],
            "properties": {"text": {"type": "string"}},
        },
        "steps": steps,
        "output": f"{{{{ steps.{previous}.output }}}}",
    }
    return yaml.safe_dump(spec, sort_keys=False, width=1 << 16)


def bench_workflows() -> list[str]:
    """Every workflow of the suite's baton workers, as YAML: each worker gets all of them."""
    return [
        workflow_yaml(),
        workflow_yaml(TAIL_WORKFLOW, TAIL_ROUTE),
        workflow_yaml(FIXED_WORKFLOW, FIXED_ROUTE),
        workflow_yaml(HOLD_WORKFLOW, draft_timeout=HOLD_TIMEOUT),
        long_workflow_yaml(),
    ]


def write_files(directory: Path) -> tuple[Path, Path]:
    """Write ``workflow.yaml`` and ``models.yaml`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    workflow = directory / "workflow.yaml"
    models = directory / "models.yaml"
    workflow.write_text(workflow_yaml(), encoding="utf-8")
    models.write_text(models_yaml(), encoding="utf-8")
    return workflow, models


def task(run_id: str, text: str, workflow: str = WORKFLOW_NAME) -> TaskSubmitted:
    """A task for one run of a workflow of the suite (the five-step one by default)."""
    return TaskSubmitted(
        task_id=run_id,
        workflow=workflow,
        input={"text": text},
        submitted_at=datetime.now(UTC),
    )
