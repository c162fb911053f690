"""docs/extending.md: its workflow runs, its error messages are baton's, its TOML the example's."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from processors import installed_kinds
from streams.workflow import WorkflowError, check_kinds, parse_workflow
from tests.unit.test_decide import Run, ok, task
from topics import RunStatus, StepKind, TopicCatalog

ROOT = Path(__file__).parents[2]
DOC = (ROOT / "docs" / "extending.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC, flags=re.DOTALL)


def _workflow() -> str:
    (text,) = [b for b in _blocks("yaml") if b.startswith("workflow:")]
    return text


def test_the_doc_s_workflow_deploys_and_runs_with_the_example_kind() -> None:
    workflow = parse_workflow(_workflow(), "moods.yaml")
    check_kinds(workflow, installed_kinds(), "moods.yaml")

    run = Run(workflow, catalog=TopicCatalog(custom_kinds=("sentiment",)))
    run.send(task(input={"message": "Thanks, that was fast"}))
    mood = run.request("mood")
    assert (mood.kind, mood.custom_kind) == (StepKind.custom, "sentiment")
    assert mood.params == {"text": "Thanks, that was fast", "threshold": 0.25}
    assert (mood.deadline_at - mood.dispatched_at).total_seconds() == 20
    run.send(ok(mood, {"label": "positive", "score": 1.0, "matched": 2}))
    run.send(ok(run.request("reply"), {"mood": "positive", "score": 1.0}))
    (result,) = run.results()
    assert result.status is RunStatus.completed


@pytest.mark.parametrize(
    ("change", "index"),
    [
        (("kind: sentiment", "kind: sentimnet"), 0),
        (('threshold: "{{ input.threshold | default(0.25) }}"', "threshold: 2"), 1),
        (('      text: "{{ input.message }}"\n', ""), 2),
    ],
)
def test_the_doc_s_deploy_errors_are_what_baton_says(change: tuple[str, str], index: int) -> None:
    (shown,) = [b for b in _blocks("text") if "moods.yaml:" in b]
    expected = shown.splitlines()[index]
    text = _workflow().replace(*change)
    assert text != _workflow()
    with pytest.raises(WorkflowError) as caught:
        check_kinds(parse_workflow(text, "moods.yaml"), installed_kinds(), "moods.yaml")
    assert str(caught.value) == expected


def test_the_doc_s_entry_point_is_the_example_package_s() -> None:
    (shown,) = _blocks("toml")
    package = tomllib.loads((ROOT / "examples/baton-sentiment/pyproject.toml").read_text())
    doc = tomllib.loads(shown)
    group = "baton.processors"
    assert doc["project"]["entry-points"][group] == package["project"]["entry-points"][group]
    assert doc["project"]["dependencies"] == package["project"]["dependencies"]
    assert doc["project"]["name"] == package["project"]["name"]
