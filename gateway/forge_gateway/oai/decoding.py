"""Request decoders honouring ``[api] unknown_fields`` (``reject``: a 400 naming the field)."""

from __future__ import annotations

from typing import Any

import msgspec

from forge_sdk.types import (
    ChatCompletionRequest,
    CompletionRequest,
    LenientChatCompletionRequest,
    LenientCompletionRequest,
    message_text,
)

__all__ = ["query_text", "request_decoder"]

_LENIENT: dict[type[Any], type[Any]] = {
    ChatCompletionRequest: LenientChatCompletionRequest,
    CompletionRequest: LenientCompletionRequest,
}


_decoders: dict[tuple[type[Any], str], msgspec.json.Decoder[Any]] = {}


def request_decoder(type_: type[Any], unknown_fields: str) -> msgspec.json.Decoder[Any]:
    """A JSON decoder for ``type_`` that refuses (``reject``) or drops (``ignore``) unknown top-level fields."""
    key = (type_, unknown_fields)
    decoder = _decoders.get(key)
    if decoder is None:
        lenient = _LENIENT.get(type_, type_) if unknown_fields == "ignore" else type_
        decoder = _decoders[key] = msgspec.json.Decoder(lenient)
    return decoder


def query_text(request: ChatCompletionRequest | CompletionRequest) -> str:
    """The text the router classifies: the last user message, or the first text prompt ("" for ids)."""
    if isinstance(request, ChatCompletionRequest):
        for message in reversed(request.messages):
            if message.role == "user":
                return message_text(message)
        return message_text(request.messages[-1])
    prompt = request.prompt
    if isinstance(prompt, str):
        return prompt
    first = prompt[0]
    return first if isinstance(first, str) else ""
