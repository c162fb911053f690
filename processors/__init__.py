"""What a step does: model calls, agent turns, tools, retrieval, validation, transforms.

No Kafka here: every processor is a plain async callable, testable on its own.
"""

from processors._agent import AgentParams, AgentProcessor
from processors._anthropic import AnthropicProvider
from processors._breaker import Breakers
from processors._build import build_processors
from processors._cache import MemoryResponseCache, ResponseCache, cache_key, cacheable
from processors._catalog import ModelCatalog, RouteSpec, ScriptRule, load_model_catalog
from processors._errors import (
    CircuitOpen,
    InvalidParams,
    OutputSchemaViolation,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
    ToolFailed,
    ToolRateLimited,
    ToolRejected,
    ToolRequestRefused,
    ToolTimeout,
    ToolUnavailable,
    UnknownRoute,
    UnknownSource,
    UnknownTool,
    ValidationFailed,
)
from processors._llm import LlmParams, LlmProcessor, ModelClient
from processors._openai import OpenAIProvider
from processors._processor import INTERNAL_ERROR, Processor, StepOutput, execute
from processors._provider import (
    ChatMessage,
    Completion,
    Provider,
    ToolCall,
    ToolCallMessage,
    ToolDefinition,
    ToolResultMessage,
)
from processors._responses import ResponsesProvider
from processors._retrieve import RetrieveParams, RetrieveProcessor
from processors._sandbox import (
    MAX_TEMPLATE_CALL_DEPTH,
    MAX_TEMPLATE_CHARS,
    MAX_TEMPLATE_DEPTH,
    MAX_TEMPLATE_INT_BITS,
    MAX_TEMPLATE_STEPS,
    TEMPLATE_TIME_BUDGET_S,
)
from processors._scripted import ScriptedProvider
from processors._templates import (
    TEMPLATE_GLOBALS,
    Expression,
    Template,
    TemplateError,
    TemplateLimitExceeded,
    TemplateRenderError,
    compile_expression,
    compile_template,
    is_template,
    references,
    render_value,
    step_reads,
    template_budget,
)
from processors._tool import ToolParams, ToolProcessor
from processors._tools import (
    HttpSourceSpec,
    HttpToolSpec,
    LocalSourceSpec,
    PythonToolSpec,
    ToolRegistry,
    ToolsConfig,
    load_tools,
)
from processors._transform import TransformParams, TransformProcessor
from processors._validate import ValidateParams, ValidateProcessor, ValidateRule

__all__ = [
    "MAX_TEMPLATE_CALL_DEPTH",
    "MAX_TEMPLATE_CHARS",
    "MAX_TEMPLATE_DEPTH",
    "MAX_TEMPLATE_INT_BITS",
    "MAX_TEMPLATE_STEPS",
    "TEMPLATE_GLOBALS",
    "TEMPLATE_TIME_BUDGET_S",
    "AgentParams",
    "AgentProcessor",
    "AnthropicProvider",
    "Breakers",
    "ChatMessage",
    "CircuitOpen",
    "Completion",
    "Expression",
    "HttpSourceSpec",
    "HttpToolSpec",
    "INTERNAL_ERROR",
    "InvalidParams",
    "LlmParams",
    "LlmProcessor",
    "LocalSourceSpec",
    "MemoryResponseCache",
    "ModelCatalog",
    "ModelClient",
    "OpenAIProvider",
    "OutputSchemaViolation",
    "Processor",
    "Provider",
    "ProviderRateLimited",
    "ProviderRejected",
    "ProviderTimeout",
    "ProviderUnavailable",
    "PythonToolSpec",
    "RetrieveParams",
    "ResponseCache",
    "ResponsesProvider",
    "RetrieveProcessor",
    "RouteSpec",
    "ScriptRule",
    "ScriptedProvider",
    "StepOutput",
    "Template",
    "TemplateError",
    "TemplateLimitExceeded",
    "TemplateRenderError",
    "ToolCall",
    "ToolCallMessage",
    "ToolDefinition",
    "ToolFailed",
    "ToolParams",
    "ToolProcessor",
    "ToolRateLimited",
    "ToolRegistry",
    "ToolRejected",
    "ToolRequestRefused",
    "ToolResultMessage",
    "ToolTimeout",
    "ToolUnavailable",
    "ToolsConfig",
    "TransformParams",
    "TransformProcessor",
    "UnknownRoute",
    "UnknownSource",
    "UnknownTool",
    "ValidateParams",
    "ValidateProcessor",
    "ValidateRule",
    "ValidationFailed",
    "build_processors",
    "cache_key",
    "cacheable",
    "compile_expression",
    "compile_template",
    "execute",
    "is_template",
    "load_model_catalog",
    "load_tools",
    "references",
    "render_value",
    "step_reads",
    "template_budget",
]
