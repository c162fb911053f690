"""Sequencing: which ready steps start, which are skipped, and when a run is complete.

A step is ready when every step in its ``after`` is done (succeeded or skipped). A ready step
whose ``when`` is false is skipped; an approval step asks its approvers; any other step first
passes the approval policies that gate it, then is dispatched. Tool calls an agent's model
asked for (``_agents``) pass the same gates. When every step of the workflow is done, the
run's output is rendered and the run completes.
"""

from __future__ import annotations

from typing import Any

from pydantic import JsonValue

from processors import TemplateRenderError, compile_expression, render_value
from streams.coordinator._agents import pending_calls
from streams.coordinator._approvals import gate, open_approval_step
from streams.coordinator._state import StepPhase
from streams.coordinator._transition import Transition
from streams.workflow import ApprovalStep, LlmStep, StepSpec
from topics import RunStatus

__all__ = ["advance"]


def advance(t: Transition) -> None:
    """Start or skip every ready step; complete the run when all are done.

    A run an operator's pause holds starts nothing (it completes if nothing is left).
    """
    if t.hold is not None:
        for name, step in list(t.steps.items()):
            if step.reservation is not None and step.phase == StepPhase.pending:
                t.hold_step(name)  # its verdict came, or is on its way: it waits all the same
        if t.running and all(t.steps[name].phase.done for name in t.wf.order):
            _complete(t)
        return
    progressed = True
    while progressed and t.running:
        progressed = False
        for name in t.wf.order:
            if t.get("status") is not None:
                return
            step = t.steps[name]
            if step.phase != StepPhase.pending:
                continue
            spec = t.wf.step(name)
            if not all(t.steps[dep].phase.done for dep in spec.after):
                continue
            runs = _condition(t, name, spec)
            if runs is None:
                return
            if not runs:
                t.set_step(name, phase=StepPhase.skipped)
                t.note("step_skipped", name, detail={"when": _when_text(spec)})
                progressed = True
            elif isinstance(spec, ApprovalStep):
                if step.approval is None:
                    open_approval_step(t, name)
            elif not gate(t, name, _facts(name, spec)):
                t.dispatch(name)
    for name in pending_calls(t):  # tool calls agents asked for: gated like any tool step
        if t.running and not gate(t, name, _facts(name, t.spec(name))):
            t.dispatch(name)
    if t.running and all(t.steps[name].phase.done for name in t.wf.order):
        _complete(t)


def _facts(name: str, spec: StepSpec) -> dict[str, Any]:
    """What policies may test about a step."""
    facts: dict[str, Any] = {"name": name, "kind": spec.kind}
    if isinstance(spec, LlmStep):
        facts["route"] = spec.model
    tool = getattr(spec, "tool", None)
    if tool is not None:
        facts["tool"] = tool
    return facts


def _condition(t: Transition, name: str, spec: StepSpec) -> bool | None:
    """Whether the step runs; ``None`` when the condition failed (the run has failed)."""
    if spec.when is None or isinstance(spec.when, bool):
        return spec.when is not False
    try:
        return compile_expression(spec.when).holds(t.template_context(name))
    except TemplateRenderError as exc:
        t.fail_step(name, "TemplateRenderError", f"steps.{name}.when: {exc}")
        return None


def _complete(t: Transition) -> None:
    spec_output = t.wf.spec.output
    context = t.template_context()
    try:
        if spec_output is None:
            sinks = t.wf.sinks
            output: JsonValue = (
                context["steps"][sinks[0]]["output"]
                if len(sinks) == 1
                else {name: context["steps"][name]["output"] for name in sinks}
            )
        else:
            output = render_value(spec_output, context)
    except TemplateRenderError as exc:
        t.finish(RunStatus.failed, f"output: {exc}")
        return
    t.finish(RunStatus.completed, output=output)


def _when_text(spec: StepSpec) -> str:
    return str(spec.when).lower() if isinstance(spec.when, bool) else str(spec.when)
