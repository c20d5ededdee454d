"""Turning LoRA on in a running gateway (``[engine] enable_lora = "auto"``).

vLLM's CPU build runs an engine with LoRA enabled eagerly (~0.7x on base requests), so with
``auto`` the vLLM engine starts without LoRA when no adapter expert exists. When the first one
appears while the gateway runs (``forge-train ... --register`` writing the registry file, or the
admin API), a LoRA-enabled engine with the same settings is built in the background while the
old one keeps serving everything; the registered adapters are loaded into it, then it replaces
the old engine in one step (``lora_engine_swapped`` in the log) and the old one stops once the
requests it holds have finished.

Requests for an adapter expert meanwhile wait for the new engine, as a standalone expert's first
request waits for its engine: the user just trained that expert and asked for it. The wait is
bounded by ``limits.request_timeout``; past it (or when the build failed) the request goes to the
default expert like any unavailable expert, ``fallback:<expert>-loading`` (or ``-engine``).
Everything else is served on the old engine throughout.

Only vLLM on CPU needs this (:func:`lora_at_start` decides, once): the transformers engine pays
nothing for LoRA until an adapter is loaded, and vLLM on GPUs keeps compiling and CUDA graphs with
LoRA on (base requests pay little), while two engines side by side would not fit its memory
(``gpu_memory_utilization``), so ``auto`` turns LoRA on from the start there.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from forge_gateway.engine_pool import engine_options, lora_at_start
from forge_gateway.engines.base import Engine, LoraSpec
from forge_gateway.routing import Target
from forge_sdk.errors import ExpertUnavailableError, LargeForgeAIError

if TYPE_CHECKING:
    from collections.abc import Collection

    from forge_gateway.config import GatewayConfig
    from forge_gateway.routing import ExpertCatalog

__all__ = ["LoraSwitch", "lora_at_start", "lora_engine_factory"]


class Gateway(Protocol):
    """What the switch needs of the gateway whose engine it replaces (``state.Gateway``; a
    protocol, so the gateway's state and its switch do not import each other)."""

    config: GatewayConfig
    engine: Engine
    catalog: ExpertCatalog

    def replace_loaded_loras(self, loaded: Collection[int]) -> None:
        """The adapter ids loaded in a new engine that replaced the old one."""
        ...


log = structlog.get_logger("forge_gateway.lora_switch")

_POLL_S = 0.25
"""How often a retired engine is checked for finished requests."""


def lora_engine_factory(gateway: Gateway) -> Callable[[], Engine] | None:
    """Builds the base model's engine again with LoRA on, or None when LoRA is not to be turned on
    at runtime (already on, ``enable_lora = false``, or an engine kind other than vLLM)."""
    config, engine = gateway.config, gateway.engine
    if config.engine.enable_lora != "auto" or engine.supports_lora or engine.name != "vllm":
        return None

    def build() -> Engine:
        from forge_gateway.engines import create_engine

        return create_engine("vllm", config.model, **engine_options(config, adapters=True))

    return build


class LoraSwitch:
    """Replaces the gateway's LoRA-less engine by a LoRA-enabled one when adapters appear.

    Args:
        gateway: the gateway whose ``engine`` is replaced and whose catalog says ``lora_state``.
        factory: builds the unstarted LoRA-enabled engine; None: no switch (state stays as is).
    """

    def __init__(self, gateway: Gateway, factory: Callable[[], Engine] | None) -> None:
        self._gateway = gateway
        self._factory = factory
        self._task: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._closed = False
        self.error: str | None = None
        self._failed_at = 0.0
        self.swapped_at: float | None = None
        if factory is not None:
            gateway.catalog.lora_state = "off"

    @property
    def state(self) -> str:
        return self._gateway.catalog.lora_state

    def status(self) -> dict[str, Any]:
        """``{"state": on|off|starting|failed|disabled, ...}`` for ``/health`` and ``/experts``."""
        out: dict[str, Any] = {"state": self.state}
        if self.error and self.state == "failed":
            out["error"] = self.error
        if self.swapped_at is not None:
            out["enabled_at"] = self.swapped_at
        return out

    def expert_status(self) -> dict[str, Any]:
        """An adapter expert's ``status`` in ``/experts``: ``ok`` once LoRA serves, else why not."""
        state = self.state
        if state == "on":
            return {"state": "ok"}
        out: dict[str, Any] = {"state": "loading" if state in ("off", "starting") else "unservable"}
        out["lora"] = state
        if state in ("failed", "disabled"):
            out["error"] = self._gateway.catalog.lora_off_reason
        return out

    # --- starting ----------------------------------------------------------------------------

    def check(self) -> None:
        """Start the LoRA engine if adapter experts exist and LoRA is off (catalog callbacks, start-up)."""
        if self._factory is None or self.state not in ("off", "failed") or self._closed:
            return
        adapters = [n for n, e in self._gateway.catalog.experts.items() if e.kind == "adapter"]
        if not adapters:
            return
        if self.state == "failed":
            return  # a failed build is retried by the next request for an adapter, not every change
        self._begin(adapters)

    def _begin(self, adapters: list[str]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # before the event loop: Gateway.start() checks again
            return
        self._gateway.catalog.lora_state = "starting"
        self._task = loop.create_task(self._switch(adapters))

    async def wait_for(self, target: Target) -> Target:
        """The target to serve an adapter request with: ``target`` once the LoRA engine serves,
        else (past ``limits.request_timeout``, or when its build failed) the default expert.

        Raises:
            ExpertUnavailableError: LoRA could not be turned on and no local fallback exists.
        """
        retry = self.state == "off" or (
            self.state == "failed"
            and time.monotonic() - self._failed_at >= self._gateway.config.router.cooldown_s
        )
        if retry and self._factory is not None and not self._closed:
            self._begin([target.expert_name])  # a failed build is retried after the cooldown
        task = self._task
        timeout = self._gateway.config.limits.request_timeout
        if task is not None and not task.done():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), timeout)
        if self._gateway.engine.supports_lora:
            return target
        why = "loading" if self.state == "starting" else "engine"
        log.warning("expert_fallback", expert=target.expert_name, why=why, error=self.error)
        detail = f"LoRA engine {self.state}" + (f": {self.error}" if self.error else "")
        try:
            fallback = self._gateway.catalog.fallback(target, why)
        except ExpertUnavailableError as exc:
            raise ExpertUnavailableError(f"{exc.message} ({detail})") from None
        if fallback.lora is not None:  # the default expert is an adapter too: no local fallback
            raise ExpertUnavailableError(f"expert {target.expert_name!r} is unavailable ({detail})")
        return fallback

    async def _switch(self, adapters: list[str]) -> None:
        gateway, catalog = self._gateway, self._gateway.catalog
        assert self._factory is not None
        began = time.monotonic()
        log.info("lora_engine_starting", adapters=adapters, model=gateway.config.model)
        new: Engine | None = None
        try:
            new = self._factory()
            await new.start()
            loaded = await self._preload(new)
        except Exception as exc:
            self.error = exc.message if isinstance(exc, LargeForgeAIError) else f"{type(exc).__name__}: {exc}"
            catalog.lora_state, self._failed_at = "failed", time.monotonic()
            catalog.lora_off_reason = f"the LoRA engine failed to start: {self.error}"
            log.error("lora_engine_failed", error=self.error)
            if new is not None:
                with contextlib.suppress(Exception):
                    await new.stop()
            return
        if self._closed:  # the gateway stops: do not leak the new engine
            await new.stop()
            return
        # One step on the event loop: every request acquired from here on gets the new engine.
        old = gateway.engine
        gateway.engine = new
        gateway.replace_loaded_loras(loaded)
        catalog.lora_enabled, catalog.lora_state, self.error = True, "on", None
        self.swapped_at = time.time()
        stats = old.stats()
        log.info(
            "lora_engine_swapped",
            seconds=round(time.monotonic() - began, 2),
            adapters=sorted(spec.name for spec in loaded.values()),
            old_running=stats.running,
            old_waiting=stats.waiting,
        )
        task = asyncio.get_running_loop().create_task(self._retire(old))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _preload(self, engine: Engine) -> dict[int, LoraSpec]:
        """Load the registered adapters before the swap, so their first requests do not pay it."""
        loaded: dict[int, LoraSpec] = {}
        for expert in list(self._gateway.catalog.experts.values()):
            spec = self._gateway.catalog.lora_for(expert)
            if spec is None:
                continue
            try:
                await engine.add_lora(spec)
            except Exception as exc:  # requests for it report the problem; the others are served
                log.warning("lora_preload_failed", adapter=spec.name, path=spec.path, error=str(exc))
            else:
                loaded[spec.lora_id] = spec
        return loaded

    async def _retire(self, old: Engine) -> None:
        """Stop the replaced engine once no request uses it.

        A request that took the old engine just before the swap may still be planning or queued
        in admission (bounded by ``limits.queue_timeout``) before it reaches the engine, so the
        old engine waits that long and then until it runs nothing (seen twice in a row).
        """
        settle = time.monotonic() + self._gateway.config.limits.queue_timeout + 1.0
        idle_checks = 0
        while idle_checks < 2 and not self._closed:
            await asyncio.sleep(_POLL_S)
            stats = old.stats()
            busy = stats.running or stats.waiting
            idle_checks = 0 if busy or time.monotonic() < settle else idle_checks + 1
        try:
            await old.stop()
        except Exception as exc:  # best effort: it serves nothing any more
            log.warning("lora_old_engine_stop_failed", error=str(exc))
        else:
            log.info("lora_old_engine_stopped")

    async def stop(self) -> None:
        """Gateway shutdown: finish (and drop) a build in progress, stop replaced engines now."""
        self._closed = True
        if self._task is not None and not self._task.done():
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._task  # stopping half-way through vLLM's start is unsafe
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
