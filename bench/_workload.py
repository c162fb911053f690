"""The workload: a five-step linear workflow on a zero-latency scripted model, 1 KB payloads.

``draft`` (llm) -> ``shape`` (transform) -> ``review`` (llm) -> ``package`` (transform) ->
``check`` (validate). The task input, both model answers and both transform outputs are
about 1 KB each; the validate step checks the packaged text and passes it on as the output.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import yaml

from topics import TaskSubmitted

__all__ = [
    "EVENTS_DEFINITION",
    "EVENTS_PER_RUN",
    "PAYLOAD_BYTES",
    "ROUTE",
    "STEPS",
    "WORKFLOW_NAME",
    "models_yaml",
    "payload",
    "task",
    "workflow_yaml",
    "write_files",
]

WORKFLOW_NAME = "bench-linear5"
ROUTE = "zero"
PAYLOAD_BYTES = 1024

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


def models_yaml(latency_ms: float = 0.0, latency_sigma: float = 0.0) -> str:
    """The model catalog: one scripted route answering ~1 KB, after ``latency_ms``."""
    route: dict[str, object] = {
        "provider": "scripted",
        "model": "bench-zero",
        "script": [{"reply": payload(PAYLOAD_BYTES, seed=3)}],
    }
    if latency_ms:
        route["latency_ms"] = latency_ms
        route["latency_sigma"] = latency_sigma
    return yaml.safe_dump({"routes": {ROUTE: route}}, sort_keys=False, width=1 << 16)


def workflow_yaml() -> str:
    """The five-step workflow."""
    spec = {
        "workflow": WORKFLOW_NAME,
        "version": 1,
        "description": "baton bench: five steps in a line, zero-latency model, 1 KB payloads.",
        "input": {
            "type": "object",
            "required": ["text"],
            "properties": {"text": {"type": "string"}},
        },
        "steps": {
            "draft": {"kind": "llm", "model": ROUTE, "prompt": "{{ input.text }}"},
            "shape": {
                "kind": "transform",
                "after": ["draft"],
                "output": {"text": "{{ steps.draft.output }}", "stage": "shaped"},
            },
            "review": {
                "kind": "llm",
                "after": ["shape"],
                "model": ROUTE,
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


def write_files(directory: Path) -> tuple[Path, Path]:
    """Write ``workflow.yaml`` and ``models.yaml`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    workflow = directory / "workflow.yaml"
    models = directory / "models.yaml"
    workflow.write_text(workflow_yaml(), encoding="utf-8")
    models.write_text(models_yaml(), encoding="utf-8")
    return workflow, models


def task(run_id: str, text: str) -> TaskSubmitted:
    """A task for one run of the workflow."""
    return TaskSubmitted(
        task_id=run_id,
        workflow=WORKFLOW_NAME,
        input={"text": text},
        submitted_at=datetime.now(UTC),
    )
