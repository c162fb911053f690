"""The HTTP API every coordinator worker serves.

- ``POST /v1/tasks``: submit a task (the JSON form of TaskSubmitted; ``task_id`` optional).
- ``GET /v1/runs/{run_id}``: a run's committed state. Any worker answers: one that does not
  own the run forwards the request to the owner.
- ``GET /healthz``: liveness, and which partitions this worker owns.

Errors are JSON ``{"error": "..."}`` with a precise status.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import faust
import faust.web
import httpx
import orjson
from faust.exceptions import ConsumerNotStarted
from pydantic import ValidationError

from streams.coordinator import CoordinatorRuntime, RunState
from topics import TaskSubmitted, describe_validation_error, partition_for

__all__ = ["install_api", "run_view"]

_MAX_BODY = 1_000_000
_FORWARDED = "X-Baton-Forwarded"


def run_view(state: RunState) -> dict[str, Any]:
    """The JSON view of a run that ``GET /v1/runs/{id}`` returns."""
    view: dict[str, Any] = state.model_dump(mode="json")
    view["status"] = state.status.value if state.status else "running"
    view["steps"] = [
        {"step": name, **step.model_dump(mode="json")} for name, step in state.steps.items()
    ]
    return view


def _processing(app: faust.App) -> list[str]:
    """The step topics this worker's processors consume (none when it runs no processors)."""
    if app.producer_only:
        return []
    try:
        return sorted({tp.topic for tp in app.consumer.assignment()})
    except ConsumerNotStarted:
        return []


def install_api(app: faust.App, runtime: CoordinatorRuntime, http: httpx.AsyncClient) -> None:
    """Add the API's pages to the worker's Faust app."""

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        return web.json(
            {
                "ok": True,
                "events_processed": runtime.events_processed,
                "partitions": sorted(runtime.ready),
                "processing": _processing(app),
            }
        )

    @app.page("/v1/runs/{run_id}")
    async def get_run(web: Any, request: Any, run_id: str) -> Any:
        owned, owner = runtime.owner_of(run_id)
        if owned:
            state = runtime.state_of(run_id)
            if state is None:
                return web.json({"error": f"no run {run_id!r}"}, status=404)
            return web.json(run_view(state))
        if owner is None or owner == runtime.url or request.headers.get(_FORWARDED):
            partition = partition_for(run_id, runtime.catalog.partitions)
            return web.json(
                {"error": f"partition {partition} of run {run_id!r} is being taken over; retry"},
                status=503,
            )
        try:
            response = await http.get(
                f"{owner}/v1/runs/{run_id}", headers={_FORWARDED: runtime.url}, timeout=10
            )
        except httpx.HTTPError as exc:
            return web.json({"error": f"the run's owner {owner} did not answer: {exc}"}, status=502)
        return web.bytes(
            response.content, content_type="application/json", status=response.status_code
        )

    @app.page("/v1/tasks")
    class Tasks(faust.web.View):
        """Submit a task."""

        async def post(self, request: Any) -> Any:
            body = await request.read()
            if len(body) > _MAX_BODY:
                return self.json({"error": f"body over {_MAX_BODY} bytes"}, status=413)
            try:
                fields = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                return self.json({"error": f"body is not JSON: {exc}"}, status=400)
            if not isinstance(fields, dict):
                return self.json({"error": "body must be a JSON object"}, status=400)
            fields.setdefault("task_id", str(uuid.uuid4()))
            fields.setdefault("submitted_at", datetime.now(UTC).isoformat())
            try:
                task = TaskSubmitted.model_validate(fields)
            except ValidationError as exc:
                return self.json({"error": describe_validation_error(exc)}, status=422)
            catalog = runtime.catalog
            await runtime.plain.send_and_wait(
                catalog.tasks.name,
                runtime.codec.encode(task),
                key=task.task_id.encode(),
                partition=partition_for(task.task_id, catalog.tasks.partitions),
            )
            return self.json(
                {"run_id": task.task_id, "status_url": f"/v1/runs/{task.task_id}"}, status=202
            )
