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
import re
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
            return Constraint("json", _params(fn.parameters), compact=True, param="tools")
        if self.kind == "required":
            # Each tool's parameters live under the root's $defs, so their own local refs (pydantic's
            # ``#/$defs/Model``) can be rebased onto an object path: xgrammar cannot follow a pointer
            # through an ``anyOf`` array index.
            defs = {
                f"forge_tool_{i}": _rebase_refs(_params(t.function.parameters), f"#/$defs/forge_tool_{i}")
                for i, t in enumerate(self.tools)
            }
            items = {
                "anyOf": [
                    {
                        "type": "object",
                        "properties": {
                            "name": {"enum": [t.function.name]},
                            "arguments": {"$ref": f"#/$defs/forge_tool_{i}"},
                        },
                        "required": ["name", "arguments"],
                        "additionalProperties": False,
                    }
                    for i, t in enumerate(self.tools)
                ]
            }
            schema: dict[str, Any] = {"type": "array", "items": items, "minItems": 1, "$defs": defs}
            if not self.parallel:
                schema["maxItems"] = 1
            return Constraint("json", schema, compact=True, param="tools")
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


def _rebase_refs(schema: dict[str, Any], base: str) -> dict[str, Any]:
    """A copy of ``schema`` whose local ``$ref`` pointers still resolve once it is nested at ``base``.

    Pydantic (``openai.pydantic_function_tool``, LangChain, instructor) puts nested models in
    ``$defs`` and points at them with ``#/$defs/Name``, relative to the *parameters* root; inside
    the ``required`` wrapper that root moves, so ``#`` becomes ``base``. Iterative, so a hostile
    nesting depth cannot overflow the stack.
    """
    root: dict[str, Any] = dict(schema)
    stack: list[Any] = [root]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in list(items):
            if isinstance(value, dict):
                value = node[key] = dict(value)
                ref = value.get("$ref")
                if isinstance(ref, str) and (ref == "#" or ref.startswith("#/")):
                    value["$ref"] = base + ref[1:]
                stack.append(value)
            elif isinstance(value, list):
                node[key] = list(value)
                stack.append(node[key])
    ref = root.get("$ref")
    if isinstance(ref, str) and (ref == "#" or ref.startswith("#/")):
        root["$ref"] = base + ref[1:]
    return root


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
    array: _CallArray = field(default_factory=lambda: _CallArray())
    """``required``: where the streamed JSON array of calls has got to."""

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
            return None, self.array.feed(self.text)
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
        if self.mode.kind == "required" and self.array.started:
            # Calls went out piece by piece; a call cut by max_tokens stays cut ("length").
            self.done_calls = self.array.finished
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


# One call of the ``required`` array, as the grammar writes it (compact, keys in schema order).
_CALL_HEAD = re.compile(r'[\[,]\{"name":("(?:[^"\\]|\\.)*"),"arguments":')


@dataclass(slots=True)
class _CallArray:
    """Streams the ``required`` grammar's ``[{"name":..,"arguments":{..}},..]`` call by call:
    a call's id and name as soon as its name is whole, then its arguments as they are written.

    The text is grammar-constrained JSON, so a scan of string/escape state and brace depth is
    enough to find where each arguments value ends; nothing here has to recover from bad JSON.
    """

    pos: int = 0
    """Where the next call head is looked for."""
    args_at: int = -1
    """Start of the current call's arguments (-1: between calls)."""
    scanned: int = 0
    depth: int = 0
    in_string: bool = False
    escaped: bool = False
    current: ToolCall | None = None
    finished: list[ToolCall] = field(default_factory=list)

    @property
    def started(self) -> bool:
        return self.current is not None or bool(self.finished)

    def feed(self, text: str) -> list[DeltaToolCall]:
        out: list[DeltaToolCall] = []
        while True:
            if self.args_at < 0:
                head = _CALL_HEAD.match(text, self.pos)
                if head is None:
                    return out
                name = json.loads(head.group(1))
                self.current = ToolCall(_call_id(), FunctionCall(name, ""))
                index = len(self.finished)
                out.append(
                    DeltaToolCall(
                        index, id=self.current.id, type="function", function=DeltaFunctionCall(name, "")
                    )
                )
                self.args_at = self.scanned = head.end()
                self.depth, self.in_string, self.escaped = 0, False, False
            end = self._scan(text)
            stop = end if end >= 0 else len(text)
            assert self.current is not None
            piece = text[self.args_at + len(self.current.function.arguments) : stop]
            if piece:
                self.current.function.arguments += piece
                out.append(DeltaToolCall(len(self.finished), function=DeltaFunctionCall(arguments=piece)))
            if end < 0:
                return out
            self.finished.append(self.current)
            self.current, self.args_at, self.pos = None, -1, end + 1  # past the call object's "}"

    def _scan(self, text: str) -> int:
        """Advance over ``text``; the index just past the arguments value once it is whole, else -1."""
        i = self.scanned
        while i < len(text):
            ch = text[i]
            i += 1
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string = False
                    if self.depth == 0:
                        break  # the arguments value was a bare string
            elif self.depth == 0 and ch in ",}]":
                i -= 1  # a bare scalar ended (an object or array breaks below, on its own close)
                break
            elif ch == '"':
                self.in_string = True
            elif ch in "{[":
                self.depth += 1
            elif ch in "}]":
                self.depth -= 1
                if self.depth == 0:
                    break
        else:
            self.scanned = i
            return -1
        self.scanned = i
        return i
