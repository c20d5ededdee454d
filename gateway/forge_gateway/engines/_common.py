"""Pieces both engines share: the Hugging Face tokenizer, request checks, and incremental detokenizing.

Kept free of torch and vLLM imports so the gateway can import the engines package on a machine
that has neither.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from forge_gateway.engines.base import Constraint, Engine, EngineRequest
from forge_gateway.engines.compile_budget import check_constraint
from forge_sdk.errors import (
    ContextLengthExceededError,
    EngineUnavailableError,
    InvalidRequestError,
    ModelError,
)

__all__ = ["ChatTokenizer", "HFTokenizerEngine", "StopChecker", "check_request", "constraint_error"]


class ChatTokenizer:
    """The served model's Hugging Face tokenizer, with the two calls the gateway needs."""

    def __init__(self, tokenizer: Any) -> None:
        self.hf = tokenizer

    @classmethod
    def load(cls, model_path: str, tokenizer_path: str | None = None) -> ChatTokenizer:
        """Load ``AutoTokenizer`` from ``tokenizer_path`` (default: the model folder or hub id).

        Raises:
            ModelError: the tokenizer cannot be loaded.
        """
        from transformers import AutoTokenizer

        try:
            return cls(AutoTokenizer.from_pretrained(tokenizer_path or model_path))
        except Exception as exc:  # transformers raises OSError, ValueError, ... for a bad folder
            raise ModelError(f"cannot load the tokenizer of {tokenizer_path or model_path!r}: {exc}") from exc

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens added."""
        return list(self.hf.encode(text, add_special_tokens=False))

    def render_chat(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        template_kwargs: dict[str, Any] | None = None,
    ) -> str:
        """The chat template applied to ``messages`` (and ``tools``) with a generation prompt.

        Raises:
            InvalidRequestError: the model has no chat template, or the messages do not fit it.
        """
        if not getattr(self.hf, "chat_template", None):
            raise InvalidRequestError(
                "this model has no chat template; use /v1/completions", param="messages"
            )
        kwargs = dict(template_kwargs or {})
        # The caller's template variables must not override what the gateway decides.
        for reserved in ("tokenize", "add_generation_prompt", "continue_final_message", "tools", "messages"):
            kwargs.pop(reserved, None)
        try:
            return self.hf.apply_chat_template(
                list(messages),
                tools=tools or None,
                tokenize=False,
                add_generation_prompt=add_generation_prompt and not continue_final_message,
                continue_final_message=continue_final_message,
                **kwargs,
            )
        except Exception as exc:  # jinja raises TemplateError for messages the template refuses
            raise InvalidRequestError(f"cannot apply the chat template: {exc}", param="messages") from exc

    @property
    def chat_template(self) -> str:
        """The chat template's source ("" when the model has none)."""
        template = getattr(self.hf, "chat_template", None)
        return template if isinstance(template, str) else ""

    def token_text(self, token_id: int) -> str:
        """The text of one token (special tokens included), as log-prob reports show it."""
        return str(self.hf.decode([token_id], skip_special_tokens=False))

    def eos_ids(self, extra: Sequence[int] | int | None = None) -> set[int]:
        """End-of-sequence ids: the tokenizer's plus ``extra`` (e.g. from generation_config)."""
        ids: set[int] = set()
        if self.hf.eos_token_id is not None:
            ids.add(int(self.hf.eos_token_id))
        if isinstance(extra, int):
            ids.add(extra)
        elif extra:
            ids.update(int(i) for i in extra)
        return ids


def check_request(
    request: EngineRequest, *, started: bool, max_model_len: int, vocab_size: int | None
) -> None:
    """Reject a request the engine must not run, with the error the gateway maps to HTTP.

    Raises:
        EngineUnavailableError: the engine is not started.
        InvalidRequestError: empty prompt, out-of-vocabulary ids, bad sampling values, or an output
            constraint over the compile budget's size limits.
        ContextLengthExceededError: prompt plus ``max_tokens`` exceed ``max_model_len``.
    """
    if not started:
        raise EngineUnavailableError("the engine is not running")
    ids = request.prompt_token_ids
    s = request.sampling
    if not ids:
        raise InvalidRequestError("the prompt is empty", param="prompt")
    if vocab_size is not None and (min(ids) < 0 or max(ids) >= vocab_size):
        raise InvalidRequestError(f"prompt token ids must lie in [0, {vocab_size})", param="prompt")
    if s.max_tokens < 1:
        raise InvalidRequestError("max_tokens must be at least 1", param="max_tokens")
    if s.temperature < 0:
        raise InvalidRequestError("temperature must be >= 0", param="temperature")
    if not 0 < s.top_p <= 1:
        raise InvalidRequestError("top_p must be in (0, 1]", param="top_p")
    if s.constraint is not None:
        check_constraint(s.constraint)  # size limits before any compile work (compile_budget)
    if len(ids) + s.max_tokens > max_model_len:
        raise ContextLengthExceededError(
            f"this model's maximum context length is {max_model_len} tokens; the prompt has {len(ids)} "
            f"and max_tokens is {s.max_tokens}",
            param="max_tokens",
        )


