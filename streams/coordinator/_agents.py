"""Agent steps: model turns whose tool calls are durable steps of their own.

An agent turn is one model call (the ``agent`` processor). When the model answers, the step
succeeds with the answer. When it asks for tools, the processor does not call them: the
turn's output lists the calls, and here each becomes a step of the run, named
``<agent>:<n>``, that the usual machinery dispatches (in parallel), gates with the approval
policies (``tools: [payments.*]``), counts in the budgets, retries, times out and audits like
any ``tool`` step. Its idempotency key is ``<run>/<agent>/turn-<t>/call-<i>`` (with the
agent's re-run), the same for every attempt and re-dispatch, so a repeated call has one effect.

A call that cannot be made as asked (a tool that was not offered, arguments that are not an
object or break the tool's schema) is not dispatched: its error is the call's result. A call
that fails for good (after its retries) also answers with its error. Either way the model
sees what went wrong in its next turn; nothing crashes. When every call of a turn has
answered, the results go back to the model in the next turn. A model that still asks for
tools after ``max_turns`` turns fails the step (``MaxTurnsExceeded``).
"""

from __future__ import annotations

import orjson
from pydantic import JsonValue

from streams.coordinator._state import AgentCall, StepPhase, StepState
from streams.coordinator._transition import Transition, add_usage
from streams.workflow import AgentStep
from topics import StepError, Usage

__all__ = ["call_finished", "on_turn", "pending_calls"]

MAX_TURNS_EXCEEDED = "MaxTurnsExceeded"
TOOL_CALL_REFUSED = "ToolCallRefused"
_MAX_RESULT_CHARS = 20_000  # what one tool result may put in the conversation


def on_turn(
    t: Transition,
    name: str,
    attempt: int,
    output: JsonValue,
    usage: Usage | None,
    ms: float,
) -> None:
    """Settle one successful agent turn: the final answer, or the tool calls it asks for."""
    spec = t.spec(name)
    assert isinstance(spec, AgentStep)
    step = t.steps[name]
    turn = step.turn + 1
    if not isinstance(output, dict) or output.get("type") != "tool_calls":
        final = output.get("content") if isinstance(output, dict) else output
        t.set_step(name, turn=turn)
        t.succeed(name, attempt, final, usage, ms)
        return
    t.set(usage=add_usage(t.get("usage"), usage))
    t.set_step(name, usage=add_usage(step.usage, usage), duration_ms=ms, turn=turn)
    raw_calls = output.get("calls")
    calls = [c for c in raw_calls if isinstance(c, dict)] if isinstance(raw_calls, list) else []
    names = [str(c.get("name")) for c in calls]
    t.note(
        "agent_turn",
        name,
        attempt,
        {"turn": turn, "tool_calls": names},  # type: ignore[dict-item]
        duration_ms=ms,
        usage=usage,
    )
    if turn >= spec.max_turns:
        t.set_step(name, error=None)
        t.fail_step(
            name,
            MAX_TURNS_EXCEEDED,
            f"the model still asked for tools ({', '.join(names) or 'none'}) after "
            f"max_turns={spec.max_turns} turns",
        )
        return
    assistant = output.get("assistant")
    waiting: list[str] = []
    made = step.calls_made
    run = t.old.run_id
    rerun = f"/rerun-{step.reruns}" if step.reruns else ""
    for index, call in enumerate(calls):
        made += 1
        call_name = f"{name}:{made}"
        arguments = call.get("arguments")
        t.replace_step(
            call_name,
            StepState(
                call=AgentCall(
                    agent=name,
                    turn=turn,
                    index=index,
                    call_id=str(call.get("id")),
                    tool=str(call.get("name")),
                    arguments=arguments if isinstance(arguments, dict) else {},
                    key=f"{run}/{name}{rerun}/turn-{turn}/call-{index}",
                )
            ),
        )
        waiting.append(call_name)
        problem = call.get("arguments_error")
        if problem or call.get("name") not in spec.tools:
            why = str(problem or f"{call.get('name')!r} is not one of this agent's tools")
            t.set_step(
                call_name,
                phase=StepPhase.failed,
                error=StepError(error_class=TOOL_CALL_REFUSED, message=why, retryable=False),
            )
            t.note("tool_call_refused", call_name, detail={"tool": names[index], "reason": why})
    t.set_step(
        name,
        calls_made=made,
        waiting_on=waiting,
        deadline_at=None,
        conversation=[*step.conversation, assistant],
    )
    # Calls that can be made start in advance() (gated by the approval policies); if none
    # can, the model hears why at once.
    _maybe_next_turn(t, name)


def pending_calls(t: Transition) -> list[str]:
    """Tool calls waiting to be dispatched (``advance`` gates and dispatches them)."""
    return [
        name
        for name, step in t.steps.items()
        if step.call is not None and step.phase == StepPhase.pending and step.attempt == 0
    ]


def call_finished(t: Transition, name: str) -> None:
    """A tool call has answered (or failed for good): continue its agent if it was the last."""
    call = t.steps[name].call
    assert call is not None
    if t.running:
        _maybe_next_turn(t, call.agent)


def _maybe_next_turn(t: Transition, agent: str) -> None:
    step = t.steps[agent]
    if not step.waiting_on:
        return
    calls = [t.steps[name] for name in step.waiting_on]
    if any(c.phase not in (StepPhase.succeeded, StepPhase.failed) for c in calls):
        return
    results: list[JsonValue] = [_result_message(c) for c in calls]
    t.set_step(
        agent,
        waiting_on=[],
        tries=0,
        conversation=[*step.conversation, *results],
    )
    t.dispatch(agent)


def _result_message(call_step: StepState) -> JsonValue:
    call = call_step.call
    assert call is not None
    if call_step.phase == StepPhase.succeeded:
        content = (
            call_step.output
            if isinstance(call_step.output, str)
            else orjson.dumps(call_step.output).decode()
        )
        is_error = False
    else:
        error = call_step.error
        content = f"{error.error_class}: {error.message}" if error else "the call failed"
        is_error = True
    if len(content) > _MAX_RESULT_CHARS:
        content = content[:_MAX_RESULT_CHARS] + " [truncated]"
    return {
        "role": "tool",
        "tool_call_id": call.call_id,
        "name": call.tool,
        "content": content,
        "is_error": is_error,
    }
