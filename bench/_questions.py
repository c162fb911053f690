"""T9's labelled workload: questions with known answers, how the two models answer, the judge.

Pure: generation is seeded, nothing here touches a clock, a socket or a broker.

A question is **easy** (``What is 417 + 389?``) or **hard** (``What is (417 * 389) mod
97?``); its answer is computed, so it is known. Each task carries a difficulty **label**,
the only thing a router sees. A share of the hard questions is labelled easy (the mistakes a
real labeller or classifier makes), so routing alone is not enough and the cascade has work.
A share of the tasks are **exact repeats** of an earlier task (same question, same label),
each at least ``min_gap`` tasks after its first occurrence, so a response cache can serve
them: the bench measures what the cache saves on repeats, not a race between two identical
calls in flight.

The two models (served over OpenAI's wire format by ``bench._chatserver``):

- ``strong`` answers every question correctly: one JSON object, a short working and the
  answer;
- ``fast`` answers easy questions the same way, and hard ones with a guess in prose. That
  is wrong in a way a step can detect: it is not JSON, so the step's ``output_schema``
  rejects it.

Token counts are estimated from text sizes, as a tokenizer of English and digits roughly
counts them: ``ceil(characters / 4)`` per message content plus 4 per message and 3 to
prime the reply for the prompt; ``ceil(characters / 4)`` of the answer for the completion.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from pydantic import JsonValue

from topics import RunResult, RunStatus

__all__ = [
    "FAST_MODEL",
    "STRONG_MODEL",
    "Difficulty",
    "LabelledTask",
    "MixSpec",
    "ModelReply",
    "Question",
    "Tally",
    "answer_of",
    "completion_tokens",
    "is_correct",
    "model_reply",
    "prompt_tokens",
    "question_sets",
    "tally",
]

Difficulty = Literal["easy", "hard"]

#: The provider's model ids of the two routes.
STRONG_MODEL = "bench-strong"
FAST_MODEL = "bench-fast"

_EASY = re.compile(r"What is (\d+) \+ (\d+)\?")
_HARD = re.compile(r"What is \((\d+) \* (\d+)\) mod (\d+)\?")
_MODULI = (37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97)


@dataclass(frozen=True)
class Question:
    """A question, its correct answer, and how hard it really is."""

    text: str
    answer: int
    difficulty: Difficulty


@dataclass(frozen=True)
class LabelledTask:
    """One task of the workload.

    Attributes:
        question: What is asked, with the answer the judge expects.
        label: The difficulty the task says it has: what a router sees. Differs from
            ``question.difficulty`` for mislabelled tasks.
        repeat_of: For an exact repeat, the position of the task it repeats.
    """

    question: Question
    label: Difficulty
    repeat_of: int | None = None

    @property
    def input(self) -> dict[str, JsonValue]:
        """The workflow input: the question and its label."""
        return {"question": self.question.text, "difficulty": self.label}


@dataclass(frozen=True)
class MixSpec:
    """The shape of one question set.

    Attributes:
        tasks: Tasks per set, repeats included.
        repeat_share: Share of the tasks that repeat an earlier one exactly.
        hard_share: Share of the distinct questions that are hard.
        mislabelled_share: Share of the hard questions labelled easy.
        min_gap: A repeat comes at least this many tasks after the task it repeats.

    Raises:
        ValueError: Shares outside 0..1, or too few tasks for the repeats and the gap.
    """

    tasks: int = 200
    repeat_share: float = 0.3
    hard_share: float = 0.4
    mislabelled_share: float = 0.25
    min_gap: int = 40

    def __post_init__(self) -> None:
        for name in ("repeat_share", "hard_share", "mislabelled_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be within 0..1, not {getattr(self, name)}")
        if self.tasks < 1 or self.min_gap < 1:
            raise ValueError("tasks and min_gap must be at least 1")
        if self.repeats and self.tasks - self.min_gap < self.repeats:
            raise ValueError(
                f"{self.repeats} repeats do not fit in {self.tasks} tasks with a gap of "
                f"{self.min_gap}"
            )

    @property
    def repeats(self) -> int:
        """Exact repeats per set."""
        return round(self.tasks * self.repeat_share)

    @property
    def distinct(self) -> int:
        """Distinct questions per set."""
        return self.tasks - self.repeats

    @property
    def hard(self) -> int:
        """Hard questions among the distinct ones."""
        return round(self.distinct * self.hard_share)

    @property
    def mislabelled(self) -> int:
        """Hard questions labelled easy, among the distinct ones."""
        return round(self.hard * self.mislabelled_share)


def question_sets(spec: MixSpec, seed: int, sets: int) -> list[list[LabelledTask]]:
    """``sets`` question sets, the same for the same arguments.

    No question appears in two sets, so a response cache filled by one set (a warm-up, an
    earlier repetition) cannot serve another: only a set's own repeats can hit.
    """
    rng = random.Random(seed)
    seen: set[str] = set()
    return [_one_set(spec, rng, seen) for _ in range(sets)]


def _one_set(spec: MixSpec, rng: random.Random, seen: set[str]) -> list[LabelledTask]:
    hard = set(rng.sample(range(spec.distinct), spec.hard))
    mislabelled = set(rng.sample(sorted(hard), spec.mislabelled))
    firsts: list[LabelledTask] = []
    for index in range(spec.distinct):
        question = _fresh(rng, seen, "hard" if index in hard else "easy")
        label: Difficulty = "easy" if index in mislabelled else question.difficulty
        firsts.append(LabelledTask(question, label))
    repeat_at = set(rng.sample(range(spec.min_gap, spec.tasks), spec.repeats))
    tasks: list[LabelledTask] = []
    originals: list[int] = []  # positions of first occurrences so far
    queue = iter(firsts)
    for position in range(spec.tasks):
        if position in repeat_at:
            earlier = [p for p in originals if p <= position - spec.min_gap]
            source = rng.choice(earlier)
            first = tasks[source]
            tasks.append(LabelledTask(first.question, first.label, repeat_of=source))
        else:
            originals.append(position)
            tasks.append(next(queue))
    return tasks


def _fresh(rng: random.Random, seen: set[str], difficulty: Difficulty) -> Question:
    while True:
        a, b = rng.randint(100, 999), rng.randint(100, 999)
        if difficulty == "easy":
            question = Question(f"What is {a} + {b}?", a + b, "easy")
        else:
            m = rng.choice(_MODULI)
            question = Question(f"What is ({a} * {b}) mod {m}?", (a * b) % m, "hard")
        if question.text not in seen:
            seen.add(question.text)
            return question


@dataclass(frozen=True)
class ModelReply:
    """What a model answers: the text, and whether it is the JSON the step asked for."""

    text: str
    well_formed: bool


def model_reply(model: str, prompt: str) -> ModelReply:
    """How ``model`` (``STRONG_MODEL`` or ``FAST_MODEL``) answers the question in ``prompt``."""
    easy = _EASY.search(prompt)
    if easy is not None:
        a, b = int(easy.group(1)), int(easy.group(2))
        return _json(f"{a} + {b} = {a + b}", a + b)
    hard = _HARD.search(prompt)
    if hard is None:
        return ModelReply("I could not find a question in your message.", well_formed=False)
    a, b, m = (int(hard.group(i)) for i in (1, 2, 3))
    if model == FAST_MODEL:
        guess = round(a * b, -3)
        return ModelReply(
            f"That needs a long multiplication: {a} * {b} is roughly {guess:,}, so the "
            f"remainder mod {m} is probably small, maybe {m // 3}.",
            well_formed=False,
        )
    product = a * b
    return _json(
        f"{a} * {b} = {product}; {product} = {product // m} * {m} + {product % m}", product % m
    )


def _json(working: str, answer: int) -> ModelReply:
    return ModelReply(json.dumps({"working": working, "answer": answer}), well_formed=True)


def _tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def prompt_tokens(contents: Sequence[str]) -> int:
    """Prompt tokens of a conversation whose messages have these contents."""
    return 3 + sum(4 + _tokens(content) for content in contents)


def completion_tokens(text: str) -> int:
    """Completion tokens of an answer."""
    return max(1, _tokens(text))


def answer_of(output: JsonValue) -> int | None:
    """The integer answer in a run's output (``{"answer": n, ...}``), if there is one."""
    if not isinstance(output, Mapping):
        return None
    answer = output.get("answer")
    # bool is an int to Python; an answer of `true` is not the number 1.
    return answer if isinstance(answer, int) and not isinstance(answer, bool) else None


