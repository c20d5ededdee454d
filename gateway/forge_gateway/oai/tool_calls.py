"""``tool_choice`` -> how to decode, and model output -> OpenAI ``tool_calls``.

- ``required`` / a named function: constrained decoding (the engine's grammar backend) makes
  the output a JSON call whose arguments validate against the function's schema. Named: the
  output *is* the arguments object. Required: ``[{"name": ..., "arguments": {...}}, ...]``.
- ``auto``: the model writes calls in its own format; a :class:`~forge_sdk.ToolParser` plugin
  reads them back (streamed: content before a call goes out at once, the call when it is whole).
- ``none``: tools are shown but never parsed; the answer is text.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from forge_gateway.engines.base import Constraint
from forge_sdk.errors import InvalidRequestError
from forge_sdk.tools import ToolParser
from forge_sdk.types import (
    DeltaFunctionCall,
    DeltaToolCall,
    FunctionCall,
    NamedToolChoice,
    Tool,
    ToolCall,
)

__all__ = ["ToolMode", "ToolStream", "pick_parser", "tool_mode"]


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def pick_parser(
    parsers: dict[str, type[ToolParser]], configured: str, chat_template: str
) -> ToolParser | None:
    """The parser for a model: the configured one, else the first whose template test passes,
    else ``hermes`` (the format the gateway writes into templates that know no tools)."""
    if configured != "auto":
        return parsers[configured]()
    for name in sorted(parsers):
        if parsers[name].matches_template(chat_template):
            return parsers[name]()
    fallback = parsers.get("hermes")
    return fallback() if fallback is not None else None


@dataclass(slots=True)
class ToolMode:
    """How one request treats its tools."""

    kind: Literal["none", "auto", "required", "named"]
    tools: list[Tool]
    named: str | None = None
    parallel: bool = True
    parser: ToolParser | None = None

    @property
    def names(self) -> list[str]:
        return [t.function.name for t in self.tools]

    def constraint(self) -> Constraint | None:
        """The grammar that forces a valid call (``required`` / named), else None."""
        if self.kind == "named":
            fn = next(t.function for t in self.tools if t.function.name == self.named)
            return Constraint("json", _params(fn.parameters), compact=True)
        if self.kind == "required":
            items = {
                "anyOf": [
                    {
                        "type": "object",
                        "properties": {
                            "name": {"enum": [t.function.name]},
                            "arguments": _params(t.function.parameters),
                        },
                        "required": ["name", "arguments"],
                        "additionalProperties": False,
                    }
                    for t in self.tools
                ]
            }
            schema: dict[str, Any] = {"type": "array", "items": items, "minItems": 1}
            if not self.parallel:
                schema["maxItems"] = 1
            return Constraint("json", schema, compact=True)
        return None

    def calls(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """``(content, tool calls)`` of finished output."""
        if self.kind == "named":
            assert self.named is not None
            return None, [ToolCall(_call_id(), FunctionCall(self.named, text.strip()))]
        if self.kind == "required":
            try:
                items = json.loads(text)
            except json.JSONDecodeError:
                return text, []  # cut by max_tokens: the caller sees finish_reason "length"
            return None, [
                ToolCall(
                    _call_id(), FunctionCall(item["name"], json.dumps(item["arguments"], ensure_ascii=False))
                )
                for item in items
            ]
        if self.kind == "auto" and self.parser is not None:
            result = self.parser.parse(text, self.names)
            calls = [ToolCall(_call_id(), FunctionCall(c.name, c.arguments)) for c in result.calls]
            if calls and not self.parallel:
                calls = calls[:1]
            return result.content, calls
        return text, []


def _params(schema: dict[str, Any] | None) -> dict[str, Any]:
    return schema if schema else {"type": "object", "properties": {}}


def tool_mode(
    tools: list[Tool] | None, choice: Any, parallel: bool | None, parser: ToolParser | None
) -> ToolMode | None:
    """The request's :class:`ToolMode`, or None without tools.

    Raises:
        InvalidRequestError: ``tool_choice`` names a tool that was not given, or asks for a call
            without tools.
    """
    if not tools:
        if choice in (None, "none", "auto"):
            return None
        raise InvalidRequestError("tool_choice needs tools", param="tool_choice")
    names = [t.function.name for t in tools]
    if len(set(names)) != len(names):
        raise InvalidRequestError("tool names must be unique", param="tools")
    mode = ToolMode("auto", tools, parallel=parallel is not False, parser=parser)
    if isinstance(choice, NamedToolChoice):
        if choice.function.name not in names:
            raise InvalidRequestError(
                f"tool_choice names {choice.function.name!r}, which is not in tools", param="tool_choice"
            )
        mode.kind, mode.named = "named", choice.function.name
    elif choice in ("none", "required"):
        mode.kind = choice
    elif parser is None:
        raise InvalidRequestError(
            "no tool-call parser is registered, so tool_choice auto cannot be served; "
            "use tool_choice required or a named function",
            param="tool_choice",
        )
    return mode


@dataclass(slots=True)
class ToolStream:
    """Turns a choice's streamed text into content deltas and tool-call deltas."""

    mode: ToolMode
    text: str = ""
    sent: int = 0
    """Characters of ``text`` already sent as content."""
    calls_sent: int = 0
    named_id: str | None = None
    done_calls: list[ToolCall] = field(default_factory=list)

    def push(self, delta: str) -> tuple[str | None, list[DeltaToolCall]]:
        """New text in; ``(content to send, tool-call deltas to send)`` out."""
        self.text += delta
        kind = self.mode.kind
        if kind == "named":
            # The output is the arguments object: stream it as argument pieces of one call.
            if not delta and self.named_id is not None:
                return None, []
            first = self.named_id is None
            if first:
                self.named_id = _call_id()
            return None, [
                DeltaToolCall(
                    0,
                    id=self.named_id if first else None,
                    type="function" if first else None,
                    function=DeltaFunctionCall(name=self.mode.named if first else None, arguments=delta),
                )
            ]
        if kind == "required":
            return None, []  # sent whole at the end (the array is only valid once closed)
        if kind == "auto" and self.mode.parser is not None:
            safe = self.mode.parser.call_start(self.text)
            if safe > self.sent:
                out = self.text[self.sent : safe]
                self.sent = safe
                return out, []
            return None, []
        out = self.text[self.sent :]
        self.sent = len(self.text)
        return out or None, []

    def finish(self) -> tuple[str | None, list[DeltaToolCall]]:
        """At the end of the sequence: remaining content and the whole calls found."""
        if self.mode.kind == "named":
            return None, []
        _, calls = self.mode.calls(self.text)
        if not calls:
            rest = self.text[self.sent :]
            self.sent = len(self.text)
            return rest or None, []
        self.done_calls = calls
        # Content before the first call went out while streaming; the parser's content is that text.
        return None, [
            DeltaToolCall(
                i, id=c.id, type="function", function=DeltaFunctionCall(c.function.name, c.function.arguments)
            )
            for i, c in enumerate(calls)
        ]

    @property
    def called(self) -> bool:
        """Whether the choice ended in tool calls."""
        return self.named_id is not None or bool(self.done_calls)
