"""Custom step kinds: the wire, the catalog, the entry points, the processor, the coordinator."""

from __future__ import annotations

import asyncio
import importlib.metadata
import io
import struct
import textwrap
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fastavro
import httpx
import jsonschema
import pytest
import yaml
from pydantic import BaseModel, ValidationError

from processors import (
    CustomKindProcessor,
    CustomProcessor,
    KindSetup,
    KindUnavailable,
    StepOutput,
    execute,
    installed_kinds,
    load_kinds,
)
from streams._policies import Policies
from streams.coordinator import Context, decide
from streams.workflow import (
    CustomStep,
    WorkflowError,
    WorkflowSpec,
    check_kinds,
    editor_schema,
    parse_workflow,
)
from tests.unit.test_decide import T0, Run, failed, ok, task
from topics import (
    BUILTIN_KINDS,
    Codec,
    ConfigurationError,
    RunEvent,
    RunStatus,
    SchemaRegistry,
    StepKind,
    StepRequested,
    TopicCatalog,
    Usage,
)
from topics._avro_writer import compile_writer

REGISTRY = SchemaRegistry.load()
#: The echo processors are handed one, as a worker's would be; they never use it.
CLIENT = httpx.AsyncClient()


def _request(**changes: Any) -> StepRequested:
    fields: dict[str, Any] = {
        "run_id": "r1",
        "step": "mood",
        "kind": StepKind.custom,
        "custom_kind": "sentiment",
        "attempt": 1,
        "idempotency_key": "r1/mood",
        "workflow": "w",
        "workflow_version": "abc",
        "params": {"text": "hi"},
        "dispatched_at": T0,
        "deadline_at": T0 + timedelta(seconds=60),
    }
    fields.update(changes)
    return StepRequested(**fields)


# -- the wire --------------------------------------------------------------------------------


def test_a_request_written_before_custom_kinds_is_read_with_none() -> None:
    v2 = REGISTRY.versions("baton.events.StepRequested")[1]
    assert v2.version == 2
    buffer = io.BytesIO()
    buffer.write(struct.pack(">bI", 0, v2.id))
    record = {
        **_request(kind=StepKind.llm, custom_kind=None).model_dump(mode="python"),
        "kind": "llm",
        "params": "{}",
        "context": "null",
    }
    del record["custom_kind"]
    fastavro.schemaless_writer(buffer, v2.parsed, record)

    read = Codec().decode(buffer.getvalue(), StepRequested)

    assert read.kind is StepKind.llm and read.custom_kind is None and read.kind_name == "llm"


def test_a_built_in_kind_is_encoded_as_before_plus_one_null() -> None:
    request = _request(kind=StepKind.tool, custom_kind=None)
    v2 = REGISTRY.versions("baton.events.StepRequested")[1]
    before = bytearray()
    compile_writer(v2.schema)(request, before)

    body = Codec().encode_item(request)

    assert body == bytes(before) + b"\x00"


def test_a_custom_kind_round_trips_and_the_compiled_writer_agrees_with_fastavro() -> None:
    request = _request(custom_kind="acme.score")
    codec = Codec()
    latest = REGISTRY.latest("baton.events.StepRequested")
    reference = io.BytesIO()
    fastavro.schemaless_writer(reference, latest.parsed, _dumped(request))

    assert codec.encode_item(request) == reference.getvalue()
    read = codec.decode(codec.encode(request), StepRequested)
    assert read == request and read.kind_name == "acme.score"


