"""Engine log-probs -> OpenAI's two shapes: chat (``content: [{token, logprob, bytes, top_logprobs}]``)
and legacy completions (``tokens``, ``token_logprobs``, ``top_logprobs``, ``text_offset``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from forge_gateway.engines.base import TokenLogprobs
from forge_sdk.types import ChatLogprobs, CompletionLogprobs, TokenLogprob, TopLogprob

__all__ = ["LegacyLogprobs", "TokenTexts", "chat_logprobs"]


class TokenTexts:
    """Token id -> text, memoized per request (the same ids recur in top lists)."""

    def __init__(self, token_text: Callable[[int], str]) -> None:
        self._text = token_text
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            text = self._cache[token_id] = self._text(token_id)
        return text


def chat_logprobs(entries: Sequence[TokenLogprobs], texts: TokenTexts) -> ChatLogprobs:
    """The chat shape for some output tokens."""
    content = []
    for entry in entries:
        token = texts(entry.token_id)
        top = []
        for tid, lp in entry.top:
            alt = texts(tid)
            top.append(TopLogprob(alt, lp, list(alt.encode())))
        content.append(TokenLogprob(token, entry.logprob, list(token.encode()), top))
    return ChatLogprobs(content=content)


class LegacyLogprobs:
    """Builds the legacy shape of one completion choice: echoed prompt tokens first, then output."""

    def __init__(self, texts: TokenTexts, offset: int = 0) -> None:
        self._texts = texts
        self._offset = offset
        self.value = CompletionLogprobs([], [], [], [])

    def add_prompt(self, prompt_ids: Sequence[int], scored: Sequence[TokenLogprobs | None] | None) -> None:
        """Prompt tokens (``echo``): the first has no log-prob (no context before it)."""
        for i, tid in enumerate(prompt_ids):
            entry = scored[i] if scored is not None and i < len(scored) else None
            self._add(tid, entry)

    def add(self, entries: Sequence[TokenLogprobs]) -> None:
        """Output tokens."""
        for entry in entries:
            self._add(entry.token_id, entry)

    def _add(self, token_id: int, entry: TokenLogprobs | None) -> None:
        value = self.value
        token = self._texts(token_id)
        value.tokens.append(token)
        value.text_offset.append(self._offset)
        self._offset += len(token)
        if entry is None:
            value.token_logprobs.append(None)
            value.top_logprobs.append(None)
            return
        value.token_logprobs.append(entry.logprob)
        top: dict[str, float] = {}
        for tid, lp in entry.top:
            top.setdefault(self._texts(tid), lp)
        value.top_logprobs.append(top)

    def take(self) -> CompletionLogprobs:
        """What was added since the last call (for stream chunks); offsets keep counting."""
        value, self.value = self.value, CompletionLogprobs([], [], [], [])
        return value
