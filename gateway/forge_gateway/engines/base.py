"""The engine interface: what the gateway needs from anything that generates tokens.

An engine serves one base model (plus, where it can, LoRA adapters on it). It streams
:class:`EngineOutput` deltas for one sequence per request; the gateway fans ``n > 1`` out into
``n`` engine requests. Every blocking step (loading, tokenizing long inputs) runs off the event
loop. Cancelling the async iterator (client disconnect) must abort the request in the engine.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "Constraint",
    "Engine",
    "EngineOutput",
    "EngineRequest",
    "EngineStats",
    "LoraSpec",
    "SamplingOptions",
    "TokenLogprobs",
]

LOGPROB_FLOOR = -9999.0
"""Log-probs below this (``-inf`` for masked tokens) are reported as this, as vLLM does: JSON has no -inf."""


@dataclass(frozen=True, slots=True)
class Constraint:
    """Constrained decoding: the output must match this (grammar engines: xgrammar in both engines)."""

    kind: Literal["json", "json_object", "regex", "choice", "grammar"]
    value: Any = None
    """JSON schema (dict) for ``json``; pattern for ``regex``; list of strings for ``choice``;
    EBNF text for ``grammar``; unused for ``json_object``."""
    compact: bool = False
    """No free whitespace inside JSON."""
    param: str = "response_format"
    """The request field the constraint came from, named by the 400 when it does not compile."""


@dataclass(frozen=True, slots=True)
class SamplingOptions:
    """How to sample one sequence."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    ignore_eos: bool = False
    """Keep generating past the end-of-sequence token (benchmarks; vLLM's extension)."""
    top_k: int = 0
    """Sample among the k most likely tokens (0: all)."""
    min_p: float = 0.0
    """Drop tokens below ``min_p`` times the top token's probability."""
    repetition_penalty: float = 1.0
    """CTRL-style penalty on tokens of the prompt and output (1: off)."""
    min_tokens: int = 0
    """End-of-sequence and stop strings are ignored before this many tokens."""
    stop_token_ids: tuple[int, ...] = ()
    """Extra token ids that end the sequence."""
    skip_special_tokens: bool = True
    """Leave special tokens out of the text."""
    include_stop_str_in_output: bool = False
    """Keep the matched stop string in the text."""
    logit_bias: Mapping[int, float] | None = None
    """Token id -> bias added to its logit."""
    logprobs: int | None = None
    """Report each output token's log-prob and this many top alternatives (None: no log-probs)."""
    prompt_logprobs: int | None = None
    """Report each prompt token's log-prob and this many alternatives (None: none)."""
    constraint: Constraint | None = None
    """Constrained decoding (structured outputs, forced tool calls)."""


@dataclass(slots=True)
class TokenLogprobs:
    """The log-prob of one token and the most likely tokens at its position (raw model distribution)."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)
    """``(token id, log-prob)``, most likely first."""


@dataclass(frozen=True, slots=True)
class LoraSpec:
    """A LoRA adapter to apply to this request."""

    name: str
    path: str
    lora_id: int
    """Stable positive integer id for the adapter (vLLM's ``lora_int_id``)."""


@dataclass(slots=True)
class EngineRequest:
    """One sequence to generate."""

    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingOptions
    lora: LoraSpec | None = None


@dataclass(slots=True)
class EngineOutput:
    """A streamed delta of one request."""

    text: str
    """New text since the previous output (stop strings already removed)."""
    token_ids: list[int] = field(default_factory=list)
    """New token ids since the previous output."""
    finish_reason: Literal["stop", "length", "abort"] | None = None
    """Set on the last output only."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    """Cumulative completion tokens so far."""
    logprobs: list[TokenLogprobs] | None = None
    """One entry per token of ``token_ids`` when the request asked for log-probs."""
    prompt_logprobs: list[TokenLogprobs | None] | None = None
    """First output only, when asked: one per prompt token (None for the first, which has no context)."""


@dataclass(slots=True)
class EngineStats:
    """Load figures for metrics and health."""

    running: int
    waiting: int


class Engine(abc.ABC):
    """A token generator for one base model."""

    name: str = "engine"
    model_path: str
    """Local folder or hub id of the served base model."""

    @property
    @abc.abstractmethod
    def max_model_len(self) -> int:
        """Context length: prompt plus completion tokens."""

    @property
    def supports_lora(self) -> bool:
        """Whether requests may carry a :class:`LoraSpec`."""
        return False

    def settings(self) -> dict[str, Any]:
        """What the engine runs after start: ``engine``, and where known ``dtype``, ``compiled``
        and ``lora`` (logged at start, printed by ``forge-gateway check``)."""
        return {"engine": self.name}

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the model (off the event loop) and get ready to serve."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Abort what is running and release the model."""

    @abc.abstractmethod
    async def health(self) -> dict[str, Any]:
        """``{"ok": bool, ...}``; must be cheap."""

    @abc.abstractmethod
    def stats(self) -> EngineStats:
        """Running and waiting requests right now."""

    @abc.abstractmethod
    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added)."""

    @abc.abstractmethod
    def render_chat(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        template_kwargs: dict[str, Any] | None = None,
    ) -> str:
        """Apply the model's chat template (with ``tools`` when given) and a generation prompt."""

    @property
    def vocab_size(self) -> int | None:
        """Logits width of the model (after start; None when unknown)."""
        return None

    def detokenize(self, token_ids: Sequence[int]) -> str:
        """The text of token ids (for echoing a prompt given as ids)."""
        raise NotImplementedError(f"{self.name} engine cannot detokenize")

    @property
    def chat_template(self) -> str:
        """The chat template's source ("" when unknown): tells which tool-call format the model writes."""
        return ""

    def token_text(self, token_id: int) -> str:
        """The text one token stands for (for log-prob reports)."""
        raise NotImplementedError(f"{self.name} engine cannot show token texts")

    @abc.abstractmethod
    def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        """Stream the outputs of one request; closing the iterator early aborts it."""

    @abc.abstractmethod
    async def abort(self, request_id: str) -> None:
        """Stop working on a request (no-op if it already finished)."""

    async def add_lora(self, lora: LoraSpec) -> None:
        """Load an adapter so requests can use it without a first-request delay."""
        raise NotImplementedError(f"{self.name} engine does not serve LoRA adapters")

    async def remove_lora(self, lora: LoraSpec) -> None:
        """Unload an adapter."""
        raise NotImplementedError(f"{self.name} engine does not serve LoRA adapters")
