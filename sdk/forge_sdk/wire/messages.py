"""Chat messages, content parts, tools and response formats of the OpenAI Chat Completions API."""

from __future__ import annotations

from typing import Any, Literal

from msgspec import Struct

__all__ = [
    "AudioPart",
    "ChatMessage",
    "ContentPart",
    "FilePart",
    "FunctionCall",
    "FunctionDefinition",
    "ImagePart",
    "JsonSchemaFormat",
    "NamedToolChoice",
    "NamedToolChoiceFunction",
    "RefusalPart",
    "ResponseFormat",
    "ResponseFormatJsonObject",
    "ResponseFormatJsonSchema",
    "ResponseFormatText",
    "TextPart",
    "Tool",
    "ToolCall",
    "message_text",
]

Role = Literal["system", "user", "assistant", "developer", "tool", "function"]


class TextPart(Struct, tag_field="type", tag="text", forbid_unknown_fields=True):
    """A text part of a multi-part message content."""

    text: str
    """The text."""


class RefusalPart(Struct, tag_field="type", tag="refusal", forbid_unknown_fields=True):
    """A refusal part (assistant messages replayed from an earlier turn)."""

    refusal: str
    """The refusal text."""


class ImagePart(Struct, tag_field="type", tag="image_url"):
    """An image part. Accepted by the schema so the error can name it; no served model reads images."""

    image_url: Any = None
    """``{"url": ..., "detail": ...}``."""


class AudioPart(Struct, tag_field="type", tag="input_audio"):
    """An audio part. Accepted by the schema so the error can name it; no served model hears audio."""

    input_audio: Any = None
    """``{"data": ..., "format": ...}``."""


class FilePart(Struct, tag_field="type", tag="file"):
    """A file part. Accepted by the schema so the error can name it; files are not served."""

    file: Any = None
    """``{"file_id" | "file_data" | "filename": ...}``."""


ContentPart = TextPart | RefusalPart | ImagePart | AudioPart | FilePart
"""One part of a multi-part content; only text (and refusal, in assistant turns) are served."""


class FunctionCall(Struct, forbid_unknown_fields=True):
    """A function the model called: its name and its arguments as a JSON string."""

    name: str
    """Function name."""
    arguments: str
    """Arguments, JSON-encoded (as the model wrote them)."""


class ToolCall(Struct, forbid_unknown_fields=True):
    """A tool call in an assistant message (request or response)."""

    id: str
    """Call id; the ``tool`` message answering it repeats it in ``tool_call_id``."""
    function: FunctionCall
    """What was called."""
    type: Literal["function"] = "function"
    """Always ``function``."""


class ChatMessage(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A chat message (OpenAI shape; SDD §7.1 ``ChatMessage``), any role."""

    role: Role
    """system, developer, user, assistant, tool (or legacy function)."""
    content: str | list[ContentPart] | None = None
    """Text or a list of parts; may be null in an assistant message that calls tools."""
    name: str | None = None
    """Optional participant name (the function name for a legacy ``function`` message)."""
    tool_calls: list[ToolCall] | None = None
    """Assistant only: the tools it called."""
    tool_call_id: str | None = None
    """Tool only: which call this message answers (required for ``tool``)."""
    refusal: str | None = None
    """Assistant only: a refusal message."""
    function_call: FunctionCall | None = None
    """Assistant only, legacy: the function it called."""
    audio: Any = None
    """Assistant only: a reference to an earlier audio answer (not served: a 400)."""


def message_text(message: ChatMessage) -> str:
    """Flatten a message's content to plain text (text and refusal parts)."""
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(
        part.text if isinstance(part, TextPart) else part.refusal
        for part in content
        if isinstance(part, TextPart | RefusalPart)
    )


class FunctionDefinition(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A function the model may call."""

    name: str
    """Function name (``a-z, A-Z, 0-9, _, -``, up to 64 chars in OpenAI)."""
    description: str | None = None
    """What it does; shown to the model."""
    parameters: dict[str, Any] | None = None
    """JSON Schema of the arguments object (absent: no arguments)."""
    strict: bool | None = None
    """Arguments must follow ``parameters`` exactly (forge always constrains forced calls)."""


class Tool(Struct, forbid_unknown_fields=True):
    """A tool the model may call."""

    function: FunctionDefinition
    """The function."""
    type: Literal["function"] = "function"
    """Only ``function`` tools are served."""


class NamedToolChoiceFunction(Struct, forbid_unknown_fields=True):
    """Names the function a ``tool_choice`` forces."""

    name: str
    """The function to call."""


class NamedToolChoice(Struct, forbid_unknown_fields=True):
    """``tool_choice`` forcing one function."""

    function: NamedToolChoiceFunction
    """The function to call."""
    type: Literal["function"] = "function"
    """Always ``function``."""


class ResponseFormatText(Struct, tag_field="type", tag="text", forbid_unknown_fields=True):
    """Free text (the default)."""


class ResponseFormatJsonObject(Struct, tag_field="type", tag="json_object", forbid_unknown_fields=True):
    """Any JSON object (JSON mode)."""


class JsonSchemaFormat(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A named JSON schema for structured outputs."""

    name: str
    """Name of the schema."""
    description: str | None = None
    """What the output is for."""
    schema: dict[str, Any] | None = None
    """The JSON Schema (absent: any JSON object)."""
    strict: bool | None = None
    """Follow the schema exactly (forge always constrains to it; strict also forbids extra keys)."""


class ResponseFormatJsonSchema(Struct, tag_field="type", tag="json_schema", forbid_unknown_fields=True):
    """JSON that validates against a schema."""

    json_schema: JsonSchemaFormat
    """The schema."""


ResponseFormat = ResponseFormatText | ResponseFormatJsonObject | ResponseFormatJsonSchema
"""``response_format``: text, ``json_object`` or ``json_schema``."""
