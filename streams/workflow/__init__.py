"""Workflows: the YAML format, loading and checking, and content-hash versions."""

from streams.workflow._spec import (
    DEFAULT_TIMEOUTS,
    BackoffSpec,
    BudgetSpec,
    LlmStep,
    Message,
    OnFail,
    RetrySpec,
    StepSpec,
    TransformStep,
    ValidateRule,
    ValidateStep,
    WorkflowSpec,
    parse_duration,
)
from streams.workflow._workflow import Workflow, WorkflowError, load_workflow, parse_workflow

__all__ = [
    "DEFAULT_TIMEOUTS",
    "BackoffSpec",
    "BudgetSpec",
    "LlmStep",
    "Message",
    "OnFail",
    "RetrySpec",
    "StepSpec",
    "TransformStep",
    "ValidateRule",
    "ValidateStep",
    "Workflow",
    "WorkflowError",
    "WorkflowSpec",
    "load_workflow",
    "parse_duration",
    "parse_workflow",
]
