"""Dead letters and replays without a broker: time parsing, filters, dedup, replay plans."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import click
import pytest
from click.testing import CliRunner

from streams._deadletters import DeadLetterFilter, is_exhausted_step, latest_by_id
from streams._replay import (
    Redrive,
    Republish,
    Skip,
    plan_letter_replays,
    replay_range,
    rerun_task,
)
from streams.cli._dlq import (
    TIME,
    _topic_name,
    decode_payload,
    dlq_group,
    letter_json,
    parse_time,
    preview,
    replay_command,
)
from topics import (
    AttemptRecord,
    Codec,
    ConfigurationError,
    ControlAction,
    DeadLetter,
    StepKind,
    StepRequested,
    TaskSubmitted,
    TopicCatalog,
    partition_for,
)

NOW = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
CATALOG = TopicCatalog(prefix="acme", partitions=4)
CODEC = Codec()


def raw_letter(offset: int = 7, *, at: datetime = NOW, **changes: object) -> DeadLetter:
    values: dict[str, object] = {
        "dead_letter_id": f"acme.tasks/2/{offset}",
        "origin_topic": "acme.tasks",
        "origin_partition": 2,
        "origin_offset": offset,
        "key": b"junk",
        "payload": b"\x00\x00\x00\x00\x7fnot avro",
        "error_class": "DecodeError",
        "error": "unknown schema id 127",
        "at": at,
    }
    values.update(changes)
    return DeadLetter.model_validate(values)


def step_request(run_id: str = "run-1", step: str = "classify") -> StepRequested:
    return StepRequested(
        run_id=run_id,
        step=step,
        kind=StepKind.llm,
        attempt=3,
        idempotency_key=f"{run_id}/{step}",
        workflow="support-triage",
        workflow_version="abc123",
        params={"prompt": "Classify this ticket"},
        dispatched_at=NOW,
        deadline_at=NOW + timedelta(seconds=30),
    )


def exhausted_letter(
    run_id: str = "run-1", step: str = "classify", attempt: int = 3, *, at: datetime = NOW
) -> DeadLetter:
    return DeadLetter(
        dead_letter_id=f"{run_id}/{step}/{attempt}",
        origin_topic="acme.steps.llm",
        origin_partition=partition_for(run_id, 4),
        key=run_id.encode(),
        payload=CODEC.encode(step_request(run_id, step)),
        payload_type="StepRequested",
        error_class="ProviderTimeout",
        error="no answer within 30s",
        run_id=run_id,
        workflow="support-triage",
        step=step,
        attempts=[
            AttemptRecord(attempt=n, at=at, error_class="ProviderTimeout", message="timeout")
            for n in range(1, attempt + 1)
        ],
        cost_usd=Decimal("0.0012"),
        at=at,
    )


# -- times --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ago"),
    [
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("2h", timedelta(hours=2)),
        ("1.5h", timedelta(minutes=90)),
        ("1d", timedelta(days=1)),
        ("1w", timedelta(weeks=1)),
        (" 2H ", timedelta(hours=2)),
        ("now", timedelta(0)),
    ],
)
def test_relative_times_are_that_long_before_now(text: str, ago: timedelta) -> None:
    assert parse_time(text, NOW) == NOW - ago


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-04-30T08:15:00Z", datetime(2025, 4, 30, 8, 15, tzinfo=UTC)),
        (
            "2025-04-30T10:15:00+02:00",
            datetime(2025, 4, 30, 10, 15, tzinfo=timezone(timedelta(hours=2))),
        ),
        ("2025-04-30T08:15:00", datetime(2025, 4, 30, 8, 15, tzinfo=UTC)),
        ("2025-04-30", datetime(2025, 4, 30, tzinfo=UTC)),
    ],
)
def test_iso_times_keep_their_zone_and_naive_ones_are_utc(text: str, expected: datetime) -> None:
    parsed = parse_time(text, NOW)
    assert parsed == expected
    assert parsed.utcoffset() is not None


@pytest.mark.parametrize("text", ["yesterday", "2h ago", "-2h", "", "2025-13-01", "5 parsecs"])
def test_a_bad_time_says_which_forms_work(text: str) -> None:
    with pytest.raises(ConfigurationError, match=r"not a time: give ISO-8601 .* \(30m, 2h, 1d\)"):
        parse_time(text, NOW)


def test_the_click_time_type_turns_a_bad_time_into_a_usage_error() -> None:
    assert abs(TIME.convert("1h", None, None) - (datetime.now(UTC) - timedelta(hours=1))) < (
        timedelta(seconds=5)
    )
    with pytest.raises(click.BadParameter, match="not a time"):
        TIME.convert("soon", None, None)


# -- filters ------------------------------------------------------------------------------------


def test_an_empty_filter_keeps_everything() -> None:
    where = DeadLetterFilter()
    assert where.matches(raw_letter()) and where.matches(exhausted_letter())


@pytest.mark.parametrize(
    ("where", "raw", "exhausted"),
    [
        (DeadLetterFilter(workflow="support-triage"), False, True),
        (DeadLetterFilter(workflow="other"), False, False),
        (DeadLetterFilter(step="classify"), False, True),
        (DeadLetterFilter(step="draft"), False, False),
        (DeadLetterFilter(error_class="DecodeError"), True, False),
        (DeadLetterFilter(error_class="providertimeout"), False, True),
        (DeadLetterFilter(run_id="run-1"), False, True),
        (DeadLetterFilter(run_id="run-2"), False, False),
        (DeadLetterFilter(origin_topic="acme.tasks"), True, False),
        (DeadLetterFilter(origin_topic="acme.steps.llm"), False, True),
        (DeadLetterFilter(origin_topic="tasks"), False, False),  # full names only
        (DeadLetterFilter(workflow="support-triage", error_class="DecodeError"), False, False),
    ],
)
def test_each_filter_field_narrows_the_letters(
    where: DeadLetterFilter, raw: bool, exhausted: bool
) -> None:
    assert where.matches(raw_letter()) is raw
    assert where.matches(exhausted_letter()) is exhausted


def test_the_time_range_includes_since_and_excludes_until() -> None:
    where = DeadLetterFilter(since=NOW, until=NOW + timedelta(hours=1))
    assert where.matches(raw_letter(at=NOW))
    assert where.matches(raw_letter(at=NOW + timedelta(minutes=59)))
    assert not where.matches(raw_letter(at=NOW - timedelta(microseconds=1)))
    assert not where.matches(raw_letter(at=NOW + timedelta(hours=1)))
    assert DeadLetterFilter(since=NOW).matches(raw_letter(at=NOW + timedelta(days=300)))
    assert DeadLetterFilter(until=NOW).matches(raw_letter(at=NOW - timedelta(days=300)))


def test_a_filter_refuses_naive_times_and_an_empty_range() -> None:
    with pytest.raises(ConfigurationError, match="since must carry a time zone"):
        DeadLetterFilter(since=datetime(2025, 5, 1))
    with pytest.raises(ConfigurationError, match="must be before until"):
        DeadLetterFilter(since=NOW, until=NOW)


# -- dedup --------------------------------------------------------------------------------------


def test_each_id_is_kept_once_the_copy_with_the_latest_time() -> None:
    first = raw_letter(7, at=NOW, error="first copy")
    later = raw_letter(7, at=NOW + timedelta(seconds=3), error="later copy")
    other = raw_letter(8, at=NOW + timedelta(seconds=1))
    assert latest_by_id([later, other, first]) == [other, later]
    assert latest_by_id([first, other, later]) == [other, later]


def test_copies_with_the_same_time_keep_the_one_read_last() -> None:
    one = raw_letter(7, error="read first")
    two = raw_letter(7, error="read last")
    assert latest_by_id([one, two]) == [two]


def test_letters_come_oldest_first_then_by_id() -> None:
    b = raw_letter(2, at=NOW)
    a = raw_letter(1, at=NOW)
    old = exhausted_letter(at=NOW - timedelta(hours=1))
    assert [x.dead_letter_id for x in latest_by_id([b, a, old])] == [
        "run-1/classify/3",
        "acme.tasks/2/1",
        "acme.tasks/2/2",
    ]


def test_exhausted_steps_are_told_from_records_by_their_step() -> None:
    assert is_exhausted_step(exhausted_letter())
    assert not is_exhausted_step(raw_letter())
    # The coordinator dead-letters a step result for an unknown step with the run, no step.
    assert not is_exhausted_step(raw_letter(run_id="run-9", payload_type="StepResult"))


# -- replay plans -------------------------------------------------------------------------------


def test_an_exhausted_step_is_replayed_as_a_redrive_of_its_run_at_that_step() -> None:
    (plan,) = plan_letter_replays([exhausted_letter()], CATALOG, user="ops-ann", now=NOW)
    assert isinstance(plan, Redrive)
    command = plan.command
    assert command.action == ControlAction.redrive
    assert (command.run_id, command.step) == ("run-1", "classify")
    assert command.reason == "dead letter run-1/classify/3 replayed by ops-ann"
    assert (command.issued_by, command.issued_at) == ("ops-ann", NOW)
    assert uuid.UUID(command.command_id)
    assert plan.describe() == "redrive requested"
    assert plan.describe(done=False) == "would request a redrive"


def test_a_record_is_replayed_byte_for_byte_to_its_topic_partition_and_key() -> None:
    letter = raw_letter()
    (plan,) = plan_letter_replays([letter], CATALOG, user="ops", now=NOW)
    assert plan == Republish("acme.tasks/2/7", "acme.tasks", 2, b"junk", letter.payload)
    assert plan.describe() == "re-published to acme.tasks[2]"


def test_a_letter_without_its_partition_goes_to_its_keys_partition() -> None:
    letter = raw_letter(origin_partition=None, key=b"run-42")
    (plan,) = plan_letter_replays([letter], CATALOG, user="ops", now=NOW)
    assert isinstance(plan, Republish)
    assert plan.partition == partition_for("run-42", 4)


def test_one_redrive_per_run_and_step_however_many_letters_it_has() -> None:
    letters = [exhausted_letter(attempt=3), exhausted_letter(attempt=6), exhausted_letter("run-2")]
    plans = plan_letter_replays(letters, CATALOG, user="ops", now=NOW)
    assert [type(p) for p in plans] == [Redrive, Skip, Redrive]
    assert plans[1].describe() == "skipped: redrive already asked for by run-1/classify/3"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"origin_topic": "prod.tasks"},
            r"origin topic 'prod.tasks' is not a baton topic under prefix 'acme'",
        ),
        ({"origin_topic": "acme.run-state"}, r"refusing to write to acme.run-state"),
        ({"origin_topic": "acme.dead-letter"}, r"refusing to write to acme.dead-letter"),
        ({"origin_partition": 4}, r"partition 4 does not exist on acme.tasks \(4 partitions\)"),
        ({"origin_partition": None, "key": None}, r"no partition to put it back on"),
        ({"origin_partition": None, "key": b"\xff"}, r"no partition to put it back on"),
    ],
)
def test_letters_that_cannot_go_back_are_refused_with_the_reason(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        plan_letter_replays([raw_letter(**changes)], CATALOG, user="ops", now=NOW)


def test_every_refusal_is_listed_and_nothing_is_planned() -> None:
    letters = [
        exhausted_letter(),
        raw_letter(1, origin_topic="prod.tasks"),
        raw_letter(2, origin_topic="old.step-results"),
    ]
    with pytest.raises(ConfigurationError) as caught:
        plan_letter_replays(letters, CATALOG, user="ops", now=NOW)
    assert "'prod.tasks'" in str(caught.value) and "'old.step-results'" in str(caught.value)


# -- reruns and range checks --------------------------------------------------------------------


def test_a_rerun_is_a_new_run_labelled_with_the_old_one() -> None:
    task = TaskSubmitted(
        task_id="ticket-7",
        workflow="support-triage",
        input={"ticket_id": "7", "text": "broken"},
        tenant="acme",
        labels={"source": "email"},
        submitted_at=NOW - timedelta(days=1),
    )
    copy = rerun_task(task, "a1b2c3d4", NOW)
    assert copy.task_id == "ticket-7.rerun-a1b2c3d4"
    assert copy.labels == {"source": "email", "rerun_of": "ticket-7"}
    assert copy.submitted_at == NOW
    assert (copy.workflow, copy.input, copy.tenant) == (task.workflow, task.input, task.tenant)


def test_a_rerun_whose_id_would_be_too_long_is_refused() -> None:
    task = TaskSubmitted(task_id="x" * 195, workflow="w", input={})
    with pytest.raises(ConfigurationError, match="cannot rerun task"):
        rerun_task(task, "a1b2c3d4", NOW)


@pytest.mark.parametrize(
    ("topic", "rerun", "since", "until", "message"),
    [
        ("acme.run-state", False, NOW, NOW + timedelta(hours=1), "coordinator's changelog"),
        ("acme.dead-letter", False, NOW, NOW + timedelta(hours=1), "baton dlq replay"),
        ("acme.results", True, NOW, NOW + timedelta(hours=1), "--rerun is for acme.tasks only"),
        ("prod.tasks", False, NOW, NOW + timedelta(hours=1), "not a baton topic"),
        ("acme.tasks", False, NOW, NOW, "the range is empty"),
        ("acme.tasks", False, datetime(2025, 5, 1), NOW, "since must carry a time zone"),
    ],
)
async def test_a_range_replay_refuses_bad_requests_before_touching_kafka(
    topic: str, rerun: bool, since: datetime, until: datetime, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        await replay_range("127.0.0.1:1", CATALOG, topic, since, until, rerun)


def test_catalog_topics_may_be_named_without_the_prefix() -> None:
    assert _topic_name(CATALOG, "tasks") == "acme.tasks"
    assert _topic_name(CATALOG, "steps.llm") == "acme.steps.llm"
    assert _topic_name(CATALOG, "acme.tasks") == "acme.tasks"
    assert _topic_name(CATALOG, "prod.tasks") == "prod.tasks"


# -- showing letters ----------------------------------------------------------------------------


def test_a_payload_that_names_an_event_is_shown_decoded() -> None:
    decoded = decode_payload(exhausted_letter(), CODEC)
    assert decoded is not None
    assert (decoded["run_id"], decoded["step"], decoded["attempt"]) == ("run-1", "classify", 3)


def test_a_json_task_payload_is_shown_decoded_with_its_key_as_task_id() -> None:
    letter = raw_letter(
        payload=b'{"workflow": "w", "input": {"a": 1}}', payload_type="TaskSubmitted", key=b"t-9"
    )
    decoded = decode_payload(letter, CODEC)
    assert decoded is not None and decoded["task_id"] == "t-9"


def test_payloads_that_do_not_decode_are_not_shown_decoded() -> None:
    assert decode_payload(raw_letter(), CODEC) is None
    assert decode_payload(raw_letter(payload_type="StepResult"), CODEC) is None
    assert decode_payload(raw_letter(payload_type="NoSuchEvent"), CODEC) is None


def test_a_preview_shows_text_escaped_and_binary_as_hex() -> None:
    assert preview(b"") == "(empty)"
    assert preview(b'{"oops": true}') == '{"oops": true}'
    assert preview(b"a line with a \x07 bell") == "a line with a \\x07 bell"
    dump = preview(b"\x00\x00\x00\x00\x7fnot avro\xff")
    assert dump.splitlines() == [
        "00000000  00 00 00 00 7f 6e 6f 74 20 61 76 72 6f ff" + " " * 6 + "  |.....not avro.|"
    ]
    long = preview(bytes(range(256)) * 2, limit=32)
    assert long.splitlines()[-1] == "… 480 more bytes"
    assert len(long.splitlines()) == 3
    assert preview(b"a" * 300, limit=10) == "a" * 10 + "\n… 290 more characters"


def test_letters_as_json_name_their_kind_and_keep_bytes_as_hex() -> None:
    raw = letter_json(raw_letter())
    assert raw["kind"] == "record" and raw["key"] == "junk" and raw["key_hex"] == "6a756e6b"
    assert "payload_hex" not in raw
    full = letter_json(exhausted_letter(), CODEC)
    assert full["kind"] == "exhausted_step" and full["cost_usd"] == "0.0012"
    assert len(full["attempts"]) == 3
    assert bytes.fromhex(full["payload_hex"]) == exhausted_letter().payload
    assert full["payload_decoded"]["step"] == "classify"
    assert letter_json(raw_letter(key=b"\xff"))["key"] is None


# -- command-line usage -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give dead letter ids, or --all"),
        (["a/1/2", "--all"], "not both"),
        (["a/1/2", "--workflow", "w"], "filters go with --all"),
    ],
)
def test_dlq_replay_wants_ids_or_all_with_filters(args: list[str], message: str) -> None:
    result = CliRunner().invoke(dlq_group, ["replay", *args])
    assert isinstance(result.exception, ConfigurationError)
    assert message in str(result.exception)


def test_replay_needs_a_topic_and_a_start() -> None:
    result = CliRunner().invoke(replay_command, ["--topic", "tasks"])
    assert result.exit_code == 2 and "--from" in result.output
    result = CliRunner().invoke(replay_command, ["--topic", "tasks", "--from", "later"])
    assert result.exit_code == 2 and "not a time" in result.output
