"""What a step does: model calls, tools, retrieval, validation, transforms.

No Kafka here: every processor is a plain async callable, testable on its own.
"""

from processors._breaker import Breakers
from processors._build import build_processors
from processors._catalog import ModelCatalog, RouteSpec, ScriptRule, load_model_catalog
from processors._errors import (
    CircuitOpen,
    InvalidParams,
    OutputSchemaViolation,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
    UnknownRoute,
    ValidationFailed,
)
from processors._llm import LlmParams, LlmProcessor
from processors._openai import OpenAIProvider
from processors._processor import INTERNAL_ERROR, Processor, StepOutput, execute
from processors._provider import ChatMessage, Completion, Provider
from processors._scripted import ScriptedProvider
from processors._templates import (
    Expression,
    Template,
    TemplateError,
    TemplateRenderError,
    compile_expression,
    compile_template,
    is_template,
    references,
    render_value,
)
from processors._transform import TransformParams, TransformProcessor
from processors._validate import ValidateParams, ValidateProcessor, ValidateRule

__all__ = [
    "INTERNAL_ERROR",
    "Breakers",
    "CircuitOpen",
    "ChatMessage",
    "Completion",
    "Expression",
    "InvalidParams",
    "LlmParams",
    "LlmProcessor",
    "ModelCatalog",
    "OpenAIProvider",
    "OutputSchemaViolation",
    "Processor",
    "Provider",
    "ProviderRateLimited",
    "ProviderRejected",
    "ProviderTimeout",
    "ProviderUnavailable",
    "RouteSpec",
    "ScriptRule",
    "ScriptedProvider",
    "StepOutput",
    "Template",
    "TemplateError",
    "TemplateRenderError",
    "TransformParams",
    "TransformProcessor",
    "UnknownRoute",
    "ValidateParams",
    "ValidateProcessor",
    "ValidateRule",
    "ValidationFailed",
    "build_processors",
    "compile_expression",
    "compile_template",
    "execute",
    "is_template",
    "load_model_catalog",
    "references",
    "render_value",
]