def is_correct(result: RunResult | None, expected: int) -> bool:
    """The judge: the run completed and its output's answer is the labelled one."""
    return (
        result is not None
        and result.status == RunStatus.completed
        and answer_of(result.output) == expected
    )


@dataclass(frozen=True)
class Tally:
    """One arm's runs of one question set, judged and costed.

    Attributes:
        tasks: Runs submitted.
        results: Runs that ended (a result arrived), whatever their status.
        completed: Runs that completed.
        correct: Runs the judge accepted.
        cost_usd: Sum of the runs' ``usage.cost_usd``: every model call they paid for.
        saved_usd: Sum of the runs' ``usage.saved_usd``: what the cache's answers had cost.
        cached_runs: Runs whose model step was answered from the response cache (at least
            once: a cascaded step may miss on the fast route and hit on the strong one).
        cached_repeats: Of those, runs that are exact repeats.
        multi_attempt_runs: Runs whose model step took more than one attempt (moved up
            the cascade, or retried).
        unfinished: Runs that did not complete, by how they ended (``no result``: none
            arrived in time).
        first_wrong: One run the judge refused, and why.
        first_unfinished: One run that did not complete, and why.
    """

    tasks: int
    results: int
    completed: int
    correct: int
    cost_usd: Decimal
    saved_usd: Decimal
    cached_runs: int
    cached_repeats: int
    multi_attempt_runs: int
    unfinished: dict[str, int]
    first_wrong: str | None
    first_unfinished: str | None

    @property
    def quality(self) -> float:
        """Share of the runs submitted that the judge accepted."""
        return self.correct / self.tasks if self.tasks else 0.0


