"""The contracts: the topic catalog, the event models, their Avro schemas and the codec.

``topics`` imports nothing from ``processors`` or ``streams``.
"""

from topics._admin import TopicState, create_topics, describe_topics
from topics._avro import avro_schema
from topics._catalog import DEFAULT_RETRY_TIERS, RetryTier, Topic, TopicCatalog
from topics._codec import Codec, describe_validation_error
from topics._errors import (
    BatonError,
    ConfigurationError,
    DecodeError,
    PermanentError,
    RetryableError,
)
from topics._events import (
    ApprovalDecision,
    ApprovalRequested,
    ApprovalVerdict,
    AttemptRecord,
    Budget,
    ControlAction,
    ControlCommand,
    DeadLetter,
    Event,
    Money,
    Record,
    RunEvent,
    RunResult,
    RunStatus,
    StepError,
    StepKind,
    StepOutcome,
    StepRequested,
    StepResult,
    StepStatus,
    StepSummary,
    TaskSubmitted,
    TimerFired,
    Timestamp,
    Usage,
    WorkflowDefinition,
)
from topics._partitioning import partition_for
from topics._registry import EVENT_TYPES, SchemaEntry, SchemaRegistry

__all__ = [
    "DEFAULT_RETRY_TIERS",
    "EVENT_TYPES",
    "ApprovalDecision",
    "ApprovalRequested",
    "ApprovalVerdict",
    "AttemptRecord",
    "BatonError",
    "Budget",
    "Codec",
    "ConfigurationError",
    "ControlAction",
    "ControlCommand",
    "DeadLetter",
    "DecodeError",
    "Event",
    "Money",
    "PermanentError",
    "Record",
    "RetryTier",
    "RetryableError",
    "RunEvent",
    "RunResult",
    "RunStatus",
    "SchemaEntry",
    "SchemaRegistry",
    "StepError",
    "StepKind",
    "StepOutcome",
    "StepRequested",
    "StepResult",
    "StepStatus",
    "StepSummary",
    "TaskSubmitted",
    "TimerFired",
    "Timestamp",
    "Topic",
    "TopicCatalog",
    "TopicState",
    "Usage",
    "WorkflowDefinition",
    "avro_schema",
    "create_topics",
    "describe_topics",
    "describe_validation_error",
    "partition_for",
]
