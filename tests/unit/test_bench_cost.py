"""T9's pure parts: the labelled workload, the two models' answers, the judge, the tally, the
ratio and its verdict; and the loopback model server spoken to by baton's own OpenAI
provider. No broker, no worker."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from decimal import Decimal

import httpx
import pytest
import yaml
from pydantic import JsonValue

from bench._chatserver import ChatServer, Ledger
from bench._costload import (
    OUTPUT_SCHEMA,
    PRICES,
    STEP,
    SYSTEM,
    RoutePrice,
    baseline_workflow_yaml,
    cost_models_yaml,
    routed_workflow_yaml,
)
from bench._figures import t9
from bench._plan import MEASURED, parse_only, plan
from bench._questions import (
    FAST_MODEL,
    STRONG_MODEL,
    LabelledTask,
    MixSpec,
    Question,
    answer_of,
    completion_tokens,
    is_correct,
    model_reply,
    prompt_tokens,
    question_sets,
    tally,
)
from bench._report import CostRepetition, CostSettings, Measurement
from bench._stats import spread
from bench._summary import format_spread
from processors import ChatMessage, ModelCatalog, OpenAIProvider
from processors._llm import parse_json_answer
from processors._schema import schema_problems
from streams.workflow import LlmStep, parse_workflow
from topics import RunResult, RunStatus, StepOutcome, StepSummary, Usage

T0 = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)

# -- the workload ----------------------------------------------------------------------------


def test_the_mix_counts_follow_the_shares() -> None:
    spec = MixSpec(tasks=200, repeat_share=0.3, hard_share=0.4, mislabelled_share=0.25)
    assert (spec.repeats, spec.distinct, spec.hard, spec.mislabelled) == (60, 140, 56, 14)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"repeat_share": 1.5}, "repeat_share must be within 0..1"),
        ({"tasks": 0}, "at least 1"),
        ({"tasks": 50, "repeat_share": 0.5, "min_gap": 40}, "do not fit"),
    ],
)
def test_a_mix_that_cannot_be_built_is_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MixSpec(**kwargs)  # type: ignore[arg-type]  # the kwargs are MixSpec's by construction


def test_question_sets_are_the_same_for_the_same_seed() -> None:
    spec = MixSpec(tasks=60, min_gap=10)
    assert question_sets(spec, 9, 3) == question_sets(spec, 9, 3)
    assert question_sets(spec, 9, 1) != question_sets(spec, 10, 1)


def test_a_set_has_its_shares_and_its_repeats_are_exact_and_late_enough() -> None:
    spec = MixSpec(tasks=200, min_gap=40)
    (tasks,) = question_sets(spec, 1, 1)
    assert len(tasks) == 200
    firsts = [t for t in tasks if t.repeat_of is None]
    repeats = [(i, t) for i, t in enumerate(tasks) if t.repeat_of is not None]
    assert len(firsts) == spec.distinct and len(repeats) == spec.repeats
    assert len({t.question.text for t in firsts}) == spec.distinct
    assert sum(t.question.difficulty == "hard" for t in firsts) == spec.hard
    assert sum(t.question.difficulty == "hard" and t.label == "easy" for t in firsts) == (
        spec.mislabelled
    )
    assert all(t.label == "easy" for t in firsts if t.question.difficulty == "easy")
    for position, task in repeats:
        assert task.repeat_of is not None
        source = tasks[task.repeat_of]
        assert position - task.repeat_of >= spec.min_gap
        assert source.repeat_of is None
        assert (task.question, task.label, task.input) == (
            source.question,
            source.label,
            source.input,
        )


def test_no_question_is_in_two_sets() -> None:
    sets = question_sets(MixSpec(tasks=100, min_gap=20), 3, 4)
    texts = [{t.question.text for t in tasks} for tasks in sets]
    for i, one in enumerate(texts):
        for other in texts[i + 1 :]:
            assert not one & other


def test_answers_are_right() -> None:
    (tasks,) = question_sets(MixSpec(tasks=50, min_gap=10), 2, 1)
    for task in tasks:
        text, answer = task.question.text, task.question.answer
        numbers = [int(n) for n in re.findall(r"\d+", text)]
        if task.question.difficulty == "easy":
            assert text == f"What is {numbers[0]} + {numbers[1]}?" and answer == sum(numbers)
        else:
            a, b, m = numbers
            assert answer == (a * b) % m
    assert tasks[0].input == {"question": tasks[0].question.text, "difficulty": tasks[0].label}


# -- the two models --------------------------------------------------------------------------


def test_strong_answers_everything_right_in_the_schema() -> None:
    (tasks,) = question_sets(MixSpec(tasks=60, min_gap=10), 4, 1)
    for task in tasks:
        reply = model_reply(STRONG_MODEL, task.question.text)
        assert reply.well_formed
        answer = parse_json_answer(reply.text)
        assert schema_problems(OUTPUT_SCHEMA, answer, "output") == []
        assert answer_of(answer) == task.question.answer


def test_fast_answers_easy_ones_right_and_hard_ones_in_prose_the_schema_rejects() -> None:
    easy = model_reply(FAST_MODEL, "What is 417 + 389?")
    assert easy == model_reply(STRONG_MODEL, "What is 417 + 389?")
    assert answer_of(parse_json_answer(easy.text)) == 806
    hard = model_reply(FAST_MODEL, "What is (417 * 389) mod 97?")
    assert not hard.well_formed
    with pytest.raises(ValueError, match="not JSON"):
        parse_json_answer(hard.text)
    strong = model_reply(STRONG_MODEL, "What is (417 * 389) mod 97?")
    assert answer_of(parse_json_answer(strong.text)) == (417 * 389) % 97
    assert not model_reply(STRONG_MODEL, "hello").well_formed


def test_tokens_are_counted_from_text_sizes() -> None:
    assert prompt_tokens(["abcd", "abcde"]) == 3 + (4 + 1) + (4 + 2)
    assert completion_tokens("") == 1
    assert completion_tokens("x" * 41) == 11


# -- the judge and the tally -----------------------------------------------------------------


def _result(
    run_id: str,
    output: JsonValue = None,
    status: RunStatus = RunStatus.completed,
    cost: str = "0",
    saved: str = "0",
    attempts: int = 1,
    cached: bool = False,
) -> RunResult:
    usage = Usage(cost_usd=Decimal(cost), saved_usd=Decimal(saved), cached=cached)
    step = StepSummary(
        step=STEP, kind="llm", outcome=StepOutcome.succeeded, attempts=attempts, usage=usage
    )
    return RunResult(
        run_id=run_id,
        workflow="w",
        status=status,
        output=output,
        reason=None if status == RunStatus.completed else "broke",
        steps=[step],
        usage=usage,
        started_at=T0,
        finished_at=T0,
    )


def test_the_judge_wants_a_completed_run_with_the_labelled_integer() -> None:
    assert is_correct(_result("a", {"answer": 7, "working": "3 + 4 = 7"}), 7)
    assert not is_correct(_result("a", {"answer": 8}), 7)
    assert not is_correct(_result("a", {"answer": "7"}), 7)
    assert not is_correct(_result("a", {"answer": True}), 1)  # a bool is not the number 1
    assert not is_correct(_result("a", "7"), 7)
    assert not is_correct(_result("a", {"answer": 7}, status=RunStatus.failed), 7)
    assert not is_correct(None, 7)


def test_tally_judges_and_sums_the_costs_of_one_set() -> None:
    q1, q2, q3 = (Question(f"What is {n} + 1?", n + 1, "easy") for n in (1, 2, 3))
    tasks = [
        LabelledTask(q1, "easy"),
        LabelledTask(q2, "easy"),
        LabelledTask(q1, "easy", repeat_of=0),
        LabelledTask(q3, "easy"),
    ]
    results = {
        "r0": _result("r0", {"answer": 2}, cost="0.001"),
        "r1": _result("r1", {"answer": 3}, cost="0.0030", attempts=2),
        "r2": _result("r2", {"answer": 2}, saved="0.001", cached=True),
    }  # r3 never came back
    judged = tally(tasks, ["r0", "r1", "r2", "r3"], results)
    assert (judged.tasks, judged.results, judged.completed, judged.correct) == (4, 3, 3, 3)
    assert judged.quality == 0.75
    assert (judged.cost_usd, judged.saved_usd) == (Decimal("0.004"), Decimal("0.001"))
    assert (judged.cached_runs, judged.cached_repeats, judged.multi_attempt_runs) == (1, 1, 1)
    assert (
        judged.first_wrong
        == judged.first_unfinished
        == ("r3 (What is 3 + 1? expected 4): no result")
    )
    assert judged.unfinished == {"no result": 1}
    with pytest.raises(ValueError, match="4 tasks but 1 run ids"):
        tally(tasks, ["r0"], results)


# -- the workflows and the catalog -----------------------------------------------------------


def test_the_workflows_parse_and_route_as_described() -> None:
    baseline = parse_workflow(baseline_workflow_yaml())
    routed = parse_workflow(routed_workflow_yaml())
    plain, steered = baseline.step(STEP), routed.step(STEP)
    assert isinstance(plain, LlmStep) and isinstance(steered, LlmStep)
    assert (plain.model, plain.routes, plain.cascade) == ("strong", [], [])
    assert steered.model == "fast" and steered.cascade == ["strong"]
    assert [(r.when, r.model) for r in steered.routes] == [("input.difficulty == 'hard'", "strong")]
    for step in (plain, steered):
        assert (step.system, step.prompt, step.output_schema) == (
            SYSTEM,
            "{{ input.question }}",
            OUTPUT_SCHEMA,
        )


def test_the_model_catalog_has_both_routes_at_their_prices() -> None:
    catalog = ModelCatalog.model_validate(yaml.safe_load(cost_models_yaml("http://h:1/a/v1")))
    for name, price in PRICES.items():
        route = catalog.routes[name]
        assert (route.model, route.base_url, route.api_key_env) == (
            price.model,
            "http://h:1/a/v1",
            None,
        )
        assert route.cost(1000, 100) == price.cost(1000, 100)
    assert RoutePrice("m", Decimal(3), Decimal(15)).cost(1_000_000, 1_000_000) == Decimal(18)


# -- the model server ------------------------------------------------------------------------


async def test_the_server_answers_baton_openai_provider_and_keeps_a_ledger_per_arm() -> None:
    server = ChatServer()
    await server.start()
    try:
        catalog = ModelCatalog.model_validate(
            yaml.safe_load(cost_models_yaml(server.base_url("routed")))
        )
        question = "What is (417 * 389) mod 97?"
        messages = [
            ChatMessage(role="system", content=SYSTEM),
            ChatMessage(role="user", content=question),
        ]
        async with httpx.AsyncClient() as http:
            provider = OpenAIProvider(http, {})
            answers = {
                name: await provider.complete(
                    catalog.routes[name],
                    messages,
                    temperature=0.0,
                    max_tokens=None,
                    output_schema=OUTPUT_SCHEMA,
                    idempotency_key=f"k-{name}",
                )
                for name in ("strong", "fast")
            }
            missing = await http.post(f"http://127.0.0.1:{server.port}/nowhere", json={})
    finally:
        await server.stop()
    assert answer_of(json.loads(answers["strong"].text)) == (417 * 389) % 97
    assert answers["fast"].text == model_reply(FAST_MODEL, question).text
    assert answers["strong"].input_tokens == prompt_tokens([SYSTEM, question])
    assert answers["fast"].output_tokens == completion_tokens(answers["fast"].text)
    assert missing.status_code == 404
    ledger = server.ledger("routed")
    assert ledger.calls == {STRONG_MODEL: 1, FAST_MODEL: 1}
    assert ledger.malformed[FAST_MODEL] == 1 and ledger.malformed[STRONG_MODEL] == 0
    assert server.ledger("strong").calls == {}


def test_a_ledger_gives_what_was_added_since_a_snapshot() -> None:
    ledger = Ledger()
    ledger.calls["m"] += 2
    before = ledger.copy()
    ledger.calls["m"] += 3
    ledger.input_tokens["m"] += 10
    since = ledger.since(before)
    assert (since.calls["m"], since.input_tokens["m"], before.calls["m"]) == (3, 10, 2)


# -- the figure ------------------------------------------------------------------------------


def _rep(
    cost: float, quality: float = 1.0, saved: float = 0.0, results: int = 100
) -> CostRepetition:
    correct = round(quality * 100)
    return CostRepetition(
        question_set=1,
        tasks=100,
        repeats=30,
        results=results,
        completed=results,
        correct=correct,
        quality=correct / 100,
        cost_usd=cost,
        saved_usd=saved,
        cached_runs=30,
        cached_repeats=30,
        multi_attempt_runs=7,
        model_calls={},
        malformed_answers={FAST_MODEL: 8},
        provider_billed_usd=cost,
        first_wrong=None if results == 100 else "r9: no result",
    )


def _arm(key: str, reps: list[CostRepetition], cache: str = "on") -> Measurement:
    settings = CostSettings(
        workflow="w",
        tasks=100,
        repeats=30,
        distinct=70,
        hard=28,
        mislabelled=7,
        min_gap=33,
        seed=9,
        rate_per_s=50,
        guarantee="exactly_once",
        routes={},
        cache=cache,
    )
    return Measurement(key=key, kind="cost", subject="baton", cost=reps, cost_settings=settings)


def test_t9_pairs_the_arms_round_by_round() -> None:
    strong = _arm("cost/strong", [_rep(0.10), _rep(0.20), _rep(0.10)])
    routed = _arm("cost/routed", [_rep(0.03, saved=0.01), _rep(0.08, saved=0.02), _rep(0.04)])
    figure = t9(strong, routed)
    assert figure.status == "measured" and figure.value is not None
    assert figure.value.samples == pytest.approx([0.3, 0.4, 0.4])
    assert (figure.value.median, figure.value.min, figure.value.max) == pytest.approx(
        (0.4, 0.3, 0.4)
    )
    assert figure.verdict == "meets"
    absolute = {a.label: a.value for a in figure.absolute}
    assert absolute["always-strong cost"].samples == pytest.approx([1.0, 2.0, 1.0])
    assert absolute["routing alone (cache's savings added back)"].samples == pytest.approx(
        [0.4, 0.5, 0.4]
    )
    assert figure.note is not None and figure.note.startswith("equal judged quality")
    assert figure.sources == ["cost/strong", "cost/routed"]


def test_t9_misses_when_quality_is_lower_however_cheap() -> None:
    strong = _arm("cost/strong", [_rep(0.10)])
    routed = _arm("cost/routed", [_rep(0.01, quality=0.9)])
    figure = t9(strong, routed)
    assert figure.value is not None and figure.value.median == pytest.approx(0.1)
    assert figure.verdict == "misses"
    assert figure.note is not None and "quality is not equal: routed 90.0%" in figure.note


def test_t9_fails_rather_than_guess_when_results_are_missing() -> None:
    assert t9(None, None).status == "failed"
    strong = _arm("cost/strong", [_rep(0.10)])
    routed = _arm("cost/routed", [_rep(0.03, results=97)])
    figure = t9(strong, routed)
    assert (figure.status, figure.value, figure.verdict) == ("failed", None, "failed")
    assert figure.note is not None and "routed arm" in figure.note and "97 of 100" in figure.note


def test_t9_is_selectable_and_needs_the_broker() -> None:
    assert "T9" in MEASURED and parse_only("t9") == {"T9"}
    chosen = plan(frozenset({"T9"}))
    assert chosen.cost and chosen.needs_kafka
    assert (chosen.codec, chosen.raw_pipe, chosen.closed, chosen.open) == (False, False, (), ())
    assert not plan(frozenset({"T4"})).cost


def test_counts_print_as_whole_numbers() -> None:
    assert format_spread(spread([30.0, 28.0, 30.0]), "runs") == "30 runs [28–30]"


def test_a_failed_run_is_wrong_but_its_cost_still_counts() -> None:
    task = LabelledTask(Question("What is (2 * 3) mod 5?", 1, "hard"), "easy")
    failed = _result("r0", status=RunStatus.failed, cost="0.002", attempts=2)
    judged = tally([task], ["r0"], {"r0": failed})
    assert (judged.correct, judged.completed, judged.results) == (0, 0, 1)
    assert (judged.cost_usd, judged.unfinished) == (Decimal("0.002"), {"failed": 1})
    assert judged.first_unfinished == "r0 (What is (2 * 3) mod 5? expected 1): failed: broke"
