"""Public wire types: OpenAI chat/completions and the SDD's router API, as msgspec Structs.

The OpenAI request and response types live in :mod:`forge_sdk.wire` (re-exported here).
Requests reject unknown fields (``forbid_unknown_fields``) so a typo is a 400, not a silently
ignored option. Responses omit ``None`` fields only where OpenAI does.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct, field

from forge_sdk.wire.messages import (
    AudioPart,
    ChatMessage,
    ContentPart,
    FilePart,
    FunctionCall,
    FunctionDefinition,
    ImagePart,
    NamedToolChoice,
    ResponseFormat,
    ResponseFormatJsonObject,
    ResponseFormatJsonSchema,
    ResponseFormatText,
    TextPart,
    Tool,
    ToolCall,
    message_text,
)
from forge_sdk.wire.requests import (
    ChatCompletionRequest,
    CompletionRequest,
    LenientChatCompletionRequest,
    LenientCompletionRequest,
    StreamOptions,
    StructuredOutputs,
)
from forge_sdk.wire.responses import (
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatLogprobs,
    ChunkChoice,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    DeltaFunctionCall,
    DeltaMessage,
    DeltaToolCall,
    ResponseMessage,
    TokenLogprob,
    TopLogprob,
    Usage,
)

__all__ = [
    "AudioPart",
    "ChatCompletion",
    "FilePart",
    "ImagePart",
    "ChatLogprobs",
    "CompletionLogprobs",
    "DeltaFunctionCall",
    "DeltaToolCall",
    "FunctionCall",
    "FunctionDefinition",
    "LenientChatCompletionRequest",
    "LenientCompletionRequest",
    "NamedToolChoice",
    "ResponseFormat",
    "ResponseFormatJsonObject",
    "ResponseFormatJsonSchema",
    "ResponseFormatText",
    "ResponseMessage",
    "StructuredOutputs",
    "TextPart",
    "TokenLogprob",
    "Tool",
    "ToolCall",
    "TopLogprob",
    "ChatCompletionChoice",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatMessage",
    "ChunkChoice",
    "Completion",
    "CompletionChoice",
    "CompletionRequest",
    "ContentPart",
    "DeltaMessage",
    "ErrorBody",
    "ErrorResponse",
    "ExpertConfig",
    "GenerateRequest",
    "GenerateResponse",
    "ModelCard",
    "ModelList",
    "RouteDecision",
    "StreamOptions",
    "Usage",
    "message_text",
]


class ModelCard(Struct):
    id: str
    created: int
    owned_by: str = "largeforge"
    object: Literal["model"] = "model"
    root: str | None = None
    """The base model this one runs on (experts), or itself."""
    parent: str | None = None


class ModelList(Struct):
    data: list[ModelCard]
    object: Literal["list"] = "list"


class ErrorBody(Struct):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(Struct):
    """OpenAI error shape: ``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorBody


# --- SDD §7.1 router API -------------------------------------------------------------------


class GenerateRequest(Struct, forbid_unknown_fields=True, kw_only=True):
    """``POST /generate`` body (SDD §7.1): a prompt or messages, optionally a forced expert."""

    prompt: Annotated[str, Meta(min_length=1)] | None = None
    """Plain prompt; one of ``prompt`` or ``messages`` is required."""
    messages: list[ChatMessage] | None = None
    """Chat messages."""
    max_tokens: Annotated[int, Meta(ge=1, le=2**31 - 1)] = 512
    """Most tokens to generate."""
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] = 0.7
    """Sampling temperature."""
    expert: str | None = None
    """Expert to use; routed automatically when absent."""


class GenerateResponse(Struct):
    """``POST /generate`` answer (SDD §7.1)."""

    text: str
    expert: str
    tokens_used: int | None = None


class ExpertConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    """An expert as the router sees it (SDD §5.3)."""

    name: str
    endpoint: str = ""
    description: str = ""
    keywords: list[str] = field(default_factory=list)


class RouteDecision(Struct):
    """``POST /route`` answer: the chosen expert, where it is served, and why."""

    expert: str
    endpoint: str
    confidence: float
    classifier: str
    reason: str = ""
    rank: str = ""
    """The ranking rule that picked ``expert`` among the experts of its specialization (a key of
    :data:`forge_sdk.experts.RANK_RULES`, e.g. ``trained>alias``); empty when none applied."""


def to_json(obj: object) -> bytes:
    """Encode a Struct (or plain data) to JSON bytes."""
    return msgspec.json.encode(obj)
