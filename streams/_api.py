"""The HTTP API every coordinator worker serves, and the reviewers' approval inbox.

- ``POST /v1/tasks``: submit a task (the JSON form of TaskSubmitted; ``task_id`` optional)
  for a tenant the caller acts for (a task naming none gets the caller's only tenant).
- ``GET /v1/runs``: the runs of the caller's tenants that every coordinator remembers (in
  flight, and finished within the run retention), newest first, filtered and paged with a
  cursor (``streams._runs``): this worker asks the others and merges their pages.
- ``GET /v1/runs/{run_id}``: a run's committed state, if the caller acts for its tenant. Any
  worker answers: one that does not own the run asks the owner.
- ``GET /v1/runs/{run_id}/events``: the run's timeline from ``run-events``, paged by offset
  (``streams._timeline``); the owner reads it.
- ``GET /v1/runs/{run_id}/stream``: the run's streamed model text as Server-Sent Events
  (``streams._live``), from its owner (another worker relays it); ``Last-Event-ID`` resumes
  after the chunk it names.
- ``GET /v1/approvals``: the open approval requests the caller may decide (and has not yet),
  from every coordinator: this worker asks the others and merges their answers.
- ``GET /v1/approvals/{approval_id}``: one open request, from its run's owner.
- ``POST /v1/approvals/{approval_id}/decision``: approve, reject, edit (the gated tool
  call's ``args``) or respond (the step's ``output``). The worker signs the
  decision with its key, naming the request's digest, and publishes it to
  ``approvals.decided``; the run's coordinator weighs it.
- ``GET /``, ``GET /static/{name}``: the approval inbox (``streams.web``), open.
- ``/v1/control/...``: operators pause and resume tenants and workflows and change caps
  (``streams._control_api``).
- ``GET /healthz``: liveness, and which partitions this worker owns (no run data), open.
- ``GET /metrics``: the worker's Prometheus metrics, for a principal that acts for every
  tenant (they hold every tenant's spend): 401 without a valid token, 403 for one of a
  principal limited to some tenants.

Every ``/v1/`` endpoint needs ``Authorization: Bearer <token>``, a principal's token from the
access file (401 without one or with one nobody holds), and answers 403 for a run, workflow
or request of a tenant the principal does not act for. Workers call each other with their
own credential, never the caller's token (``streams._peers``). The approval endpoints'
checks exist to give precise errors; the coordinator checks every decision again and is the
authority. Approval ids are ``<run id>/<step>/<n>``: give them percent-encoded (``%2F``) or
as they are.

Errors are JSON ``{"error": "..."}`` with a precise status.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import faust
import faust.web
import httpx
import orjson
from aiohttp import web as aioweb
from aiokafka.errors import KafkaError
from faust.web.exceptions import WebError
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from streams import web as inbox
from streams._access import ALL_TENANTS, DEFAULT_TENANT, Access, Identity
from streams._control_api import install_control_api
from streams._live import RunStreamReader
from streams._metrics import CONTENT_TYPE, Metrics
from streams._peers import (
    FORWARDED_HEADER,
    SIGNATURE_HEADER,
    CallRefused,
    call_headers,
    verify_call,
)
from streams._runs import QueryError, RunLister, RunQuery, merge_pages
from streams._timeline import MAX_EVENTS, TimelineReader
from streams.coordinator import CoordinatorRuntime, RunState
from streams.coordinator._approvals import answer_problem, approval_request
from topics import (
    ApprovalRequested,
    ApprovalVerdict,
    BatonError,
    TaskSubmitted,
    describe_validation_error,
    partition_for,
    sign_decision,
)

__all__ = ["approval_view", "install_api", "install_processor_api", "run_view"]

log = logging.getLogger(__name__)

_MAX_BODY = 1_000_000
_MAX_REASON = 2000
#: How long ``GET /v1/approvals`` waits for another coordinator before listing without it.
_PEER_TIMEOUT = 3.0
_OWNER_TIMEOUT = 10.0
_SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # proxies that buffer would hold the text back
}
_PAGE_HEADERS = {
    # The inbox loads nothing from anywhere else and runs no inline script.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def run_view(state: RunState) -> dict[str, Any]:
    """The JSON view of a run that ``GET /v1/runs/{id}`` returns."""
    view: dict[str, Any] = state.model_dump(mode="json")
    view["status"] = state.status.value if state.status else "running"
    view["steps"] = [
        {"step": name, **step.model_dump(mode="json")} for name, step in state.steps.items()
    ]
    return view


def approval_view(request: ApprovalRequested, state: RunState | None) -> dict[str, Any]:
    """The JSON view of an open approval request: as it was asked, and the votes so far."""
    step = state.steps.get(request.step) if state is not None else None
    approval = step.approval if step is not None else None
    current = approval is not None and approval.approval_id == request.approval_id
    if current and state is not None:
        request = approval_request(state, request.step) or request
    view: dict[str, Any] = request.model_dump(mode="json")
    view["votes"] = (
        [v.model_dump(mode="json") for v in approval.votes] if approval and current else []
    )
    return view


class _Refused(WebError):
    """A request answered with an error: a status, a message, and maybe headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, code=status)
        self.headers = headers or {}