class StopChecker:
    """Turns a growing token list into text deltas, cutting at the first stop string.

    Text that could still become a stop string, or that ends in a half-decoded UTF-8 sequence,
    is held back until the next token decides it, so a stop string never leaks to the caller.
    """

    def __init__(
        self,
        tokenizer: Any,
        stop: Sequence[str],
        *,
        skip_special_tokens: bool = True,
        include_stop: bool = False,
    ) -> None:
        self._tok = tokenizer
        self._skip_special = skip_special_tokens
        self._include_stop = include_stop
        self._stop = tuple(s for s in stop if s)
        self._ids: list[int] = []
        self._emitted = 0
        self.stopped = False

    def push(self, token_ids: Sequence[int], final: bool = False) -> str:
        """Add tokens; return the new text that is safe to send.

        Args:
            token_ids: tokens generated since the last call.
            final: no more tokens follow, so held-back text is released.
        """
        self._ids.extend(token_ids)
        text = self._tok.decode(self._ids, skip_special_tokens=self._skip_special)
        if self._stop:
            # Only the tail can hold a new match: search from just before what was already sent.
            start = max(0, self._emitted - max(len(s) for s in self._stop))
            hits = [(i, len(s)) for i, s in ((text.find(s, start), s) for s in self._stop) if i >= 0]
            if hits:
                self.stopped = True
                at, length = min(hits)
                cut = at + length if self._include_stop else at
                delta = text[self._emitted : cut]
                self._emitted = max(self._emitted, cut)
                return delta
        safe = len(text)
        if not final:
            safe = len(text.rstrip("\ufffd"))
            hold = 0
            for s in self._stop:
                for k in range(min(len(s) - 1, safe), hold, -1):
                    if text.endswith(s[:k], 0, safe):
                        hold = k
                        break
            safe -= hold
        if safe <= self._emitted:
            return ""
        delta = text[self._emitted : safe]
        self._emitted = safe
        return delta


class HFTokenizerEngine(Engine):
    """What both engines share: a Hugging Face tokenizer loaded at start, context and LoRA flags.

    Subclasses set ``_tokenizer`` in ``start()`` and ``_max_model_len`` / ``_enable_lora`` in
    ``__init__`` (or once the model is loaded).
    """

    _tokenizer: ChatTokenizer | None = None
    _vocab_size: int | None = None
    _max_model_len: int
    _enable_lora: bool

    @property
    def max_model_len(self) -> int:
        """Context length: prompt plus completion tokens."""
        return self._max_model_len

    @property
    def supports_lora(self) -> bool:
        """True when started with ``enable_lora``."""
        return self._enable_lora

    @property
    def tokenizer(self) -> Any:
        """The Hugging Face tokenizer (after start)."""
        return self._require_tokenizer().hf

    def _require_tokenizer(self) -> ChatTokenizer:
        if self._tokenizer is None:
            raise EngineUnavailableError("the engine is not started")
        return self._tokenizer

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added)."""
        return self._require_tokenizer().tokenize(text)

    def render_chat(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        template_kwargs: dict[str, Any] | None = None,
    ) -> str:
        """The model's chat template (with ``tools``) and a generation prompt."""
        return self._require_tokenizer().render_chat(
            messages,
            tools=tools,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            template_kwargs=template_kwargs,
        )

    @property
    def chat_template(self) -> str:
        """The model's chat template source ("" when it has none)."""
        return self._require_tokenizer().chat_template

    def token_text(self, token_id: int) -> str:
        """The text of one token, for log-prob reports."""
        return self._require_tokenizer().token_text(token_id)

    @property
    def vocab_size(self) -> int | None:
        """The model's logits width (after start)."""
        return self._vocab_size

    def detokenize(self, token_ids: Sequence[int]) -> str:
        """The text of ``token_ids`` (special tokens kept)."""
        return str(self._require_tokenizer().hf.decode(list(token_ids), skip_special_tokens=False))


# xgrammar's C++ errors start with a log stamp and its build path ("[13:23:47] /project/cpp/x.cc:4950: ");
# the client needs only the reason, and the build layout is nobody's business.
_NATIVE_LOG_PREFIX = re.compile(r"^\[[0-9:.]+\] \S+:\d+: ")


def constraint_error(constraint: Constraint, exc: BaseException) -> InvalidRequestError:
    """The 400 for a schema, pattern or grammar the grammar backend cannot compile."""
    reason = _NATIVE_LOG_PREFIX.sub("", str(exc).strip()) or type(exc).__name__
    return InvalidRequestError(f"cannot compile the output constraint: {reason}", param=constraint.param)
