"""Tool-call parsers: read the function calls a model wrote in its own format out of its text.

With ``tool_choice: "auto"`` the model decides whether to call a tool, and writes the call the
way its chat template taught it (``<tool_call>{...}</tool_call>`` for Hermes / Qwen models, a
bare JSON object for Llama 3, ...). A :class:`ToolParser` knows one such format. Parsers are
plugins (hook ``register_tool_parsers``); the built-in ones come from ``forge_plugins`` through
the same hook.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

__all__ = ["ParsedToolCall", "ToolParseResult", "ToolParser"]


@dataclass(slots=True)
class ParsedToolCall:
    """One call found in the text."""

    name: str
    """The function's name."""
    arguments: str
    """Its arguments as a JSON object text."""


@dataclass(slots=True)
class ToolParseResult:
    """What a parser found: the text around the calls, and the calls."""

    content: str | None
    """Text that is not a tool call (None when there is none)."""
    calls: list[ParsedToolCall] = field(default_factory=list)
    """The calls, in order."""


class ToolParser(abc.ABC):
    """Reads tool calls in one model family's format. Stateless: one instance serves all requests."""

    name: ClassVar[str]
    """Unique name, used in ``[api] tool_parser``."""
    start_markers: ClassVar[tuple[str, ...]] = ()
    """Text that opens a tool call. While streaming, text before a marker is sent as content at
    once; from the marker on the rest is held back and parsed when the sequence ends. Empty: the
    whole output is held back (formats where a call is the whole message)."""

    @classmethod
    def matches_template(cls, chat_template: str) -> bool:
        """Whether a model with this chat template writes calls in this format (auto-selection)."""
        return False

    def call_start(self, text: str) -> int:
        """Where a tool call may begin in streamed ``text`` (``len(text)``: nowhere yet).

        Text before the index is safe to send as content now. The default looks for
        :attr:`start_markers`, and for a marker's beginning at the very end of ``text``.
        """
        if not self.start_markers:
            return 0
        best = len(text)
        for marker in self.start_markers:
            at = text.find(marker)
            if at >= 0:
                best = min(best, at)
                continue
            for k in range(min(len(marker) - 1, len(text)), 0, -1):
                if text.endswith(marker[:k]):
                    best = min(best, len(text) - k)
                    break
        return best

    @abc.abstractmethod
    def parse(self, text: str, tool_names: Sequence[str]) -> ToolParseResult:
        """Split finished model output into content and calls.

        Text that looks like a call but does not parse, or names no offered tool, must stay
        content: a parser never invents or drops text.
        """
