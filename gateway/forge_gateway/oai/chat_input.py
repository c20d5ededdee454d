"""Chat messages and tools -> what the chat template gets.

Templates that know tools (they mention ``tools``) get them natively (``tools=`` of
``apply_chat_template``), with assistant ``tool_calls`` arguments as objects as Hugging Face
templates expect. Templates that do not (plain ChatML ones such as SmolLM2's) would silently drop
them, so the gateway writes the tools, the calls and their results into the message texts in the
Hermes format (the most common open tool format) and reads calls back with the ``hermes`` parser.
"""

from __future__ import annotations

import json
from typing import Any

from forge_sdk.errors import InvalidRequestError
from forge_sdk.types import (
    AudioPart,
    ChatCompletionRequest,
    ChatMessage,
    FilePart,
    ImagePart,
    Tool,
    message_text,
)

__all__ = ["check_modalities", "legacy_tools", "template_messages", "template_knows_tools"]

_PART_NAMES = {ImagePart: "image", AudioPart: "audio", FilePart: "file"}

_TOOL_PROMPT = (
    "You can call functions. Their signatures are inside <tools></tools>:\n<tools>\n{tools}\n</tools>\n"
    "To call a function, answer with one JSON object per call, each inside <tool_call></tool_call>:\n"
    '<tool_call>\n{{"name": <function name>, "arguments": <arguments object>}}\n</tool_call>'
)


def check_modalities(req: ChatCompletionRequest) -> None:
    """Refuse what no served model can do (image/audio/file input, audio output), naming the field.

    Raises:
        InvalidRequestError: a non-text content part, audio output, or a malformed message.
    """
    if req.modalities and any(m != "text" for m in req.modalities):
        raise InvalidRequestError(
            'only text output is served; modalities must be ["text"]', param="modalities"
        )
    if req.audio is not None:
        raise InvalidRequestError("audio output is not served", param="audio")
    for i, message in enumerate(req.messages):
        if message.audio is not None:
            raise InvalidRequestError("audio messages are not served", param=f"messages[{i}].audio")
        if isinstance(message.content, list):
            for j, part in enumerate(message.content):
                kind = _PART_NAMES.get(type(part))
                if kind is not None:
                    raise InvalidRequestError(
                        f"{kind} content is not supported by this model; send text parts only",
                        param=f"messages[{i}].content[{j}]",
                        code="unsupported_content",
                    )
        if message.role == "tool" and not message.tool_call_id:
            raise InvalidRequestError(
                "a tool message needs tool_call_id", param=f"messages[{i}].tool_call_id"
            )
        if message.role != "assistant" and (message.tool_calls or message.function_call):
            raise InvalidRequestError(
                "only assistant messages carry tool calls", param=f"messages[{i}].tool_calls"
            )


def legacy_tools(req: ChatCompletionRequest) -> tuple[list[Tool] | None, Any]:
    """``(tools, tool_choice)``, with the legacy ``functions`` / ``function_call`` mapped onto them.

    Raises:
        InvalidRequestError: both the legacy and the current fields are given, or a bad function.
    """
    import msgspec

    from forge_sdk.types import FunctionDefinition, NamedToolChoice

    if req.functions is None and req.function_call is None:
        return req.tools, req.tool_choice
    if req.tools is not None or req.tool_choice is not None:
        raise InvalidRequestError(
            "give tools/tool_choice or the legacy functions/function_call, not both", param="functions"
        )
    try:
        tools = [Tool(msgspec.convert(f, FunctionDefinition)) for f in req.functions or []]
    except msgspec.ValidationError as exc:
        raise InvalidRequestError(f"invalid functions: {exc}", param="functions") from exc
    choice: Any = req.function_call
    if choice is not None and not isinstance(choice, str):
        choice = NamedToolChoice(choice)
    return tools or None, choice


def template_knows_tools(chat_template: str) -> bool:
    """Whether the template renders a ``tools`` list itself."""
    return "tools" in chat_template


def _arguments(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw  # templates print it as given; a model's own malformed call stays visible


def template_messages(
    messages: list[ChatMessage], tools: list[Tool] | None, native: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """``(messages, tools)`` for ``apply_chat_template``.

    Args:
        messages: the request's messages.
        tools: the tools to show the model (None: none).
        native: the template renders tools itself (else they are written into the texts).
    """
    out: list[dict[str, Any]] = []
    tool_dicts = [_tool_dict(t) for t in tools] if tools else None
    for message in messages:
        role = "system" if message.role == "developer" else message.role
        calls = list(message.tool_calls or [])
        if message.function_call is not None:
            from forge_sdk.types import ToolCall

            calls.append(ToolCall(id="call_legacy", function=message.function_call))
        item: dict[str, Any] = {"role": role, "content": message_text(message)}
        if message.name is not None:
            item["name"] = message.name
        if native:
            if calls:
                item["tool_calls"] = [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.function.name, "arguments": _arguments(c.function.arguments)},
                    }
                    for c in calls
                ]
            if message.tool_call_id is not None:
                item["tool_call_id"] = message.tool_call_id
            if role == "function":
                item["role"] = "tool"
        else:
            if calls:
                written = "\n".join(
                    "<tool_call>\n"
                    + json.dumps({"name": c.function.name, "arguments": _arguments(c.function.arguments)})
                    + "\n</tool_call>"
                    for c in calls
                )
                item["content"] = (item["content"] + "\n" + written).strip()
            if role in ("tool", "function"):
                # Plain templates may refuse unknown roles: a result is the user's next turn.
                item = {"role": "user", "content": f"<tool_response>\n{item['content']}\n</tool_response>"}
        out.append(item)
    if tool_dicts and not native:
        prompt = _TOOL_PROMPT.format(tools="\n".join(json.dumps(t) for t in tool_dicts))
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{prompt}".strip()}
        else:
            out.insert(0, {"role": "system", "content": prompt})
        tool_dicts = None
    return out, tool_dicts


def _tool_dict(tool: Tool) -> dict[str, Any]:
    fn = tool.function
    spec: dict[str, Any] = {
        "name": fn.name,
        "parameters": fn.parameters or {"type": "object", "properties": {}},
    }
    if fn.description:
        spec["description"] = fn.description
    return {"type": "function", "function": spec}
