"""The topic catalog: the one place where topic names, keys, value types and configs live.

Everything else refers to catalog entries (``catalog.tasks``, ``catalog.steps("llm")``), so a
typo is an ``AttributeError`` at import rather than a silently empty stream.

A step kind a package adds (``baton.processors``) has a request topic like a built-in's,
``<prefix>.steps.<kind>``, for each kind of ``custom_kinds`` (the kinds installed where the
catalog is built): ``create_topics`` makes them, and a kind not listed has no topic, so a
request is never sent to a topic no worker created.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

from pydantic_core import PydanticCustomError

from topics._errors import ConfigurationError
from topics._events import (
    BUILTIN_KINDS,
    ApprovalDecision,
    ApprovalRequested,
    AuditAnchor,
    CacheEntry,
    ControlCommand,
    DeadLetter,
    Event,
    RunEvent,
    RunEventBatch,
    RunJournal,
    RunResult,
    SpendRecorded,
    StepKind,
    StepRequested,
    StepResult,
    StreamChunk,
    TaskSubmitted,
    TimerFired,
    WorkflowDefinition,
)
from topics._ids import check_kind

__all__ = [
    "DEFAULT_RETRY_TIERS",
    "DEFAULT_RUN_RETENTION_S",
    "LLM_CACHE_RETENTION_MS",
    "RetryTier",
    "Topic",
    "TopicCatalog",
]

_HOUR_MS = 3_600_000
_DAY_MS = 24 * _HOUR_MS

#: How long a finished run is remembered by default (as Temporal's namespace retention).
DEFAULT_RUN_RETENTION_S = 7 * 24 * 3600.0

#: How long the response cache topic keeps an entry: the longest TTL a worker may serve.
LLM_CACHE_RETENTION_MS = 7 * _DAY_MS


@dataclass(frozen=True, slots=True)
class RetryTier:
    """A delayed-retry topic: requests wait ``delay_s`` seconds there before they run again.

    Attributes:
        name: The tier's name, used in the topic name (``5s``, ``1m``, ``10m``).
        delay_s: The delay in seconds.
    """

    name: str
    delay_s: float


DEFAULT_RETRY_TIERS = (RetryTier("5s", 5.0), RetryTier("1m", 60.0), RetryTier("10m", 600.0))


@dataclass(frozen=True, slots=True)
class Topic:
    """One topic of the catalog.

    Attributes:
        name: The full topic name, prefix included.
        key: What the record key is.
        value_types: The event types a record value may hold.
        partitions: Partition count.
        copartitioned: Keyed by run id and sharing the catalog's partition count, so all
            events of one run land on the same partition number everywhere.
        cleanup_policy: ``delete`` (time retention), ``compact`` (last value per key), or
            ``compact,delete`` (last value per key, and none older than the retention).
        retention_ms: Retention in milliseconds; ``None`` keeps the broker's default and
            ``-1`` keeps records forever.
        accepts_json: Whether JSON values are accepted besides Avro (upstream producers).
        description: What flows through it, producer -> consumer.
    """

    name: str
    key: str
    value_types: tuple[type[Event], ...]
    partitions: int
    copartitioned: bool
    cleanup_policy: Literal["delete", "compact", "compact,delete"]
    retention_ms: int | None
    description: str
    accepts_json: bool = False
    extra_configs: tuple[tuple[str, str], ...] = ()

    def configs(self) -> dict[str, str]:
        """Topic-level configs to create the topic with."""
        configs: dict[str, str] = {"cleanup.policy": self.cleanup_policy}
        if self.retention_ms is not None:
            configs["retention.ms"] = str(self.retention_ms)
        configs.update(self.extra_configs)
        return configs


@dataclass(frozen=True)
class TopicCatalog:
    """Every topic baton uses, named under one prefix.

    Args:
        prefix: The name prefix (``baton`` gives ``baton.tasks``, ...).
        partitions: The partition count shared by every co-partitioned topic.
        retry_tiers: The delayed-retry tiers, shortest first.
        run_retention_s: How long a finished run is remembered (its task id cannot start
            another run) and how long the run-state changelog keeps a record.
        custom_kinds: The step kinds packages add (``baton.processors``) whose request
            topics the catalog lists, as installed where it is built.
    """

    prefix: str = "baton"
    partitions: int = 12
    retry_tiers: tuple[RetryTier, ...] = DEFAULT_RETRY_TIERS
    run_retention_s: float = DEFAULT_RUN_RETENTION_S
    custom_kinds: tuple[str, ...] = ()
    _steps: dict[str, Topic] = field(init=False, repr=False, compare=False)
    _retries: dict[str, Topic] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.run_retention_s <= 0:
            raise ConfigurationError(
                f"run retention must be positive, not {self.run_retention_s} s"
            )
        if self.partitions < 1:
            raise ConfigurationError(f"partitions must be at least 1, not {self.partitions}")
        tier_names = [tier.name for tier in self.retry_tiers]
        if len(set(tier_names)) != len(tier_names):
            raise ConfigurationError(f"retry tier names must be unique: {tier_names}")
        for kind in self.custom_kinds:
            if problem := _custom_kind_problem(kind):
                raise ConfigurationError(f"custom step kind {kind!r}: {problem}")
        steps = {
            kind: self._step_topic(kind) for kind in (*BUILTIN_KINDS, *sorted(self.custom_kinds))
        }
        retries = {
            tier.name: self._run_topic(
                f"retry.{tier.name}",
                (StepRequested,),
                _DAY_MS,
                f"coordinator -> retry relay, which re-emits each request after {tier.delay_s:g}s",
            )
            for tier in self.retry_tiers
        }
        object.__setattr__(self, "_steps", steps)
        object.__setattr__(self, "_retries", retries)

    def _name(self, suffix: str) -> str:
        return f"{self.prefix}.{suffix}"

    def _step_topic(self, kind: str) -> Topic:
        return self._run_topic(
            f"steps.{kind}",
            (StepRequested,),
            _DAY_MS,
            f"coordinator / retry relay -> the {kind} processor",
        )

    def _run_topic(
        self,
        suffix: str,
        value_types: tuple[type[Event], ...],
        retention_ms: int | None,
        description: str,
        *,
        cleanup_policy: Literal["delete", "compact", "compact,delete"] = "delete",
        accepts_json: bool = False,
        extra_configs: tuple[tuple[str, str], ...] = (),
    ) -> Topic:
        return Topic(
            name=self._name(suffix),
            key="run id",
            value_types=value_types,
            partitions=self.partitions,
            copartitioned=True,
            cleanup_policy=cleanup_policy,
            retention_ms=retention_ms,
            description=description,
            accepts_json=accepts_json,
            extra_configs=extra_configs,
        )

    @cached_property
    def tasks(self) -> Topic:
        """Task submissions from upstream systems (Avro or JSON)."""
        return self._run_topic(
            "tasks",
            (TaskSubmitted,),
            7 * _DAY_MS,
            "upstream -> coordinator",
            accepts_json=True,
        )

    @cached_property
    def step_results(self) -> Topic:
        """Step outcomes from processors."""
        return self._run_topic("step-results", (StepResult,), _DAY_MS, "processors -> coordinator")

    @cached_property
    def dead_letter(self) -> Topic:
        """Events that could not be processed, with their bytes and the reason."""
        return self._run_topic(
            "dead-letter", (DeadLetter,), 30 * _DAY_MS, "any agent -> ops (key: run id or null)"
        )

    @cached_property
    def approvals_requested(self) -> Topic:
        """Requests for a human decision."""
        return self._run_topic(
            "approvals.requested",
            (ApprovalRequested,),
            30 * _DAY_MS,
            "coordinator -> reviewers / integrations",
        )

    @cached_property
    def approvals_decided(self) -> Topic:
        """Signed decisions from reviewers."""
        return self._run_topic(
            "approvals.decided",
            (ApprovalDecision,),
            30 * _DAY_MS,
            "reviewers (API, CLI, any system) -> coordinator",
        )

    @cached_property
    def results(self) -> Topic:
        """One result per run."""
        return self._run_topic("results", (RunResult,), 30 * _DAY_MS, "coordinator -> downstream")

    @cached_property
    def run_events(self) -> Topic:
        """Every state transition of every run, with cost and timing.

        One ``RunEventBatch`` per coordinator commit and partition (single ``RunEvent``
        records, as older releases wrote them, are read too).
        """
        return self._run_topic(
            "run-events",
            (RunEventBatch, RunEvent),
            30 * _DAY_MS,
            "coordinator -> audit, UI, ops (key: null; one batch per commit)",
        )

    @cached_property
    def audit_anchors(self) -> Topic:
        """The audit chains' heads: per partition, now and then, the heads of its runs.

        One ``AuditAnchor`` per flush of a partition's runs, on the same partition number,
        in the flush's commit (docs/audit.md). Kept as long as ``run-events``: export it
        somewhere an attacker cannot rewrite to prove more than the broker's word.
        """
        return self._run_topic(
            "audit-anchors",
            (AuditAnchor,),
            30 * _DAY_MS,
            "coordinator -> auditors, `baton audit verify` (key: null)",
        )

    @cached_property
    def stream(self) -> Topic:
        """Model calls' text as it streams (``StreamChunk``), for ``GET /v1/runs/{id}/stream``.

        A preview, not part of any run's exactly-once result: kept a day, in hourly
        segments so the retention acts on time.
        """
        return self._run_topic(
            "stream",
            (StreamChunk,),
            _DAY_MS,
            "llm and agent processors -> the stream endpoint, UIs",
            extra_configs=(("segment.ms", str(_HOUR_MS)),),
        )

    @cached_property
    def control(self) -> Topic:
        """Operator commands (cancel a run, ...), compacted by scope."""
        return self._run_topic(
            "control",
            (ControlCommand,),
            None,
            "ops -> coordinator (key: run id for run commands)",
            cleanup_policy="compact",
        )

    @cached_property
    def timers(self) -> Topic:
        """Retired: wake-ups older releases' coordinators sent themselves.

        Deadlines now fire inside the coordinator's loop; nothing writes or reads this topic.
        It stays in the catalog so ``baton topics describe`` knows it on older deployments.
        """
        return self._run_topic(
            "timers", (TimerFired,), _HOUR_MS, "retired (older releases' coordinator wake-ups)"
        )

    @cached_property
    def spend(self) -> Topic:
        """Tenants' spend ledgers: model-call reservations and settlements, keyed by tenant.

        Every coordinator reads all of it (in order per tenant) to admit model steps within
        the tenants' ceilings; kept longer than the longest ceiling window.
        """
        return Topic(
            name=self._name("spend"),
            key="tenant",
            value_types=(SpendRecorded,),
            partitions=self.partitions,
            copartitioned=False,
            cleanup_policy="delete",
            retention_ms=35 * _DAY_MS,
            description="coordinator -> every coordinator (tenant ceilings), baton usage",
        )

    @cached_property
    def llm_cache(self) -> Topic:
        """The response cache: model answers by cache key, shared by every worker.

        Compacted (the latest answer per key) and time-limited: an entry is deleted once it
        is older than the retention, the longest TTL a worker may serve it for.
        """
        return Topic(
            name=self._name("llm-cache"),
            key="cache key (sha256 of the model call)",
            value_types=(CacheEntry,),
            partitions=self.partitions,
            copartitioned=False,
            cleanup_policy="compact,delete",
            retention_ms=LLM_CACHE_RETENTION_MS,
            description="llm and agent processors -> every llm and agent processor",
            # Daily segments: retention and compaction only act on closed segments.
            extra_configs=(("segment.ms", str(_DAY_MS)),),
        )

    @cached_property
    def run_state(self) -> Topic:
        """The coordinator's snapshots: the latest stored state of every run, compacted.

        In-flight runs are written now and then (a flush), finished runs once, as a small
        summary. Records older than the run retention are deleted by the broker
        (``compact,delete``): a finished run is forgotten then, and in-flight runs are
        written again before they would be. Read back when a worker takes over a partition.
        """
        return self._run_topic(
            "run-state",
            (),
            int(self.run_retention_s * 1000),
            "coordinator -> coordinator (state restored on takeover)",
            cleanup_policy="compact,delete",
            # Small segments and an eager cleaner keep the log near one record per run, so
            # a worker taking over a partition reads little more than the live state.
            extra_configs=(
                (
                    "segment.ms",
                    str(min(10 * 60 * 1000, max(1000, int(self.run_retention_s * 100)))),
                ),
                ("min.cleanable.dirty.ratio", "0.1"),
            ),
        )

    @cached_property
    def run_journal(self) -> Topic:
        """The coordinator's write-ahead journal: the runs each commit changed.

        One ``RunJournal`` per commit and partition, in the commit's transaction. The
        coordinator deletes what a flush to ``run-state`` made redundant (DeleteRecords), so
        a takeover reads only the journal since the last flush. The retention is a backstop.
        """
        return self._run_topic(
            "run-journal",
            (RunJournal,),
            int(self.run_retention_s * 1000),
            "coordinator -> coordinator (replayed on takeover; key: null)",
        )

    @cached_property
    def workflows(self) -> Topic:
        """Deployed workflow definitions, compacted; every worker reads all of it."""
        return Topic(
            name=self._name("workflows"),
            key="workflow name@content hash",
            value_types=(WorkflowDefinition,),
            partitions=1,
            copartitioned=False,
            cleanup_policy="compact",
            retention_ms=-1,
            description="`baton workflows deploy` -> every worker",
        )

    def steps(self, kind: StepKind | str) -> Topic:
        """The request topic of one step kind: a built-in one, or a listed custom kind's.

        Raises:
            ConfigurationError: ``kind`` is neither (the message lists the custom kinds).
        """
        try:
            return self._steps[kind]
        except KeyError:
            custom = ", ".join(sorted(self.custom_kinds)) or "none"
            raise ConfigurationError(
                f"unknown step kind {str(kind)!r} (custom kinds installed: {custom})"
            ) from None

    def retry(self, tier: str) -> Topic:
        """The delayed-retry topic of one tier."""
        try:
            return self._retries[tier]
        except KeyError:
            known = ", ".join(self._retries)
            raise ConfigurationError(f"unknown retry tier {tier!r} (known: {known})") from None

    def __iter__(self) -> Iterator[Topic]:
        """Every topic of the catalog, in a stable order."""
        yield self.tasks
        for kind in (*BUILTIN_KINDS, *sorted(self.custom_kinds)):
            yield self._steps[kind]
        yield self.step_results
        yield from self._retries.values()
        yield self.dead_letter
        yield self.approvals_requested
        yield self.approvals_decided
        yield self.results
        yield self.run_events
        yield self.audit_anchors
        yield self.workflows
        yield self.control
        yield self.timers
        yield self.spend
        yield self.llm_cache
        yield self.run_state
        yield self.run_journal
        yield self.stream

    def by_name(self, name: str) -> Topic:
        """Look a topic up by its full name."""
        for topic in self:
            if topic.name == name:
                return topic
        raise ConfigurationError(f"{name!r} is not a baton topic under prefix {self.prefix!r}")


def _custom_kind_problem(kind: str) -> str:
    """Why ``kind`` cannot be a custom step kind, or ``""``."""
    try:
        check_kind(kind)
    except PydanticCustomError as exc:
        return str(exc)
    return ""