def tally(
    tasks: Sequence[LabelledTask], run_ids: Sequence[str], results: Mapping[str, RunResult]
) -> Tally:
    """Judge and cost the runs of one question set (``run_ids[i]`` ran ``tasks[i]``)."""
    if len(tasks) != len(run_ids):
        raise ValueError(f"{len(tasks)} tasks but {len(run_ids)} run ids")
    correct = completed = cached = cached_repeats = multi = 0
    cost = saved = Decimal(0)
    first_wrong = first_unfinished = None
    unfinished: Counter[str] = Counter()
    for task, run_id in zip(tasks, run_ids, strict=True):
        result = results.get(run_id)
        if is_correct(result, task.question.answer):
            correct += 1
        elif first_wrong is None:
            first_wrong = _why_wrong(task, run_id, result)
        if result is None or result.status != RunStatus.completed:
            unfinished["no result" if result is None else result.status.value] += 1
            first_unfinished = first_unfinished or _why_wrong(task, run_id, result)
        if result is None:
            continue
        completed += result.status == RunStatus.completed
        cost += result.usage.cost_usd
        saved += result.usage.saved_usd
        if result.usage.saved_usd > 0 or any(s.usage.cached for s in result.steps):
            cached += 1
            cached_repeats += task.repeat_of is not None
        multi += any(s.attempts > 1 for s in result.steps)
    return Tally(
        tasks=len(tasks),
        results=sum(1 for run_id in run_ids if run_id in results),
        completed=completed,
        correct=correct,
        cost_usd=cost,
        saved_usd=saved,
        cached_runs=cached,
        cached_repeats=cached_repeats,
        multi_attempt_runs=multi,
        unfinished=dict(unfinished),
        first_wrong=first_wrong,
        first_unfinished=first_unfinished,
    )


def _why_wrong(task: LabelledTask, run_id: str, result: RunResult | None) -> str:
    asked = f"{run_id} ({task.question.text} expected {task.question.answer})"
    if result is None:
        return f"{asked}: no result"
    if result.status != RunStatus.completed:
        return f"{asked}: {result.status.value}: {result.reason}"
    return f"{asked}: answered {json.dumps(result.output)[:120]}"
