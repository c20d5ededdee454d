"""The engine interface: what the gateway needs from anything that generates tokens.

An engine serves one base model (plus, where it can, LoRA adapters on it). It streams
:class:`EngineOutput` deltas for one sequence per request; the gateway fans ``n > 1`` out into
``n`` engine requests. Every blocking step (loading, tokenizing long inputs) runs off the event
loop. Cancelling the async iterator (client disconnect) must abort the request in the engine.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Engine", "EngineOutput", "EngineRequest", "EngineStats", "LoraSpec", "SamplingOptions"]


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
    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        """Apply the model's chat template with a generation prompt."""

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