class _View(faust.web.View):
    """A view whose refusals are JSON ``{"error": ...}`` with their status and headers."""

    async def on_request_error(self, request: Any, exc: WebError) -> Any:
        return self.json(
            {"error": exc.detail}, status=exc.code, headers=getattr(exc, "headers", None)
        )


class _DecisionBody(BaseModel):
    """The body of ``POST /v1/approvals/{id}/decision``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    verdict: ApprovalVerdict
    reason: str | None = Field(default=None, max_length=_MAX_REASON)
    request_digest: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="The digest of the request as the reviewer saw it (optional).",
    )
    args: dict[str, JsonValue] | None = Field(
        default=None, description="edit: the tool call's new arguments (a JSON object)."
    )
    output: JsonValue = Field(
        default=None, description="respond: the step's output, instead of running it."
    )

    @property
    def payload(self) -> str | None:
        """The JSON text the decision carries and its signature covers."""
        if self.verdict == ApprovalVerdict.edit and self.args is not None:
            return orjson.dumps(self.args).decode()
        if self.verdict == ApprovalVerdict.respond and "output" in self.model_fields_set:
            return orjson.dumps(self.output).decode()
        return None


@dataclass(frozen=True)
class _Caller:
    """Who a request is from: the principal, and the worker that forwarded it, if one did."""

    identity: Identity
    via: str | None = None

    @property
    def forwarded(self) -> bool:
        return self.via is not None


def _run_of(approval_id: str) -> str | None:
    """The run an approval id (``<run>/<step>/<n>``) belongs to; ``None`` if it is not one."""
    parts = approval_id.split("/")
    if len(parts) != 3 or not all(parts) or not parts[2].isdigit():
        return None
    return parts[0]


def _deadline_key(item: dict[str, Any]) -> tuple[datetime, str]:
    try:
        deadline = datetime.fromisoformat(str(item.get("deadline")))
    except ValueError:
        deadline = datetime.max.replace(tzinfo=UTC)
    return deadline, str(item.get("approval_id"))


def _cause(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def _not_for(identity: Identity, tenant: str) -> _Refused:
    return _Refused(403, f"{identity.principal} may not act for tenant {tenant!r}")


def _bearer(access: Access, request: Any) -> Identity:
    """The principal whose bearer token a request carries.

    Raises:
        _Refused: 401, without a token or with one nobody holds.
    """
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _Refused(
            401,
            "authentication needed: send Authorization: Bearer <token>",
            {"WWW-Authenticate": 'Bearer realm="baton"'},
        )
    identity = access.authenticate(token.strip())
    if identity is None:
        raise _Refused(
            401,
            "the bearer token is not valid",
            {"WWW-Authenticate": 'Bearer realm="baton", error="invalid_token"'},
        )
    return identity


class _Endpoints:
    """What the ``/v1/`` endpoints do, apart from the HTTP plumbing.

    Args:
        runtime: The coordinator this worker runs (its runs, open requests, access, keys).
        http: The client that asks the other coordinators.
    """

    def __init__(self, runtime: CoordinatorRuntime, http: httpx.AsyncClient) -> None:
        self.runtime = runtime
        self.http = http
        self.lister = RunLister()
        self.timeline = TimelineReader(runtime.bootstrap, runtime.catalog, runtime.codec)
        # Decisions this worker published and the coordinator may not have counted yet, by
        # approval id: a second POST from the same reviewer gets its 409 at once.
        self._sent: dict[str, set[str]] = {}

    # -- who is calling ------------------------------------------------------------------------

    async def identify(self, request: Any) -> _Caller:
        """The principal behind a request: its bearer token, or a worker's signed call.

        Raises:
            _Refused: 401, without a token, with one nobody holds, or for a worker call that
                does not verify.
        """
        access = self.runtime.access
        if request.headers.get(SIGNATURE_HEADER):
            body = await request.read()
            try:
                caller = verify_call(
                    access.worker_key,
                    method=request.method,
                    path=request.raw_path,
                    headers=request.headers,
                    body=body,
                    now=time.time(),
                )
            except CallRefused as exc:
                raise _Refused(
                    401, str(exc), {"WWW-Authenticate": 'Bearer realm="baton"'}
                ) from None
            identity = access.identity(caller)
            if identity is None:
                raise _Refused(401, f"a worker call for {caller}, whom this worker does not know")
            return _Caller(identity, via=request.headers.get(FORWARDED_HEADER) or "a worker")
        return _Caller(_bearer(access, request))

    # -- tasks and runs ------------------------------------------------------------------------

    def task(self, body: bytes, identity: Identity) -> TaskSubmitted:
        """The task a ``POST /v1/tasks`` body holds, if the caller may submit it.

        Raises:
            _Refused: 413, 400 (not a JSON object), 422 (naming the bad field), 403 (a tenant
                the caller does not act for, or a workflow its tenant may not run).
        """
        fields = _json_object(body, "body must be a JSON object")
        fields.setdefault("task_id", str(uuid.uuid4()))
        fields.setdefault("submitted_at", datetime.now(UTC).isoformat())
        if "tenant" not in fields:
            only = identity.only_tenant
            if only is None and not identity.acts_for(DEFAULT_TENANT):
                raise _Refused(
                    422,
                    f"tenant: name the tenant; {identity.principal} acts for "
                    f"{', '.join(sorted(identity.tenants))}",
                )
            fields["tenant"] = only or DEFAULT_TENANT
        try:
            task = TaskSubmitted.model_validate(fields)
        except ValidationError as exc:
            raise _Refused(422, describe_validation_error(exc)) from None
        if not identity.acts_for(task.tenant):
            raise _not_for(identity, task.tenant)
        if not self.runtime.policies.may_run(task.tenant, task.workflow):
            raise _Refused(403, f"tenant {task.tenant!r} may not run workflow {task.workflow!r}")
        return task

    def run(self, run_id: str, identity: Identity) -> dict[str, Any]:
        """One of this worker's runs, if the caller acts for its tenant.

        Raises:
            _Refused: 404 (no such run), 403 (another tenant's run).
        """
        return run_view(self._visible(run_id, identity))

    def _visible(self, run_id: str, identity: Identity) -> RunState:
        state = self.runtime.state_of(run_id)
        if state is None:
            raise _Refused(404, f"no run {run_id!r}")
        if not identity.acts_for(state.tenant):
            raise _Refused(
                403,
                f"{identity.principal} may not see run {run_id!r}: it is tenant {state.tenant!r}'s",
            )
        return state

    async def events(self, run_id: str, identity: Identity, params: Any) -> dict[str, Any]:
        """One of this worker's runs' events from ``cursor`` on, if the caller may see it.

        Raises:
            _Refused: 404, 403 (as ``run``), 422 (a bad ``cursor`` or ``limit``).
        """
        cursor, limit = _timeline_params(params)
        state = self._visible(run_id, identity)
        page = await self.timeline.read(state, cursor, limit)
        return {
            "run_id": run_id,
            "status": state.status.value if state.status else "running",
            "seq": state.seq,
            "events": page.events,
            "cursor": str(page.cursor),
            "more": page.more,
        }

    # -- listing runs --------------------------------------------------------------------------

    def query(self, params: Any, identity: Identity) -> RunQuery:
        """The list query a request asks, if the caller may ask it.

        Raises:
            _Refused: 422 (a bad parameter, named), 403 (a tenant the caller does not act for).
        """
        try:
            query = RunQuery.parse({str(k): str(v) for k, v in params.items()})
        except QueryError as exc:
            raise _Refused(422, str(exc)) from None
        if query.tenant is not None and not identity.acts_for(query.tenant):
            raise _not_for(identity, query.tenant)
        return query

    def local_runs(self, query: RunQuery, identity: Identity) -> dict[str, Any]:
        """A page of this worker's runs (the caller's tenants' only)."""
        stores = [s for p, s in list(self.runtime.stores.items()) if p in self.runtime.ready]
        runs, more = self.lister.page(stores, query, identity)
        return {
            "runs": runs,
            "more": more,
            "partitions": sorted(self.runtime.ready),
            "tenants": sorted(identity.tenants),
            "partial": [],
        }

    async def runs_everywhere(self, query: RunQuery, identity: Identity) -> dict[str, Any]:
        """A page of runs from every coordinator; the ones that did not answer named."""
        mine = self.local_runs(query, identity)
        path = "/v1/runs?" + urlencode(query.params(), quote_via=quote, safe="")
        pages = [(mine["runs"], bool(mine["more"]))]

        def take(answer: dict[str, Any]) -> None:
            pages.append((answer["runs"], bool(answer.get("more"))))

        partial = await self._gather(identity, path, "runs", take, "runs")
        runs, cursor = merge_pages(pages, query.limit)
        return {"runs": runs, "cursor": cursor, "tenants": mine["tenants"], "partial": partial}

    # -- reading approvals ---------------------------------------------------------------------

    def _decided_by(self, approval_id: str, view: dict[str, Any]) -> set[str]:
        voted = {str(vote["approver"]) for vote in view["votes"]}
        return voted | self._sent.get(approval_id, set())

    def local(self, identity: Identity) -> dict[str, Any]:
        """This worker's open requests that the caller may decide and has not decided."""
        items = []
        access = self.runtime.access
        for approval_id, request in list(self.runtime.approvals.items()):
            if not identity.acts_for(request.tenant):
                continue
            if not access.allows(request.approvers, identity.principal):
                continue
            view = approval_view(request, self.runtime.state_of(request.run_id))
            if identity.principal not in self._decided_by(approval_id, view):
                items.append(view)
        return {
            "approvals": sorted(items, key=_deadline_key),
            "reviewer": identity.principal,
            "tenants": sorted(identity.tenants),
            "partitions": sorted(self.runtime.ready),
            "partial": [],
        }

    async def everywhere(self, identity: Identity) -> dict[str, Any]:
        """The open requests from every coordinator; the ones that did not answer named."""
        mine = self.local(identity)
        items: dict[str, dict[str, Any]] = {i["approval_id"]: i for i in mine["approvals"]}

        def take(answer: dict[str, Any]) -> None:
            for item in answer["approvals"]:
                items.setdefault(str(item.get("approval_id")), item)

        partial = await self._gather(identity, "/v1/approvals", "approvals", take, "requests")
        return {
            "approvals": sorted(items.values(), key=_deadline_key),
            "reviewer": identity.principal,
            "tenants": mine["tenants"],
            "partial": partial,
        }

    async def _gather(
        self,
        identity: Identity,
        path: str,
        field: str,
        take: Callable[[dict[str, Any]], None],
        what: str,
    ) -> list[dict[str, Any]]:
        """Ask every other coordinator ``path``; ``take`` each answer; name what is missing.

        Args:
            identity: Whom the call is for.
            path: The path, with its query, that asks a coordinator for its own share.
            field: The answer's list.
            take: Takes each answer.
            what: What the missing partitions' share is called (``their <what> are missing``).

        Returns:
            The ``partial`` list: each coordinator that did not answer in time, and the
            partitions nobody serves right now.
        """
        peers = sorted(
            {url for url in self.runtime.assignor.owners.values() if url} - {self.runtime.url}
        )
        answers = await asyncio.gather(*(self._ask(url, identity, path, field) for url in peers))
        accounted = set(self.runtime.ready)
        partial: list[dict[str, Any]] = []
        for url, answer in zip(peers, answers, strict=True):
            if isinstance(answer, str):
                partial.append({"worker": url, "error": answer})
                # Its partitions are missing, and named by naming it.
                accounted.update(p for p, u in self.runtime.assignor.owners.items() if u == url)
                continue
            take(answer)
            accounted.update(answer.get("partitions", []))
        unserved = sorted(set(range(self.runtime.catalog.partitions)) - accounted)
        if unserved:
            partial.append(
                {
                    "partitions": unserved,
                    "error": "no coordinator serves these partitions right now "
                    f"(they are being taken over); their {what} are missing",
                }
            )
        return partial

    def _peer_headers(
        self, identity: Identity, method: str, path: str, body: bytes
    ) -> dict[str, str]:
        """Headers that make a call to another worker, on the caller's behalf.

        Raises:
            _Refused: 503, when this worker has no worker key to sign with.
        """
        key = self.runtime.access.worker_key
        if key is None:
            raise _Refused(
                503,
                "this worker cannot ask the other workers: no `worker_key` in the access file",
            )
        return call_headers(
            key,
            method=method,
            path=path,
            caller=identity.principal,
            sender=self.runtime.url,
            at=int(time.time()),
            body=body,
        )

    async def _ask(
        self, url: str, identity: Identity, path: str, field: str
    ) -> dict[str, Any] | str:
        """Another coordinator's own answer to ``path`` (a list in ``field``), or why not."""
        try:
            headers = self._peer_headers(identity, "GET", path, b"")
        except _Refused as exc:
            return str(exc.detail)
        try:
            response = await self.http.get(f"{url}{path}", headers=headers, timeout=_PEER_TIMEOUT)
        except httpx.HTTPError as exc:
            return f"did not answer: {_cause(exc)}"
        if response.status_code != 200:
            return f"answered {response.status_code}: {response.text[:200]}"
        try:
            body = response.json()
        except ValueError:
            return "answered with something that is not JSON"
        if not isinstance(body, dict) or not isinstance(body.get(field), list):
            return f"answered without a list of {field}"
        return body

    def open_request(self, approval_id: str, identity: Identity) -> dict[str, Any]:
        """One of this worker's open requests, if the caller may decide it.

        Raises:
            _Refused: 404 (no such open request) or 403 (another tenant's request, or not
                one of its approvers).
        """
        request = self.runtime.approvals.get(approval_id)
        if request is None:
            raise _Refused(
                404, f"no open approval request {approval_id!r} (decided, escalated or unknown)"
            )
        if not identity.acts_for(request.tenant):
            raise _not_for(identity, request.tenant)
        if not self.runtime.access.allows(request.approvers, identity.principal):
            raise _Refused(
                403,
                f"{identity.principal} may not decide {approval_id!r}: "
                f"its approvers are {', '.join(request.approvers)}",
            )
        return approval_view(request, self.runtime.state_of(request.run_id))

    # -- routing to the run's owner ------------------------------------------------------------

    def owner(self, caller: _Caller, run_id: str) -> str | None:
        """``None`` when this worker owns the run, else the owner's address.

        Raises:
            _Refused: 503 while nobody serves the run's partition.
        """
        owned, owner = self.runtime.owner_of(run_id)
        if owned:
            return None
        if owner is None or owner == self.runtime.url or caller.forwarded:
            partition = partition_for(run_id, self.runtime.catalog.partitions)
            raise _Refused(
                503, f"partition {partition} of run {run_id!r} is being taken over; retry"
            )
        return owner

    def approval_owner(self, caller: _Caller, approval_id: str) -> str | None:
        """Like ``owner``, for the run an approval id names.

        Raises:
            _Refused: 404 for an id that is not an approval id, and as ``owner``.
        """
        run_id = _run_of(approval_id)
        if run_id is None:
            raise _Refused(404, f"no open approval request {approval_id!r}: not an approval id")
        return self.owner(caller, run_id)

    async def forward(
        self,
        web: Any,
        caller: _Caller,
        owner: str,
        method: str,
        path: str,
        body: bytes = b"",
    ) -> Any:
        """Ask the run's owner, on the caller's behalf, and pass its answer on."""
        headers = self._peer_headers(caller.identity, method, path, body)
        if body:
            headers["Content-Type"] = "application/json"
        try:
            response = await self.http.request(
                method,
                f"{owner}{path}",
                headers=headers,
                content=body or None,
                timeout=_OWNER_TIMEOUT,
            )
        except httpx.HTTPError as exc:
            raise _Refused(502, f"the run's owner {owner} did not answer: {_cause(exc)}") from None
        return web.bytes(
            response.content, content_type="application/json", status=response.status_code
        )

    async def relay_stream(
        self, request: Any, caller: _Caller, owner: str, path: str, last_event_id: str | None
    ) -> aioweb.StreamResponse:
        """Pass the run owner's event stream on, on the caller's behalf, as it comes.

        A stream cut after it began just ends: the client reconnects with ``Last-Event-ID``.

        Raises:
            _Refused: 502 when the owner cannot be reached.
        """
        headers = self._peer_headers(caller.identity, "GET", path, b"")
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        # The owner sends a comment every 15 s: a longer silence is a dead stream.
        timeout = httpx.Timeout(_OWNER_TIMEOUT, read=60.0)
        response: aioweb.StreamResponse | None = None
        try:
            async with self.http.stream(
                "GET", f"{owner}{path}", headers=headers, timeout=timeout
            ) as answer:
                if answer.status_code != 200:
                    body = await answer.aread()
                    return aioweb.Response(
                        body=body[:_MAX_BODY],
                        status=answer.status_code,
                        content_type="application/json",
                    )
                response = aioweb.StreamResponse(headers=_SSE_HEADERS)
                await response.prepare(request)
                async for part in answer.aiter_raw():
                    await response.write(part)
                await response.write_eof()
                return response
        except httpx.HTTPError as exc:
            if response is None:
                raise _Refused(
                    502, f"the run's owner {owner} did not answer: {_cause(exc)}"
                ) from None
            return response
        except ConnectionError:  # the client went away
            return response if response is not None else aioweb.Response(status=499)

    # -- deciding ------------------------------------------------------------------------------

    def signing_key(self) -> tuple[str, bytes]:
        """The key this worker signs decisions with.

        Raises:
            _Refused: 503, when the access file names none for this worker.
        """
        signing = self.runtime.access.signing_key
        if signing is None:
            raise _Refused(503, "this worker has no signing key (`sign_with` in the access file)")
        return signing

    @staticmethod
    def parse_decision(body: bytes) -> _DecisionBody:
        """The decision a request body holds.

        Raises:
            _Refused: 413, 400 (not a JSON object) or 422 (naming the bad field).
        """
        fields = _json_object(
            body, 'body must be a JSON object: {"verdict": "approve"|"reject"|"edit"|"respond"}'
        )
        try:
            decision = _DecisionBody.model_validate(fields)
        except ValidationError as exc:
            raise _Refused(422, describe_validation_error(exc)) from None
        reason = (decision.reason or "").strip() or None
        if decision.verdict == ApprovalVerdict.reject and reason is None:
            raise _Refused(422, "reason: a rejection needs a reason")
        given = decision.model_fields_set
        wanted = {ApprovalVerdict.edit: "args", ApprovalVerdict.respond: "output"}
        for verdict, name in wanted.items():
            if decision.verdict == verdict and (
                name not in given or name == "args" and decision.args is None
            ):
                raise _Refused(422, f"{name}: {verdict.value} needs {name}")
            if decision.verdict != verdict and name in given:
                raise _Refused(422, f"{name}: only {verdict.value} takes {name}")
        return decision.model_copy(update={"reason": reason})

    async def decide(
        self, approval_id: str, identity: Identity, decision: _DecisionBody
    ) -> dict[str, Any]:
        """Sign the reviewer's decision on the open request and publish it for its coordinator.

        Raises:
            _Refused: 404, 403, 409 (decided already, or the request is not the one the
                reviewer saw), 503 (cannot sign or publish).
        """
        key_id, key = self.signing_key()
        view = self.open_request(approval_id, identity)
        if identity.principal in self._decided_by(approval_id, view):
            raise _Refused(409, f"{identity.principal} has decided {approval_id!r} already")
        digest = str(view["request_digest"])
        if decision.request_digest is not None and decision.request_digest != digest:
            raise _Refused(
                409,
                f"request_digest: {approval_id!r} is not the request you saw "
                f"(its digest is {digest})",
            )
        payload = decision.payload
        request = self.runtime.approvals.get(approval_id)
        problem = (
            answer_problem(request, decision.verdict, payload) if request is not None else None
        )
        if problem is not None:
            raise _Refused(422, problem)
        signed = sign_decision(
            approval_id=approval_id,
            run_id=view["run_id"],
            request_digest=digest,
            verdict=decision.verdict,
            approver=identity.principal,
            reason=decision.reason,
            key_id=key_id,
            key=key,
            payload=payload,
        )
        topic = self.runtime.catalog.approvals_decided
        try:
            await self.runtime.plain.send_and_wait(
                topic.name,
                self.runtime.codec.encode(signed),
                key=signed.run_id.encode(),
                partition=partition_for(signed.run_id, topic.partitions),
            )
        except KafkaError as exc:
            raise _Refused(503, f"could not publish the decision ({exc}); try again") from None
        for closed in [a for a in self._sent if a not in self.runtime.approvals]:
            del self._sent[closed]
        self._sent.setdefault(approval_id, set()).add(identity.principal)
        return {
            "approval_id": approval_id,
            "verdict": signed.verdict.value,
            "approver": identity.principal,
        }


def _timeline_params(params: Any) -> tuple[int | None, int]:
    """The ``cursor`` (an offset) and ``limit`` of a timeline request.

    Raises:
        _Refused: 422, naming the bad one.
    """
    cursor = str(params.get("cursor", ""))
    limit = str(params.get("limit", str(MAX_EVENTS)))
    if cursor and not cursor.isdigit():
        raise _Refused(422, f"cursor: {cursor[:40]!r} is not a cursor a page of events gave")
    if not limit.isdigit() or not 1 <= int(limit) <= MAX_EVENTS:
        raise _Refused(422, f"limit: {limit[:20]!r} is not a number from 1 to {MAX_EVENTS}")
    return (int(cursor) if cursor else None), int(limit)


def _last_event_id(value: str | None) -> int | None:
    """The offset a ``Last-Event-ID`` names (the last chunk the client has), if one."""
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())


