"""Built-in tool-call parsers: Hermes ``<tool_call>`` JSON (Qwen 2.5+, Hermes, SmolLM3, ...) and
Llama 3 JSON (``{"name": ..., "parameters": ...}``, optionally after ``<|python_tag|>``).

Registered through the ``register_tool_parsers`` hook like any third-party parser.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from forge_sdk import ParsedToolCall, ToolParser, ToolParseResult

__all__ = ["HermesToolParser", "Llama3JsonToolParser"]


def _call(obj: Any, tool_names: Sequence[str], args_keys: tuple[str, ...]) -> ParsedToolCall | None:
    """A call from a decoded ``{"name": ..., <args key>: {...}}``, or None when it is not one."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or obj["name"] not in tool_names:
        return None
    args: Any = {}
    for key in args_keys:
        if key in obj:
            args = obj[key]
            break
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    if not isinstance(args, dict):
        return None
    return ParsedToolCall(obj["name"], json.dumps(args, ensure_ascii=False))


class HermesToolParser(ToolParser):
    """``<tool_call>{"name": "f", "arguments": {...}}</tool_call>``, one block per call."""

    name = "hermes"
    start_markers = ("<tool_call>",)
    _BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)

    @classmethod
    def matches_template(cls, chat_template: str) -> bool:
        """Templates that teach the ``<tool_call>`` format."""
        return "<tool_call>" in chat_template

    def parse(self, text: str, tool_names: Sequence[str]) -> ToolParseResult:
        """Every ``<tool_call>`` block must hold a call to an offered tool, or the text stays content."""
        start = text.find("<tool_call>")
        if start < 0:
            return ToolParseResult(text)
        calls: list[ParsedToolCall] = []
        for block in self._BLOCK.findall(text[start:]):
            try:
                call = _call(json.loads(block.strip()), tool_names, ("arguments", "parameters"))
            except json.JSONDecodeError:
                call = None
            if call is None:
                return ToolParseResult(text)
            calls.append(call)
        content = text[:start].strip()
        return ToolParseResult(content or None, calls)


class Llama3JsonToolParser(ToolParser):
    """Llama 3.x JSON calls: the message is ``{"name": "f", "parameters": {...}}`` (``;``-separated
    for several), optionally after ``<|python_tag|>``."""

    name = "llama3_json"
    _TAG = "<|python_tag|>"

    @classmethod
    def matches_template(cls, chat_template: str) -> bool:
        """Llama 3.1+ templates (they know ``<|python_tag|>`` and the ``ipython`` role)."""
        return "<|python_tag|>" in chat_template or "ipython" in chat_template

    def call_start(self, text: str) -> int:
        """A call is the whole message: hold back only output that starts like one."""
        head = text.lstrip()
        if not head or head.startswith(("{", self._TAG)) or self._TAG.startswith(head):
            return 0
        return len(text)

    def parse(self, text: str, tool_names: Sequence[str]) -> ToolParseResult:
        """All of the message must be calls to offered tools, or it stays content."""
        body = text.strip()
        if body.startswith(self._TAG):
            body = body[len(self._TAG) :].lstrip()
        if not body.startswith("{"):
            return ToolParseResult(text)
        decoder = json.JSONDecoder()
        calls: list[ParsedToolCall] = []
        at = 0
        while at < len(body):
            try:
                obj, end = decoder.raw_decode(body, at)
            except json.JSONDecodeError:
                return ToolParseResult(text)
            call = _call(obj, tool_names, ("parameters", "arguments"))
            if call is None:
                return ToolParseResult(text)
            calls.append(call)
            at = end
            while at < len(body) and body[at] in " \t\r\n;":
                at += 1
        return ToolParseResult(None, calls)
