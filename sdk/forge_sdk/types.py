"""Public wire types: OpenAI chat/completions and the SDD's router API, as msgspec Structs.

Requests reject unknown fields (``forbid_unknown_fields``) so a typo is a 400, not a silently
ignored option. Responses omit ``None`` fields only where OpenAI does.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct, field

__all__ = [
    "ChatCompletion",
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

Role = Literal["system", "user", "assistant", "developer", "tool"]
FinishReason = Literal["stop", "length", "abort"]
NonNegFloat = Annotated[float, Meta(ge=0.0)]
PositiveInt = Annotated[int, Meta(ge=1)]


class ContentPart(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One part of a multi-part message content (only text parts are served)."""

    type: Literal["text"]
    """Part kind; only ``"text"``."""
    text: str
    """The text."""


class ChatMessage(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A chat message (OpenAI shape; SDD §7.1 ``ChatMessage``)."""

    role: Role
    """Who speaks: system, developer, user, assistant or tool."""
    content: str | list[ContentPart] | None = None
    """Text, or a list of text parts."""
    name: str | None = None
    """Optional participant name."""


def message_text(message: ChatMessage) -> str:
    """Flatten a message's content to plain text."""
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    return "".join(part.text for part in message.content)


class StreamOptions(Struct, forbid_unknown_fields=True):
    """Options for streaming responses."""

    include_usage: bool = False
    """Send a final chunk with ``usage`` and empty ``choices``."""


class _SamplingFields(Struct, forbid_unknown_fields=True, kw_only=True):
    """Sampling fields shared by chat and text completions."""

    model: str
    """A served model or expert name, or ``"auto"`` to let the router choose."""
    max_tokens: PositiveInt | None = None
    """Most tokens to generate (default: what the context leaves, capped by the server)."""
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] = 1.0
    """Sampling temperature; 0 is greedy."""
    top_p: Annotated[float, Meta(gt=0.0, le=1.0)] = 1.0
    """Nucleus sampling mass."""
    n: Annotated[int, Meta(ge=1, le=16)] = 1
    """How many choices to generate."""
    stop: str | Annotated[list[str], Meta(max_length=4)] | None = None
    """Up to four strings that end generation (not included in the output)."""
    seed: int | None = None
    """Seed for reproducible sampling."""
    stream: bool = False
    """Stream Server-Sent Events."""
    stream_options: StreamOptions | None = None
    """Streaming options (only with ``stream``)."""
    presence_penalty: Annotated[float, Meta(ge=-2.0, le=2.0)] = 0.0
    """Penalty for tokens already present."""
    frequency_penalty: Annotated[float, Meta(ge=-2.0, le=2.0)] = 0.0
    """Penalty proportional to token frequency."""
    user: str | None = None
    """End-user id, for logs."""
    ignore_eos: bool = False
    """vLLM extension: keep generating past the end-of-sequence token (benchmarks, tests)."""


class ChatCompletionRequest(_SamplingFields, kw_only=True):
    """``POST /v1/chat/completions`` body."""

    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    """The conversation so far."""
    max_completion_tokens: PositiveInt | None = None
    """Newer name of ``max_tokens``; wins when both are given."""


class CompletionRequest(_SamplingFields, kw_only=True):
    """``POST /v1/completions`` body."""

    prompt: str | Annotated[list[str], Meta(min_length=1, max_length=1)]
    """The prompt (a string, or a list with one string)."""
    echo: bool = False
    """Prepend the prompt to the completion."""


class Usage(Struct):
    """Token accounting."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionChoice(Struct):
    index: int
    message: ChatMessage
    finish_reason: FinishReason | None
    logprobs: None = None


class ChatCompletion(Struct):
    """Non-streaming chat response."""

    id: str
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: Usage
    object: Literal["chat.completion"] = "chat.completion"
    system_fingerprint: str | None = None


class DeltaMessage(Struct, omit_defaults=True):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(Struct):
    index: int
    delta: DeltaMessage
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(Struct):
    """One SSE chunk of a streaming chat response."""

    id: str
    created: int
    model: str
    choices: list[ChunkChoice]
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    usage: Usage | None = None


class CompletionChoice(Struct):
    index: int
    text: str
    finish_reason: FinishReason | None
    logprobs: None = None


class Completion(Struct):
    """Text completion response (also its stream chunks)."""

    id: str
    created: int
    model: str
    choices: list[CompletionChoice]
    object: Literal["text_completion"] = "text_completion"
    usage: Usage | None = None


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
    max_tokens: Annotated[int, Meta(ge=1)] = 512
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


def to_json(obj: object) -> bytes:
    """Encode a Struct (or plain data) to JSON bytes."""
    return msgspec.json.encode(obj)