def _json_object(body: bytes, not_object: str) -> dict[str, Any]:
    """A request body's JSON object.

    Raises:
        _Refused: 413 (too big), 400 (not JSON, or not an object: ``not_object``).
    """
    if len(body) > _MAX_BODY:
        raise _Refused(413, f"body over {_MAX_BODY} bytes")
    try:
        fields = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _Refused(400, f"body is not JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise _Refused(400, not_object)
    return fields


_Handler = Callable[[aioweb.Request], Awaitable[aioweb.StreamResponse]]


@aioweb.middleware
async def _json_errors(request: aioweb.Request, handler: _Handler) -> aioweb.StreamResponse:
    """Under ``/v1/``, routing errors (404, 405) and crashes answer JSON too."""
    if not request.path.startswith("/v1/"):
        return await handler(request)
    try:
        return await handler(request)
    except aioweb.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        message = f"{request.method} {request.path}: {exc.reason}"
        return aioweb.json_response({"error": message}, status=exc.status, headers=headers)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return aioweb.json_response(
            {"error": f"{request.method} {request.path}: internal error (see the worker's log)"},
            status=500,
        )


def install_api(
    app: faust.App,
    runtime: CoordinatorRuntime,
    http: httpx.AsyncClient,
    processing: Callable[[], list[str]] = list,
    metrics: Metrics | None = None,
) -> None:
    """Add the API's pages and the approval inbox to the worker's Faust app.

    ``processing`` names the step topics this worker's processors read (for ``/healthz``);
    ``metrics`` are served at ``/metrics`` (the runtime's, by default).
    """
    # Faust types ``app.web`` as its driver-neutral base; the worker runs the aiohttp driver.
    server: aioweb.Application = app.web.web_app  # type: ignore[attr-defined]
    server.middlewares.append(_json_errors)
    api = _Endpoints(runtime, http)
    assets = inbox.read_assets()

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        return web.json(
            {
                "ok": True,
                "events_processed": runtime.events_processed,
                "partitions": sorted(runtime.ready),
                "processing": processing(),
                "runs": runtime.runs,
                "restored": runtime.restores,
                "written": runtime.written,
            }
        )

    async def identify(request: Any) -> Identity:
        return (await api.identify(request)).identity

    _install_metrics(app, identify, metrics if metrics is not None else runtime.metrics)
    install_control_api(app, runtime, identify)

    @app.page("/v1/runs")
    class Runs(_View):
        """The runs of the caller's tenants, filtered, a page at a time."""

        async def get(self, request: Any) -> Any:
            caller = await api.identify(request)
            query = api.query(request.query, caller.identity)
            if caller.forwarded:
                return self.json(api.local_runs(query, caller.identity))
            return self.json(await api.runs_everywhere(query, caller.identity))

    @app.page("/v1/runs/{run_id}/events")
    class RunEvents(_View):
        """A run's timeline, from its owner."""

        async def get(self, request: Any, run_id: str) -> Any:
            caller = await api.identify(request)
            cursor, limit = _timeline_params(request.query)
            owner = api.owner(caller, run_id)
            if owner is not None:
                query = {"limit": str(limit)}
                if cursor is not None:
                    query["cursor"] = str(cursor)
                path = f"/v1/runs/{quote(run_id, safe='')}/events?{urlencode(query)}"
                return await api.forward(self, caller, owner, "GET", path)
            return self.json(await api.events(run_id, caller.identity, request.query))

    live = RunStreamReader(runtime.bootstrap, runtime.catalog, runtime.codec)

    @app.page("/v1/runs/{run_id}/stream")
    class RunStream(_View):
        """A run's streamed model text, as Server-Sent Events, from its owner."""

        async def get(self, request: Any, run_id: str) -> Any:
            caller = await api.identify(request)
            owner = api.owner(caller, run_id)
            if not live.has_room():
                raise _Refused(
                    503, f"{live.max_streams} streams are open on this worker; retry later"
                )
            last = request.headers.get("Last-Event-ID")
            if owner is not None:
                path = f"/v1/runs/{quote(run_id, safe='')}/stream"
                async with live.slot():
                    return await api.relay_stream(request, caller, owner, path, last)
            api._visible(run_id, caller.identity)
            response = aioweb.StreamResponse(headers=_SSE_HEADERS)
            await response.prepare(request)
            after = _last_event_id(last)
            try:
                await live.serve(run_id, lambda: runtime.state_of(run_id), response.write, after)
                await response.write_eof()
            except ConnectionError:
                pass  # the client went away: nothing more to send
            return response

    @app.page("/v1/runs/{run_id}")
    class Run(_View):
        """A run's committed state."""

        async def get(self, request: Any, run_id: str) -> Any:
            caller = await api.identify(request)
            owner = api.owner(caller, run_id)
            if owner is not None:
                path = f"/v1/runs/{quote(run_id, safe='')}"
                return await api.forward(self, caller, owner, "GET", path)
            return self.json(api.run(run_id, caller.identity))

    @app.page("/v1/tasks")
    class Tasks(_View):
        """Submit a task."""

        async def post(self, request: Any) -> Any:
            caller = await api.identify(request)
            task = api.task(await request.read(), caller.identity)
            claims = runtime.handler.claims
            if claims is not None:  # a large input goes to the store, not into the record
                try:
                    claimed = await claims.claim(task.task_id, task.input)
                except BatonError as exc:
                    raise _Refused(503, f"the task's input could not be stored: {exc}") from None
                task = task.model_copy(update={"input": claimed})
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

    # Registered before the single request's page, whose pattern would match it too.
    @app.page("/v1/approvals/{approval_id:.+}/decision")
    class Decision(_View):
        """Approve or reject an open request."""

        async def post(self, request: Any, approval_id: str) -> Any:
            caller = await api.identify(request)
            body = await request.read()
            decision = api.parse_decision(body)
            api.signing_key()  # before forwarding: a worker that cannot sign says so
            owner = api.approval_owner(caller, approval_id)
            if owner is not None:
                path = f"/v1/approvals/{quote(approval_id, safe='')}/decision"
                return await api.forward(self, caller, owner, "POST", path, body)
            accepted = await api.decide(approval_id, caller.identity, decision)
            return self.json(accepted, status=202)

    @app.page("/v1/approvals/{approval_id:.+}")
    class OneApproval(_View):
        """One open request."""

        async def get(self, request: Any, approval_id: str) -> Any:
            caller = await api.identify(request)
            owner = api.approval_owner(caller, approval_id)
            if owner is not None:
                path = f"/v1/approvals/{quote(approval_id, safe='')}"
                return await api.forward(self, caller, owner, "GET", path)
            return self.json(api.open_request(approval_id, caller.identity))

    @app.page("/v1/approvals")
    class Approvals(_View):
        """The open requests the caller may decide."""

        async def get(self, request: Any) -> Any:
            caller = await api.identify(request)
            if caller.forwarded:
                return self.json(api.local(caller.identity))
            return self.json(await api.everywhere(caller.identity))

    @app.page("/")
    async def index(web: Any, request: Any) -> Any:
        content, content_type = assets["index.html"]
        return web.bytes(content, headers={"Content-Type": content_type, **_PAGE_HEADERS})

    @app.page("/static/{name}")
    async def static(web: Any, request: Any, name: str) -> Any:
        if name not in assets or name == "index.html":
            return web.json({"error": f"no file {name!r}"}, status=404)
        content, content_type = assets[name]
        return web.bytes(content, headers={"Content-Type": content_type, **_PAGE_HEADERS})


def install_processor_api(
    app: faust.App, access: Access, processing: Callable[[], list[str]], metrics: Metrics
) -> None:
    """The pages of a worker that runs processors only (``--no-coordinator``).

    ``GET /healthz`` (open: which step topics it reads) and ``GET /metrics`` (its processors'
    and cache's metrics, for a principal that acts for every tenant, as on a coordinator).
    """
    server: aioweb.Application = app.web.web_app  # type: ignore[attr-defined]
    server.middlewares.append(_json_errors)

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        return web.json({"ok": True, "processing": processing()})

    async def identify(request: Any) -> Identity:
        return _bearer(access, request)

    _install_metrics(app, identify, metrics)


def _install_metrics(
    app: faust.App, identify: Callable[[Any], Awaitable[Identity]], metrics: Metrics
) -> None:
    """``GET /metrics``, for a principal that acts for every tenant (403 for any other)."""

    @app.page("/metrics")
    class MetricsPage(_View):
        """The worker's Prometheus metrics: they hold every tenant's figures."""

        async def get(self, request: Any) -> Any:
            identity = await identify(request)
            if ALL_TENANTS not in identity.tenants:
                raise _Refused(
                    403,
                    f"{identity.principal} may not read the metrics: they hold every "
                    'tenant\'s figures, and it does not act for every tenant (tenants: "*")',
                )
            return self.bytes(await metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})
