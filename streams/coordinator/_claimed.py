"""Claim checks around ``decide``: it sees real values, what it saves and emits is small.

Before ``decide``, the shell resolves every blob reference in the run's state and in the
inbound event, so templates, conditions and input schemas see the payloads themselves.
After it, every JSON value over the threshold in the new state and in each emitted event is
claimed again: the same bytes give the same reference (content addressing), and a blob this
process wrote or read once is not written again.

A record that is still over the threshold once its large values are claimed (many medium
values) has its JSON fields claimed whole. A run that ends holding references is noted in
the store under the day it ended, for the sweeper (``streams._blobs``).

A reference that cannot be resolved for good (the blob is missing or does not match its
hash) ends the run ``failed`` with the store's reason, from the state as it is; a store
that does not answer raises, so the record is tried again and then dead-lettered.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pydantic import JsonValue

from processors import Claims
from processors._claims import holds_reference
from streams.coordinator._decide import Context, Decision, Inbound
from streams.coordinator._state import RunState, StepState
from streams.coordinator._transition import Transition
from topics import Codec, Event, RunEvent, RunStatus, StepResult, TaskSubmitted

__all__ = ["claim_decision", "payload_lost", "resolve_event", "resolve_state"]

_JSON_FIELDS: dict[type[Event], tuple[str, ...]] = {}


def _json_fields(event_type: type[Event]) -> tuple[str, ...]:
    known = _JSON_FIELDS.get(event_type)
    if known is None:
        known = tuple(
            name for name, info in event_type.model_fields.items() if _is_json(info.annotation)
        )
        _JSON_FIELDS[event_type] = known
    return known


def _is_json(annotation: object) -> bool:
    return annotation is JsonValue


# -- resolving -------------------------------------------------------------------------------


async def resolve_state(claims: Claims, state: RunState | None) -> RunState | None:
    """The run's state with its payloads in place of their references."""
    if state is None:
        return None
    update: dict[str, Any] = {}
    for name in ("input", "output"):
        value = getattr(state, name)
        if holds_reference(value):
            update[name] = await claims.resolve(value, state.run_id)
    steps: dict[str, StepState] = {}
    for name, step in state.steps.items():
        changes: dict[str, Any] = {}
        if holds_reference(step.output):
            changes["output"] = await claims.resolve(step.output, state.run_id)
        if any(holds_reference(m) for m in step.conversation):
            changes["conversation"] = [
                await claims.resolve(m, state.run_id) for m in step.conversation
            ]
        if step.approval is not None and holds_reference(step.approval.context):
            context = await claims.resolve(step.approval.context, state.run_id)
            changes["approval"] = step.approval.model_copy(update={"context": context})
        if changes:
            steps[name] = step.model_copy(update=changes)
    if steps:
        update["steps"] = {**state.steps, **steps}
    return state.model_copy(update=update) if update else state


async def resolve_event(claims: Claims, event: Inbound) -> Inbound:
    """The inbound event with its payload (a task's input, a step's output) resolved."""
    if isinstance(event, TaskSubmitted) and holds_reference(event.input):
        return event.model_copy(update={"input": await claims.resolve(event.input, event.task_id)})
    if isinstance(event, StepResult) and holds_reference(event.output):
        return event.model_copy(update={"output": await claims.resolve(event.output, event.run_id)})
    return event


def payload_lost(state: RunState | None, event: Inbound, context: Context, reason: str) -> Decision:
    """What to do when a payload of the run cannot be read back (missing, altered).

    The run ends ``failed`` from its state as stored, saying why; a task that would start it
    is ``rejected`` (its input is not kept). A finished run stays as it was.
    """
    if state is None:
        if not isinstance(event, TaskSubmitted):
            return Decision(dead_letter=f"{type(event).__name__}: {reason}")
        task = event
        started = RunState(
            run_id=task.task_id,
            workflow=task.workflow,
            tenant=task.tenant,
            labels=task.labels,
            started_at=context.now,
        )
        if context.trace is not None:
            started = started.model_copy(update={"trace": context.trace})
        t = Transition(started, None, context)
        t.finish(RunStatus.rejected, f"the task's input cannot be read: {reason}")
        return t.decision()
    if state.finished:
        return Decision()
    t = Transition(state, context.workflow, context)
    t.note("payload_unavailable", detail={"event": type(event).__name__, "reason": reason})
    t.finish(RunStatus.failed, f"{type(event).__name__} not applied: {reason}")
    return t.decision()


# -- claiming --------------------------------------------------------------------------------


async def claim_decision(claims: Claims, codec: Codec, run_id: str, decision: Decision) -> Decision:
    """The decision with every large payload of its state and events claimed."""
    state, referenced = (None, False)
    if decision.state is not None:
        state, referenced = await _claim_state(claims, run_id, decision.state)
    emitted = []
    for event in decision.emit:
        claimed, holds = await _claim_event(claims, codec, run_id, event)
        referenced = referenced or holds
        emitted.append(claimed)
    if state is not None and state.finished_at is not None and referenced:
        await claims.store.finished(run_id, state.finished_at)
    return replace(decision, state=state, emit=tuple(emitted))


async def _claim_state(claims: Claims, run: str, state: RunState) -> tuple[RunState, bool]:
    held = False

    async def claimed(value: Any) -> Any:
        nonlocal held
        out, holds = await claims.claim_noting(run, value)
        held = held or holds
        return out

    update: dict[str, Any] = {}
    for name in ("input", "output"):
        value = getattr(state, name)
        out = await claimed(value)
        if out is not value:
            update[name] = out
    steps: dict[str, StepState] = {}
    for name, step in state.steps.items():
        changes: dict[str, Any] = {}
        output = await claimed(step.output)
        if output is not step.output:
            changes["output"] = output
        if step.conversation:
            conversation = [await claimed(m) for m in step.conversation]
            if any(a is not b for a, b in zip(conversation, step.conversation, strict=True)):
                changes["conversation"] = conversation
        if step.approval is not None:
            context = await claimed(step.approval.context)
            if context is not step.approval.context:
                changes["approval"] = step.approval.model_copy(update={"context": context})
        if changes:
            steps[name] = step.model_copy(update=changes)
    if steps:
        update["steps"] = {**state.steps, **steps}
    if update:
        state = state.model_copy(update=update)
    if len(state.to_bytes()) > claims.threshold:
        state = await _claim_state_whole(claims, run, state)
        held = True
    return state, held


async def _claim_state_whole(claims: Claims, run: str, state: RunState) -> RunState:
    """Many medium values: each output, the input and the result stored whole."""
    steps = {
        name: step.model_copy(update={"output": await claims.claim_whole(run, step.output)})
        if step.output is not None
        else step
        for name, step in state.steps.items()
    }
    return state.model_copy(
        update={
            "input": await claims.claim_whole(run, state.input),
            "output": await claims.claim_whole(run, state.output),
            "steps": steps,
        }
    )


async def _claim_event(claims: Claims, codec: Codec, run: str, event: Any) -> tuple[Any, bool]:
    fields = _json_fields(type(event))
    if not fields:
        return event, False
    update: dict[str, Any] = {}
    held = False
    for name in fields:
        value = getattr(event, name)
        out, holds = await claims.claim_noting(run, value)
        held = held or holds
        if out is not value:
            update[name] = out
    if update:
        event = event.model_copy(update=update)
    encoded = codec.encode_item(event) if isinstance(event, RunEvent) else codec.encode(event)
    if len(encoded) > claims.threshold:
        whole = {name: await claims.claim_whole(run, getattr(event, name)) for name in fields}
        event = event.model_copy(update=whole)
        held = True
    return event, held
