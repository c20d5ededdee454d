"""Build the Litestar application around a :class:`Gateway`."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pluggy
import structlog
from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig

from forge_gateway.api_admin import admin_routes
from forge_gateway.api_openai import openai_routes
from forge_gateway.api_sdd import sdd_routes
from forge_gateway.config import GatewayConfig
from forge_gateway.engines.base import Engine
from forge_gateway.engines.vllm_parallel import vllm_parallel_options
from forge_gateway.errors import exception_handlers
from forge_gateway.fastpath import RemoteFastPath
from forge_gateway.security import install_security
from forge_gateway.security.policy import route_guard
from forge_gateway.state import Gateway, adapter_experts
from forge_gateway.upstream_replicas import UpstreamCollector
from forge_sdk.plugins import get_plugin_manager

__all__ = ["base_engine", "create_app", "engine_options"]

log = structlog.get_logger("forge_gateway")


def create_app(
    config: GatewayConfig, *, engine: Engine | None = None, pm: pluggy.PluginManager | None = None
) -> Litestar:
    """The gateway as an ASGI app; the engine starts with the app and stops with it.

    Args:
        config: validated config.
        engine: engine to serve with (default: built from ``config.engine``).
        pm: plugin manager (default: a fresh one over installed plugins).
    """
    if engine is None:
        pm = pm or get_plugin_manager()
        config, engine = base_engine(config, pm)
    gateway = Gateway(config, engine, pm or get_plugin_manager())

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        try:
            await gateway.start()
        except BaseException as exc:
            # The CLI reports it as one line after uvicorn gives up; the traceback goes to the
            # debug log only.
            gateway.startup_error = exc
            log.debug("startup failed", exc_info=exc)
            raise
        # torch, transformers and the model leave ~0.5 M long-lived objects; every full (gen-2)
        # collection walked them all, a 0.3-0.5 s stop of the event loop every few thousand
        # requests (the proxy's p99 at c=32 was 35x its p50). Freezing what start-up built moves
        # it out of the collector's reach; request garbage is still collected as before.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await gateway.stop()

    app = Litestar(
        route_handlers=[*openai_routes, *sdd_routes, *admin_routes],
        dependencies={"gateway": Provide(lambda: gateway, use_cache=True, sync_to_thread=False)},
        exception_handlers=exception_handlers,  # type: ignore[arg-type]
        # Each route's scope (public / key / admin) lives in its ``opt``; the guard enforces it on
        # the handler Litestar matched (the middleware already did on the same lookup).
        guards=[route_guard],
        lifespan=[lifespan],
        request_max_body_size=config.limits.max_body_bytes,
        openapi_config=OpenAPIConfig(title="LargeForge gateway", version="0.1.0", path="/openapi"),
        debug=False,
        # Logging is configured once by forge_gateway.logs (JSON via structlog); Litestar's
        # default config would replace the root handler with a plain-text one.
        logging_config=None,
    )
    app.state.gateway = gateway
    app.asgi_handler = RemoteFastPath(app.asgi_handler, gateway)  # remote experts skip the framework
    # Keys, rate limits, admission, usage ledger, /metrics and access logs (pure ASGI, outermost).
    layer = install_security(app, gateway)
    # Per-replica state of remote experts, read from the upstream pool at scrape time.
    layer.metrics.registry.register(UpstreamCollector(gateway.upstreams.replica_sets))
    return app


def base_engine(config: GatewayConfig, pm: pluggy.PluginManager) -> tuple[GatewayConfig, Engine]:
    """The (unstarted) engine ``serve`` runs for ``config``, and the config with its model resolved.

    Shared by ``serve`` and ``forge-gateway check``, so the check runs exactly what serve would.

    Raises:
        ConfigurationError: a missing or unusable model path, or a bad engine option.
        ModelError: a catalogue download or GGUF conversion failed.
    """
    from forge_gateway.engines import create_engine
    from forge_gateway.model_source import resolve_base_model

    # A catalogue name or a GGUF file becomes a cached folder; bad paths fail here, in a second.
    config = resolve_base_model(config)
    adapters = bool(adapter_experts(config, pm))
    return config, create_engine(
        config.engine.kind, config.model, **engine_options(config, adapters=adapters)
    )


def engine_options(config: GatewayConfig, *, adapters: bool = False) -> dict[str, object]:
    """Engine keyword arguments from the config's ``[engine]`` section.

    Args:
        config: the gateway config.
        adapters: adapter experts are registered (``enable_lora = "auto"`` turns LoRA on then).
    """
    from forge_gateway.model_source import derive_max_model_len

    e = config.engine
    lora = adapters if e.enable_lora == "auto" else e.enable_lora
    options: dict[str, object] = {"enable_lora": lora, "dtype": e.dtype}
    max_model_len = derive_max_model_len(config.model, e.max_model_len)
    if max_model_len is not None:  # None: neither config nor model says; the engine derives it
        options["max_model_len"] = max_model_len
    if e.kind in ("vllm", "auto"):
        options.update(
            max_loras=e.max_loras,
            max_lora_rank=e.max_lora_rank,
            quantization=e.quantization,
            gpu_memory_utilization=e.gpu_memory_utilization,
            **vllm_parallel_options(e),
        )
    if e.kind == "transformers":
        options["max_batch_size"] = e.max_batch_size
    return options
