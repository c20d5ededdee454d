"""``forge-gateway check``: the parity check (:mod:`forge_gateway.parity`) for the engine ``serve``
would run with the same flags."""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from forge_gateway.config import GatewayConfig
    from forge_gateway.engines.base import Engine
    from forge_gateway.parity import ParityReport, Reference

__all__ = ["describe", "run_check"]


def describe(settings: dict[str, Any]) -> str:
    """``vllm (float32, compiled, LoRA off)`` from an engine's :meth:`Engine.settings`."""
    parts = [str(settings["dtype"])] if "dtype" in settings else []
    if "compiled" in settings:
        parts.append("compiled" if settings["compiled"] else "eager")
    if "lora" in settings:
        parts.append("LoRA on" if settings["lora"] else "LoRA off")
    return f"{settings['engine']} ({', '.join(parts)})" if parts else str(settings["engine"])


def run_check(config: GatewayConfig) -> int:
    """Build serve's engine for ``config``, run the parity check, print the table; 0 when it passes.

    Raises:
        ConfigurationError: bad flags or config (exit 2 through the CLI).
        ModelError: the model cannot be loaded (exit 1).
    """
    from forge_gateway.app import base_engine
    from forge_gateway.logs import configure_logging
    from forge_gateway.parity import reference_generations
    from forge_sdk.plugins import get_plugin_manager

    configure_logging("warning", json=False)  # the table is the output; engine chatter stays out
    config, engine = base_engine(config, get_plugin_manager())
    print(f"forge-gateway: reference: transformers, float32, on {config.model_name} ...", file=sys.stderr)
    reference = reference_generations(config.model)
    print(f"forge-gateway: starting the {engine.name} engine as serve would ...", file=sys.stderr)
    report = asyncio.run(_run(engine, reference))
    print(report.table())
    return 0 if report.passed else 1


async def _run(engine: Engine, reference: Reference) -> ParityReport:
    from forge_gateway.parity import run_parity

    await engine.start()
    try:
        return await run_parity(engine, reference, describe(engine.settings()))
    finally:
        await engine.stop()
