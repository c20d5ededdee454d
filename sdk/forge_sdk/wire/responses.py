"""Response bodies and stream chunks of the OpenAI chat and text completion APIs."""

from __future__ import annotations

from typing import Literal

from msgspec import Struct

from forge_sdk.wire.messages import ToolCall

__all__ = [
    "ChatCompletion",
    "ChatCompletionChoice",
    "ChatCompletionChunk",
    "ChatLogprobs",
    "ChunkChoice",
    "Completion",
    "CompletionChoice",
    "CompletionLogprobs",
    "DeltaFunctionCall",
    "DeltaMessage",
    "DeltaToolCall",
    "ResponseMessage",
    "TokenLogprob",
    "TopLogprob",
    "Usage",
]

FinishReason = Literal["stop", "length", "abort", "tool_calls"]


class Usage(Struct):
    """Token accounting."""

    prompt_tokens: int
    """Tokens in the prompt."""
    completion_tokens: int
    """Tokens generated."""
    total_tokens: int
    """Their sum."""


class TopLogprob(Struct):
    """One likely alternative at a position."""

    token: str
    """The token's text."""
    logprob: float
    """Its log-probability."""
    bytes: list[int] | None
    """Its UTF-8 bytes (a token may hold part of a character)."""


class TokenLogprob(TopLogprob):
    """The sampled token at a position, with the alternatives."""

    top_logprobs: list[TopLogprob]
    """The ``top_logprobs`` most likely tokens at this position."""


class ChatLogprobs(Struct):
    """``choices[i].logprobs`` of a chat response."""

    content: list[TokenLogprob] | None
    """One entry per output token."""
    refusal: list[TokenLogprob] | None = None
    """Log-probs of a refusal (never produced here)."""


class CompletionLogprobs(Struct):
    """``choices[i].logprobs`` of a text completion (the legacy shape)."""

    tokens: list[str]
    """Each token's text."""
    token_logprobs: list[float | None]
    """Each token's log-probability (None for the first prompt token, which has no context)."""
    top_logprobs: list[dict[str, float] | None]
    """Each position's most likely tokens (None where ``token_logprobs`` is None)."""
    text_offset: list[int]
    """Character offset of each token in the choice's ``text``."""


class ResponseMessage(Struct, omit_defaults=False):
    """The assistant message of a chat response."""

    content: str | None
    """The text (null when the answer is only tool calls)."""
    role: Literal["assistant"] = "assistant"
    """Always ``assistant``."""
    refusal: str | None = None
    """A refusal (never produced here)."""
    tool_calls: list[ToolCall] | None = None
    """Tools the model called."""


class ChatCompletionChoice(Struct):
    """One choice of a chat response."""

    index: int
    """Choice index."""
    message: ResponseMessage
    """The answer."""
    finish_reason: FinishReason | None
    """``stop``, ``length``, ``tool_calls`` (or ``abort``)."""
    logprobs: ChatLogprobs | None = None
    """Per-token log-probs when asked for."""


class ChatCompletion(Struct):
    """Non-streaming chat response."""

    id: str
    """Request id."""
    created: int
    """Unix time."""
    model: str
    """The model (expert) that answered."""
    choices: list[ChatCompletionChoice]
    """The answers."""
    usage: Usage
    """Tokens used."""
    object: Literal["chat.completion"] = "chat.completion"
    """Object type."""
    system_fingerprint: str | None = None
    """Not tracked."""


class DeltaFunctionCall(Struct, omit_defaults=True):
    """A piece of a streamed tool call's function."""

    name: str | None = None
    """Sent once, in the call's first delta."""
    arguments: str | None = None
    """The next piece of the JSON arguments."""


class DeltaToolCall(Struct, omit_defaults=True):
    """A piece of a streamed tool call."""

    index: int
    """Which call of this choice it belongs to."""
    id: str | None = None
    """Sent once, in the call's first delta."""
    type: Literal["function"] | None = None
    """Sent once, in the call's first delta."""
    function: DeltaFunctionCall | None = None
    """Name and/or arguments piece."""


class DeltaMessage(Struct, omit_defaults=True):
    """What a stream chunk adds to a choice."""

    role: Literal["assistant"] | None = None
    """Sent in the first chunk."""
    content: str | None = None
    """New text."""
    tool_calls: list[DeltaToolCall] | None = None
    """New tool-call pieces."""


class ChunkChoice(Struct):
    """One choice's delta in a stream chunk."""

    index: int
    """Choice index."""
    delta: DeltaMessage
    """The new content."""
    finish_reason: FinishReason | None = None
    """Set in the choice's last chunk."""
    logprobs: ChatLogprobs | None = None
    """Log-probs of the tokens in this delta, when asked for."""


class ChatCompletionChunk(Struct):
    """One SSE chunk of a streaming chat response."""

    id: str
    """Request id."""
    created: int
    """Unix time."""
    model: str
    """The model (expert) answering."""
    choices: list[ChunkChoice]
    """Deltas (empty in the usage chunk)."""
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    """Object type."""
    usage: Usage | None = None
    """In the last chunk with ``stream_options.include_usage``."""


class CompletionChoice(Struct):
    """One choice of a text completion (or its stream chunk)."""

    index: int
    """Choice index (prompt index * n + choice)."""
    text: str
    """The text (with the prompt first when ``echo``)."""
    finish_reason: FinishReason | None
    """``stop`` or ``length``."""
    logprobs: CompletionLogprobs | None = None
    """Legacy log-probs when asked for."""


class Completion(Struct):
    """Text completion response (also its stream chunks)."""

    id: str
    """Request id."""
    created: int
    """Unix time."""
    model: str
    """The model (expert) that answered."""
    choices: list[CompletionChoice]
    """The completions."""
    object: Literal["text_completion"] = "text_completion"
    """Object type."""
    usage: Usage | None = None
    """Tokens used (whole response, or the last stream chunk)."""
