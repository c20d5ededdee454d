"""The gateway's long-lived state: config, engine, expert catalog, upstream pool, plugins."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine
from typing import Any, TypeVar

import pluggy
import structlog

from forge_gateway.config import GatewayConfig
from forge_gateway.engine_pool import STANDALONE_KINDS, EnginePool, standalone_factory
from forge_gateway.engines.base import Engine, LoraSpec
from forge_gateway.lora_switch import LoraSwitch, lora_engine_factory
from forge_gateway.routing import ExpertCatalog, Target
from forge_gateway.upstream.pool import UpstreamPool
from forge_sdk.classifiers import Classifier
from forge_sdk.errors import (
    ConfigurationError,
    EngineUnavailableError,
    ExpertUnavailableError,
    RequestTimeoutError,
)
from forge_sdk.experts import ExpertModel
from forge_sdk.plugins import collect
from forge_sdk.tools import ToolParser

__all__ = ["Gateway", "UsageListener", "adapter_experts"]

T = TypeVar("T")
log = structlog.get_logger("forge_gateway")

UsageListener = Callable[[Target, int, int, str], None]
"""Called after each request with (target, prompt_tokens, completion_tokens, engine name)."""


def _plugin_experts(pm: pluggy.PluginManager) -> list[ExpertModel]:
    return list(collect(pm, "register_experts", key=lambda e: e.name).values())


def adapter_experts(config: GatewayConfig, pm: pluggy.PluginManager) -> list[str]:
    """The adapter experts registered now (plugins and registry file): whether
    ``[engine] enable_lora = "auto"`` starts vLLM with LoRA."""
    catalog = ExpertCatalog(config.model_name, _plugin_experts(pm), config.registry, lora_enabled=False)
    return sorted(name for name, expert in catalog.experts.items() if expert.kind == "adapter")


class Gateway:
    """Everything a request handler needs, built once at start-up.

    Args:
        config: validated gateway config.
        engine: the in-process engine for the base model (not yet started).
        pm: plugin manager whose hooks provide experts and classifiers.
    """

    def __init__(self, config: GatewayConfig, engine: Engine, pm: pluggy.PluginManager) -> None:
        self.config = config
        self.engine = engine
        self.pm = pm
        self.started_at = time.time()
        self.startup_error: BaseException | None = None
        """What made :meth:`start` fail, for the CLI to report as one line."""
        self.usage_listeners: list[UsageListener] = []
        self.catalog = ExpertCatalog(
            config.model_name,
            _plugin_experts(pm),
            config.registry,
            lora_enabled=engine.supports_lora,
            default_expert=config.router.default_expert,
            standalone_enabled=engine.name in STANDALONE_KINDS,
        )
        # Standalone (merged / quantized) experts each get an engine of the base engine's kind.
        self.standalone = EnginePool(
            standalone_factory(config, engine.name),
            retry_after=config.router.cooldown_s,
            max_running=config.engine.max_standalone_engines,
        )
        self.standalone.sync(self.catalog.experts)
        self.classifiers: dict[str, type[Classifier]] = collect(
            pm, "register_classifiers", key=lambda c: c.name
        )
        self.catalog.classifier = self._build_classifier()
        self.tool_parsers: dict[str, type[ToolParser]] = collect(
            pm, "register_tool_parsers", key=lambda c: c.name
        )
        wanted = config.api.tool_parser
        if wanted != "auto" and wanted not in self.tool_parsers:
            raise ConfigurationError(
                f"[api] tool_parser {wanted!r} is not registered; known: {sorted(self.tool_parsers) or 'none'}"
            )
        router = config.router
        self.upstreams = UpstreamPool(
            default_expert=router.default_expert,
            failure_threshold=router.failure_threshold,
            cooldown_s=router.cooldown_s,
            retry_base_delay=router.retry_base_delay,
            allow_link_local=router.upstream_allow_link_local,
            health_check_interval=router.health_check_interval,
            request_timeout=config.limits.request_timeout,
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._loaded_loras: set[int] = set()
        # enable_lora "auto" on vLLM: the first adapter expert registered swaps in a LoRA engine.
        self.lora = LoraSwitch(self, lora_engine_factory(self))
        self.catalog.on_change.append(self._on_experts_changed)

    def _build_classifier(self) -> Classifier | None:
        name = self.config.router.classifier
        if not self.classifiers:
            log.warning("no_classifiers", hint="install forge-plugins for keyword/neural/hybrid routing")
            return None
        cls = self.classifiers.get(name)
        if cls is None:
            raise ConfigurationError(
                f"router.classifier {name!r} is not registered; available: {', '.join(sorted(self.classifiers))}"
            )
        return cls(
            list(self.catalog.experts.values()),
            default_expert=self.config.router.default_expert,
            **self.config.router.options,
        )

    def _on_experts_changed(self, old: dict[str, ExpertModel], new: dict[str, ExpertModel]) -> None:
        gone = [name for name in old if name not in new or new[name] != old[name]]
        self.upstreams.forget(gone)
        self.standalone.retire_soon(self.standalone.sync(new))
        # Unload adapters that left or changed, so the engine frees them and a re-registered
        # name never serves stale weights (new folders get new ids in the catalog).
        if not self.engine.supports_lora:
            self.lora.check()
            return
        for name in gone:
            if old[name].kind == "adapter":
                for spec in self.catalog.loaded_loras(name):
                    if name not in new or spec != self.catalog.lora_for(new[name]):
                        self._background(self._unload(spec))
        # New adapters (e.g. a registry file written by `forge-train --register`) are loaded
        # now, so their first request does not pay for it.
        for name, expert in new.items():
            if expert.kind == "adapter" and (name not in old or old[name] != expert):
                fresh = self.catalog.lora_for(expert)
                if fresh is not None and fresh.lora_id not in self._loaded_loras:
                    self._background(self._preload(fresh))

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # changed outside the event loop (start-up): nothing is loaded yet
            coro.close()
            return
        task = loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def replace_loaded_loras(self, loaded: Collection[int]) -> None:
        """The adapter ids loaded in a new engine that replaced the old one."""
        self._loaded_loras = set(loaded)

    async def load_adapter(self, spec: LoraSpec) -> None:
        """Load an adapter into the engine (see :meth:`Engine.add_lora` for the errors)."""
        await self.engine.add_lora(spec)
        self._loaded_loras.add(spec.lora_id)

    async def unload_adapter(self, spec: LoraSpec) -> None:
        """Unload an adapter from the engine; the next request for it loads it again."""
        self._loaded_loras.discard(spec.lora_id)
        await self.engine.remove_lora(spec)

    async def _preload(self, spec: LoraSpec) -> None:
        if spec.lora_id in self._loaded_loras:
            return
        try:
            await self.load_adapter(spec)
        except Exception as exc:  # requests for it will report the problem; keep serving the rest
            log.warning("lora_preload_failed", adapter=spec.name, path=spec.path, error=str(exc))

    async def _unload(self, spec: LoraSpec) -> None:
        try:
            await self.unload_adapter(spec)
        except Exception as exc:  # unloading is best effort: the engine's LRU evicts it anyway
            log.warning("lora_unload_failed", adapter=spec.name, error=str(exc))

    def engine_for(self, target: Target) -> Engine:
        """The engine that serves a local target (a standalone expert's must be started: see
        :meth:`acquire`).

        Raises:
            EngineUnavailableError: the standalone expert's engine is not running.
        """
        if target.expert is not None and target.expert.kind == "standalone":
            engine = self.standalone.running(target.expert.name)
            if engine is None:
                raise EngineUnavailableError(f"the engine of expert {target.expert.name!r} is not running")
            return engine
        return self.engine

    async def acquire(self, target: Target) -> tuple[Engine, Target]:
        """The engine for a local target, starting a standalone expert's engine on first use.

        A standalone engine that cannot start sends the request to the default expert (SDD §9.2);
        the returned target then says ``fallback:<expert>-engine``.

        Raises:
            EngineUnavailableError: the engine failed and no local fallback exists (503).
        """
        if target.lora is not None and not self.engine.supports_lora:
            # The LoRA engine is starting (enable_lora "auto"): wait for it, or fall back.
            fallback = await self.lora.wait_for(target)
            if fallback is not target:
                return await self.acquire(fallback)
        expert = target.expert
        if expert is None or expert.kind != "standalone":
            return self.engine, target
        try:
            return await self.standalone.get(expert), target
        except EngineUnavailableError as exc:
            try:
                fallback = self.catalog.fallback(target, "engine")
            except ExpertUnavailableError:
                raise exc from None
            log.warning("expert_fallback", expert=expert.name, to=fallback.expert_name, error=exc.message)
            return await self.acquire(fallback)

    async def with_timeout(self, awaitable: Awaitable[T]) -> T:
        """Await with the configured request timeout (504 when it runs out)."""
        timeout = self.config.limits.request_timeout
        try:
            return await asyncio.wait_for(awaitable, timeout)
        except asyncio.TimeoutError as exc:
            raise RequestTimeoutError(f"request took longer than {timeout:g} s") from exc

    def engine_load(self) -> tuple[int, int]:
        """Sequences running and waiting on the base engine plus every running standalone engine."""
        stats = [self.engine.stats()]
        for name, expert in list(self.catalog.experts.items()):
            engine = self.standalone.running(name) if expert.kind == "standalone" else None
            if engine is not None:
                stats.append(engine.stats())
        return sum(s.running for s in stats), sum(s.waiting for s in stats)

    def record_usage(self, target: Target, prompt_tokens: int, completion_tokens: int, engine: str) -> None:
        """Tell listeners (metrics, ledger, rate limiter) what a request consumed."""
        for listener in self.usage_listeners:
            listener(target, prompt_tokens, completion_tokens, engine)

    async def start(self) -> None:
        await self.engine.start()
        self.lora.check()  # adapters registered between the engine's build and now
        await self.upstreams.start()
        if self.config.engine.standalone_start == "startup":
            await self.standalone.start_all()

    async def stop(self) -> None:
        await self.upstreams.stop()
        await self.standalone.stop_all()
        await self.lora.stop()
        await self.engine.stop()
