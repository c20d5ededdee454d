"""forge-sdk: what a LargeForge plugin author imports.

Hooks (:data:`hookimpl`), the interfaces plugins implement (:class:`Classifier`,
:class:`TrainingMethod`, :class:`Quantizer`, :class:`ToolParser`), the expert registry, the public wire types (in
:mod:`forge_sdk.types`), the error tree (in :mod:`forge_sdk.errors`) and the Python clients.
"""

from forge_sdk.classifiers import Classification, Classifier
from forge_sdk.clients import AsyncInferenceClient, InferenceClient, RouterClient
from forge_sdk.errors import LargeForgeAIError
from forge_sdk.experts import (
    DEFAULT_EXPERTS,
    RANK_RULES,
    ExpertModel,
    ExpertRegistry,
    best_expert,
    create_default_registry,
)
from forge_sdk.hooks import hookimpl
from forge_sdk.plugins import get_plugin_manager, list_plugins
from forge_sdk.retry import RetryPolicy
from forge_sdk.tools import ParsedToolCall, ToolParser, ToolParseResult
from forge_sdk.training import Quantizer, TrainingMethod, TrainingResult

__all__ = [
    "DEFAULT_EXPERTS",
    "RANK_RULES",
    "AsyncInferenceClient",
    "Classification",
    "Classifier",
    "ExpertModel",
    "ExpertRegistry",
    "InferenceClient",
    "LargeForgeAIError",
    "ParsedToolCall",
    "Quantizer",
    "RetryPolicy",
    "RouterClient",
    "ToolParseResult",
    "ToolParser",
    "TrainingMethod",
    "TrainingResult",
    "best_expert",
    "create_default_registry",
    "get_plugin_manager",
    "hookimpl",
    "list_plugins",
]