def _dumped(request: StepRequested) -> dict[str, Any]:
    return {**request.model_dump(mode="python"), "kind": request.kind.value}


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"custom_kind": None}, "custom_kind is given exactly when kind is custom"),
        ({"kind": StepKind.llm}, "custom_kind is given exactly when kind is custom"),
        ({"custom_kind": "Sentiment"}, "not a step kind name"),
        ({"custom_kind": "llm"}, "a kind baton has built in"),
        ({"custom_kind": "a" * 65}, "at most 64 characters"),
        ({"custom_kind": "acme..score"}, "not a step kind name"),
    ],
)
def test_a_custom_kind_is_a_validated_name(changes: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        _request(**changes)


# -- the catalog -----------------------------------------------------------------------------


def test_each_custom_kind_has_its_request_topic_after_the_built_in_ones() -> None:
    catalog = TopicCatalog(prefix="t", custom_kinds=("sentiment", "acme.score"))

    assert catalog.steps("sentiment").name == "t.steps.sentiment"
    assert catalog.steps("acme.score").value_types == (StepRequested,)
    names = [t.name for t in catalog if ".steps." in t.name]
    assert names == [f"t.steps.{k.value}" for k in BUILTIN_KINDS] + [
        "t.steps.acme.score",
        "t.steps.sentiment",
    ]
    with pytest.raises(ConfigurationError, match=r"custom kinds installed: acme.score, sentiment"):
        catalog.steps("other")
    with pytest.raises(ConfigurationError, match="unknown step kind 'custom'"):
        catalog.steps(StepKind.custom)


def test_a_catalog_refuses_a_custom_kind_no_topic_can_carry() -> None:
    with pytest.raises(ConfigurationError, match="'transform' is a kind baton has built in"):
        TopicCatalog(custom_kinds=("transform",))


# -- entry points ----------------------------------------------------------------------------


class EchoParams(BaseModel):
    text: str
    times: int = 1


class Echo(CustomProcessor[EchoParams]):
    """Echoes the text; ``times: 0`` is a bug on purpose (it divides by it)."""

    async def run(self, params: EchoParams, request: StepRequested) -> Any:
        return {"echo": params.text * params.times, "per": 1 // params.times}


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module on sys.path with a good processor and some mistakes."""
    module = f"acme_kinds_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        textwrap.dedent(
            """
            from pydantic import BaseModel
            from processors import CustomProcessor

            class Params(BaseModel):
                x: int

            class Good(CustomProcessor[Params]):
                async def run(self, params, request):
                    return params.x

            class Untyped(CustomProcessor):  # no parameter model
                async def run(self, params, request):
                    return None

            class NoRun(CustomProcessor[Params]):
                pass

            NOT_A_CLASS = 3
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return module


def _entry(name: str, value: str) -> importlib.metadata.EntryPoint:
    return importlib.metadata.EntryPoint(name, value, "baton.processors")


def test_an_entry_point_names_a_kind_and_its_processor(plugin_module: str) -> None:
    kinds = load_kinds([_entry("acme.good", f"{plugin_module}:Good")])

    (kind,) = kinds.values()
    assert kind.name == "acme.good" and kind.processor.__name__ == "Good"
    assert kind.processor.params_model.__name__ == "Params"
    assert kind.build(KindSetup(CLIENT)).kind == "acme.good"


@pytest.mark.parametrize(
    ("entries", "problem"),
    [
        ([("Good", "{m}:Good")], r"'Good'.*not a step kind name"),
        ([("agent", "{m}:Good")], r"'agent' is a kind baton has built in"),
        ([("acme", "{m}:NOT_A_CLASS")], r"\(unknown distribution: .*\) is not a CustomProcessor"),
        ([("acme", "{m}:Untyped")], "has no parameter model: subclass CustomProcessor"),
        ([("acme", "{m}:NoRun")], "does not implement run"),
        ([("acme", "no_such_module_here:Good")], "cannot be loaded: ModuleNotFoundError"),
        ([("acme", "{m}:Good"), ("acme", "{m}:Other")], "registered more than once"),
    ],
)
def test_a_bad_entry_point_fails_naming_it(
    plugin_module: str, entries: list[tuple[str, str]], problem: str
) -> None:
    points = [_entry(name, value.format(m=plugin_module)) for name, value in entries]
    with pytest.raises(ConfigurationError, match=problem):
        load_kinds(points)


def test_the_example_package_is_installed() -> None:
    assert "sentiment" in installed_kinds()


# -- the processor ---------------------------------------------------------------------------


def _echo(clock: datetime = T0) -> CustomKindProcessor:
    return CustomKindProcessor("echo", Echo(KindSetup(CLIENT)), clock=lambda: clock)


async def test_params_are_parsed_into_the_model_and_the_output_wrapped() -> None:
    outcome = await _echo().run(_request(custom_kind="echo", params={"text": "ab", "times": 2}))
    assert outcome == StepOutput({"echo": "abab", "per": 0})


async def test_an_unclassified_exception_is_a_bug_and_not_retried() -> None:
    result = await execute(
        _echo(),
        _request(custom_kind="echo", params={"text": "x", "times": 0}),
        worker="w",
        now=lambda: T0,
    )
    assert result.error is not None
    assert (result.error.error_class, result.error.retryable) == ("InternalError", False)
    assert "ZeroDivisionError" in result.error.message


class Flaky(CustomProcessor[EchoParams]):
    """Raises what its text names: a library's error ``classify`` maps, or baton's own."""

    async def run(self, params: EchoParams, request: StepRequested) -> Any:
        if params.text == "library":
            raise ConnectionResetError("peer went away")
        if params.text == "baton":
            raise KindUnavailable("busy", retry_after=3.0)
        if params.text == "slow":
            await asyncio.sleep(30)
        if params.text == "usage":
            return StepOutput("ok", Usage(input_tokens=3))
        raise TimeoutError("a timeout of its own, not the deadline")

    def classify(self, error: Exception) -> KindUnavailable | None:
        if isinstance(error, ConnectionError):
            return KindUnavailable(f"the far side: {error}")
        return None


async def _flaky(text: str, *, deadline_s: float = 60.0) -> Any:
    now = datetime.now(UTC)
    processor = CustomKindProcessor("flaky", Flaky(KindSetup(CLIENT)))
    request = _request(
        custom_kind="flaky", params={"text": text}, deadline_at=now + timedelta(seconds=deadline_s)
    )
    return await execute(processor, request, worker="w", now=lambda: now)


@pytest.mark.parametrize(
    ("text", "error_class", "retryable", "retry_after"),
    [
        ("library", "KindUnavailable", True, None),
        ("baton", "KindUnavailable", True, 3.0),
        ("other", "InternalError", False, None),
    ],
)
async def test_errors_are_classified_into_baton_s_tree(
    text: str, error_class: str, retryable: bool, retry_after: float | None
) -> None:
    result = await _flaky(text)
    assert result.error is not None
    assert (result.error.error_class, result.error.retryable) == (error_class, retryable)
    assert result.error.retry_after_s == retry_after


async def test_an_attempt_is_stopped_at_its_deadline() -> None:
    result = await asyncio.wait_for(_flaky("slow", deadline_s=0.2), timeout=10)
    assert result.error is not None
    assert (result.error.error_class, result.error.retryable) == ("KindTimeout", True)


async def test_a_step_output_with_usage_is_kept() -> None:
    result = await _flaky("usage")
    assert result.output == "ok" and result.usage == Usage(input_tokens=3)


# -- workflows -------------------------------------------------------------------------------

MOOD = """
workflow: mood
version: 1
steps:
  mood:
    kind: sentiment
    params: {text: "{{ input.text }}", threshold: "{{ input.threshold }}"}
    retry: {attempts: 2, backoff: {initial: 5s, jitter: 0}}
  reply: {kind: transform, after: [mood], output: "{{ steps.mood.output.label }}"}
"""


def test_a_custom_step_parses_with_its_params_and_templates_checked() -> None:
    workflow = parse_workflow(MOOD, "mood.yaml")
    step = workflow.step("mood")
    assert isinstance(step, CustomStep) and step.kind == "sentiment"
    assert workflow.timeout("mood") == 60.0

    with pytest.raises(WorkflowError, match=r"steps.mood.params.text: reads steps.reply"):
        parse_workflow(MOOD.replace("{{ input.text }}", "{{ steps.reply.output }}"), "m.yaml")


def test_deploy_checks_the_params_against_the_kind_s_model() -> None:
    kinds = installed_kinds()
    check_kinds(parse_workflow(MOOD, "mood.yaml"), kinds, "mood.yaml")  # templates: run time

    bad = MOOD.replace('threshold: "{{ input.threshold }}"', "threshold: 2, tone: warm")
    with pytest.raises(WorkflowError) as caught:
        check_kinds(parse_workflow(bad, "mood.yaml"), kinds, "mood.yaml")
    assert caught.value.problems == [
        "steps.mood.params.threshold: Input should be less than or equal to 1 (sentiment params)",
        "steps.mood.params.tone: Extra inputs are not permitted (sentiment params)",
    ]
    missing = MOOD.replace('text: "{{ input.text }}", ', "")
    with pytest.raises(WorkflowError, match=r"mood.yaml: steps.mood.params.text: Field required"):
        check_kinds(parse_workflow(missing, "mood.yaml"), kinds, "mood.yaml")


def test_deploy_refuses_a_kind_that_is_not_installed_naming_those_that_are() -> None:
    workflow = parse_workflow(MOOD.replace("kind: sentiment", "kind: sentiments"), "mood.yaml")
    with pytest.raises(WorkflowError) as caught:
        check_kinds(workflow, installed_kinds(), "mood.yaml")
    (problem,) = caught.value.problems
    assert problem.startswith("steps.mood.kind: unknown step kind 'sentiments' (built in: llm,")
    assert problem.endswith("custom kinds installed: sentiment)")


# -- the coordinator -------------------------------------------------------------------------

CATALOG = TopicCatalog(custom_kinds=("sentiment",))


def _run(text: str = MOOD, **context: Any) -> Run:
    return Run(parse_workflow(text, "mood.yaml"), catalog=CATALOG, **context)


def test_a_custom_step_is_dispatched_with_its_params_rendered_and_retried_by_its_policy() -> None:
    run = _run()
    run.send(task(input={"text": "great", "threshold": 0.3}))
    first = run.request("mood")
    assert (first.kind, first.custom_kind, first.kind_name) == (
        StepKind.custom,
        "sentiment",
        "sentiment",
    )
    assert first.params == {"text": "great", "threshold": 0.3}
    assert first.context is None and first.deadline_at == T0 + timedelta(seconds=60)

    run.send(failed(first, "SentimentUnavailable", "down", retryable=True))
    assert run.types() == ["step_failed", "step_dispatched", "run_paused"]
    second = run.request("mood")
    assert second.attempt == 2 and second.retry_tier == "5s"
    assert second.idempotency_key == first.idempotency_key

    run.send(ok(second, {"label": "positive"}))
    run.send(ok(run.request("reply"), "positive"))
    (result,) = run.results()
    assert result.status is RunStatus.completed
    assert [(s.step, s.kind, s.attempts) for s in result.steps] == [
        ("mood", "sentiment", 2),
        ("reply", "transform", 1),
    ]


def test_a_step_of_a_kind_the_coordinator_lacks_fails_the_run_naming_it() -> None:
    run = _run(MOOD.replace("kind: sentiment", "kind: acme.other"))
    run.send(task(input={"text": "x", "threshold": 0.1}))
    (result,) = run.results()
    assert result.status is RunStatus.failed
    assert result.reason is not None and "UnknownStepKind" in result.reason
    assert "'acme.other' is not installed on this coordinator" in result.reason
    assert run.requests() == []


def test_max_steps_counts_custom_attempts() -> None:
    run = _run()
    run.send(task(input={"text": "x", "threshold": 0.1}, budget={"max_steps": 1}))
    run.send(failed(run.request("mood"), "SentimentUnavailable", "down", retryable=True))
    (result,) = run.results()
    assert result.status is RunStatus.budget_exceeded
    assert result.reason is not None and result.reason.startswith("max_steps: 1 step attempts")


def test_an_approval_policy_gates_a_custom_kind_by_its_name() -> None:
    policies = Policies.model_validate(
        {"approvals": [{"name": "moods", "kinds": ["sentiment"], "approvers": ["group:leads"]}]}
    )
    decision = decide(
        None,
        task(input={"text": "x", "threshold": 0.1}),
        Context(
            now=T0, workflow=parse_workflow(MOOD, "m.yaml"), catalog=CATALOG, policies=policies
        ),
    )
    types = [e.type for e in decision.emit if isinstance(e, RunEvent)]
    assert "approval_requested" in types
    assert not [e for e in decision.emit if isinstance(e, StepRequested)]


# -- the editor schema -----------------------------------------------------------------------


def test_the_editor_schema_spells_out_the_installed_kinds_params() -> None:
    schema = editor_schema(installed_kinds())
    document = yaml.safe_load(MOOD)
    jsonschema.validate(document, schema)  # a template where a number goes: fine

    document["steps"]["mood"]["params"]["threshold"] = 2
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, schema)
    document["steps"]["mood"]["params"] = {"threshold": 0.5}  # text is required
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, schema)
    # Any other custom kind still has the generic shape; the committed schema has only that.
    document["steps"]["mood"] = {"kind": "acme.other", "params": {"anything": [1]}}
    jsonschema.validate(document, schema)
    assert editor_schema() == WorkflowSpec.model_json_schema(by_alias=True)
    assert "CustomStep.sentiment" not in editor_schema()["$defs"]
