"""Wire keys, limits, admission, ledger and metrics into a gateway app.

:func:`~forge_gateway.security.install.install_security` builds one per app. The dispatcher
(:mod:`forge_gateway.dispatch`) calls :func:`authorize` when it opens a request (the key's allow
list) and :func:`admit` once the token estimate is known (the token-per-minute reservation).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import structlog

from forge_gateway.observability.metrics import GatewayMetrics
from forge_gateway.security.admission import AdmissionController
from forge_gateway.security.auth import Authenticator, is_loopback
from forge_gateway.security.context import RequestContext, current_request
from forge_gateway.security.ledger import UsageLedger
from forge_gateway.security.ratelimit import (
    Decision,
    MemoryBackend,
    RateLimitBackend,
    RedisBackend,
    redact_secret,
    redact_url,
)
from forge_gateway.security.store import KeyBackend, open_store
from forge_sdk.errors import (
    ConfigurationError,
    LargeForgeAIError,
    OverloadedError,
    PermissionDeniedError,
    RateLimitError,
)

if TYPE_CHECKING:
    from forge_gateway.config import GatewayConfig, LimitsConfig
    from forge_gateway.routing import Target
    from forge_gateway.security.policy import RouteAuthority

__all__ = [
    "SecurityLayer",
    "ServedGateway",
    "admit",
    "authorize",
    "check_open_listen",
    "estimate_remote_tokens",
    "preflight",
]

log = structlog.get_logger("forge_gateway.security")


async def check_open_listen(config: GatewayConfig, store: KeyBackend) -> None:
    """Refuse to serve a non-loopback address without keys unless ``auth.allow_open``.

    Raises:
        ConfigurationError: no active key, public host, and ``allow_open`` unset.
    """
    if config.auth.allow_open or is_loopback(config.host):
        return
    if not await store.keys(include_revoked=False):
        raise ConfigurationError(
            f"no API keys in {store.location} and host {config.host} is not loopback: create one with "
            "`forge-gateway keys create --name NAME`, or pass --allow-open to serve without authentication"
        )


async def _check_store(config: GatewayConfig) -> None:
    store = open_store(config.auth, create=False)
    try:
        await store.open()
        if config.auth.database_url:
            try:  # like Redis below: an unreachable database at start is a one-line error
                await store.version()  # also applies pending schema migrations
            except LargeForgeAIError as exc:
                raise ConfigurationError(exc.message) from exc
        await check_open_listen(config, store)
    finally:
        await store.close()


def preflight(config: GatewayConfig) -> None:
    """Checks ``forge-gateway serve`` runs before loading the model, for one-line errors.

    Raises:
        ConfigurationError: open public listener without keys, or PostgreSQL / Redis unreachable.
    """
    asyncio.run(_check_store(config))  # its own short-lived loop: the server's starts later
    if config.rate_limit.backend == "redis":
        import redis

        url = config.rate_limit.redis_url
        try:
            redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3).ping()
        except (redis.RedisError, ValueError) as exc:
            raise ConfigurationError(
                f"rate_limit.backend is redis but {redact_url(url)} is unreachable: {redact_secret(str(exc), url)}"
            ) from exc


class ServedGateway(Protocol):
    """What the security layer needs of the gateway it guards (and nothing more)."""

    config: GatewayConfig
    usage_listeners: list[Callable[[Target, int, int, str], None]]

    def engine_load(self) -> tuple[int, int]:
        """Sequences running and waiting, summed over every running engine."""
        ...


class SecurityLayer:
    """Everything the security middleware and hooks share, for one app.

    Args:
        config: gateway config (``auth``, ``rate_limit``, ``limits``).
        gateway: the gateway (for engine load and usage).
    """

    def __init__(self, config: GatewayConfig, gateway: ServedGateway) -> None:
        self.config = config
        self.store = open_store(config.auth, create=False)
        loopback = is_loopback(config.host)
        self.authenticator = Authenticator(
            self.store,
            open_allowed=loopback or config.auth.allow_open,
            refresh_interval=config.auth.refresh_interval,
        )
        self.open_admin = loopback
        """Admin routes are open in dev mode only on loopback (never on a public allow_open host)."""
        self.ledger = UsageLedger(
            self.store,
            flush_interval=config.auth.usage_flush_interval,
            max_pending=config.auth.usage_flush_max_requests,
        )
        rl = config.rate_limit
        self.backend: RateLimitBackend = (
            RedisBackend(rl.redis_url, timeout=rl.redis_timeout) if rl.backend == "redis" else MemoryBackend()
        )
        limits = config.limits
        self.admission = AdmissionController(limits.max_concurrent, limits.max_queue, limits.queue_timeout)
        self.metrics = GatewayMetrics(
            gateway.engine_load, lambda: (self.admission.running, self.admission.waiting)
        )
        self.authority: RouteAuthority
        """Which route a request is for and what it demands (set when the app is wired)."""
        gateway.usage_listeners.append(self.on_usage)

    async def start(self) -> None:
        if isinstance(self.backend, RedisBackend):
            try:
                await self.backend.ping()
            except Exception as exc:
                url = self.config.rate_limit.redis_url
                raise ConfigurationError(
                    f"rate_limit.backend is redis but {redact_url(url)} is unreachable: "
                    f"{redact_secret(str(exc) or type(exc).__name__, url)}"
                ) from None  # the chained redis error may carry the URL
        await self.store.open()
        await self.authenticator.start()
        await self.ledger.start()
        if self.authenticator.open:  # decided now, once: it never opens later (see auth.py)
            log.warning(
                "auth_open",
                reason="no active API keys at start-up: serving WITHOUT AUTHENTICATION (dev mode) until a "
                "key is created; once one exists, open mode ends until a restart",
                key_store=self.store.location,
                host=self.config.host,
                allow_open=self.config.auth.allow_open,
            )
        else:
            log.info(
                "auth_required", key_store=self.store.location, active_keys=self.authenticator.active_keys
            )

    async def stop(self) -> None:
        try:
            await self.authenticator.stop()
            await self.ledger.stop()
            await self.backend.close()
        finally:  # an open pool left behind would stall the event loop's own shutdown
            await self.store.close()

    def on_usage(self, target: Target, prompt_tokens: int, completion_tokens: int, engine: str) -> None:
        """Usage listener: ledger, token metrics, and the actual counts for TPM reconciliation."""
        ctx = current_request.get()
        key_id = None
        if ctx is not None:
            ctx.usage_seen = True
            ctx.prompt_tokens += prompt_tokens
            ctx.completion_tokens += completion_tokens
            key_id = ctx.key.id if ctx.key is not None else None
        self.ledger.record(key_id, prompt_tokens, completion_tokens)
        self.metrics.observe_tokens(target.expert_name, prompt_tokens, completion_tokens)

    def authorize(self, ctx: RequestContext, target: Target) -> None:
        """Check the key's allow list admits ``target``.

        Raises:
            PermissionDeniedError: the key's allow list excludes this model/expert.
        """
        key = ctx.key
        if key is not None and not key.allows(target.model, target.expert_name):
            self.metrics.auth_failures.labels("403").inc()
            raise PermissionDeniedError(
                f"this API key may not use model {target.expert_name!r}; allowed: {', '.join(key.models or ())}",
                param="model",
            )

    async def admit(self, ctx: RequestContext, estimated_tokens: int) -> None:
        """Reserve ``estimated_tokens`` of the key's TPM budget (the target was authorised when
        the request was opened: :func:`authorize`).

        Raises:
            RateLimitError: the reservation does not fit the tokens-per-minute budget.
        """
        key = ctx.key
        if key is None:
            return
        tpm = key.tpm or self.config.rate_limit.default_tpm
        if not tpm:
            return
        decision = await self.acquire("t:" + key.id, tpm, estimated_tokens)
        ctx.tokens_decision = decision
        if not decision.allowed:
            self.metrics.rate_limited.labels("tokens").inc()
            if math.isinf(decision.retry_after):
                message = (
                    f"Request too large: it may use {estimated_tokens} tokens (prompt + max_tokens) but your "
                    f"limit is {tpm} tokens per minute. Lower max_tokens or shorten the prompt."
                )
            else:
                message = (
                    f"Rate limit reached for tokens: limit {tpm} per minute, this request may use "
                    f"{estimated_tokens}. Please try again in {decision.retry_after:.3f}s."
                )
            retry = decision.retry_after
            raise RateLimitError(
                message,
                headers={
                    "retry-after": str(max(1, math.ceil(retry))) if math.isfinite(retry) else "60",
                    "retry-after-ms": str(math.ceil(retry * 1000)) if math.isfinite(retry) else "60000",
                },
            )
        ctx.reserved_tokens += estimated_tokens

    async def acquire(self, bucket: str, limit: int, cost: int) -> Decision:
        """A rate-limit check that fails closed with a clear 503 when the backend is down.

        Raises:
            OverloadedError: the backend (Redis) could not be reached.
        """
        try:
            return await self.backend.acquire(bucket, limit, cost)
        except Exception as exc:
            why = redact_secret(str(exc) or type(exc).__name__, self.config.rate_limit.redis_url)
            log.error("rate_limiter_unavailable", error=why)
            raise OverloadedError(
                "rate limiter unavailable; retry later",
                code="rate_limiter_unavailable",
                headers={"Retry-After": "1"},
            ) from exc

    async def reconcile(self, ctx: RequestContext, status: int) -> None:
        """Replace the TPM reservation by the tokens actually used.

        A failed request (status >= 400) with no reported usage gets everything back; a successful
        one with no reported usage (a remote expert's answer) keeps its estimate.
        """
        key = ctx.key
        tpm = (key.tpm if key else None) or self.config.rate_limit.default_tpm
        if key is None or not tpm:
            return
        if ctx.usage_seen:
            used = ctx.prompt_tokens + ctx.completion_tokens
        else:
            used = ctx.reserved_tokens if status < 400 else 0
        delta = used - ctx.reserved_tokens
        ctx.reserved_tokens = 0
        if delta:
            try:
                await self.backend.adjust("t:" + key.id, tpm, delta)
            except Exception as exc:  # never fail a finished request over bookkeeping
                why = redact_secret(str(exc) or type(exc).__name__, self.config.rate_limit.redis_url)
                log.warning("tpm_reconcile_failed", error=why)


async def admit(estimated_tokens: int) -> None:
    """Reserve the request's token estimate (called once per target served, by
    :meth:`forge_gateway.dispatch.Call.reserve`).

    Outside a request handled by the security middleware (e.g. direct calls in tests) it does
    nothing.

    Raises:
        RateLimitError: see :meth:`SecurityLayer.admit`.
    """
    ctx = current_request.get()
    if ctx is not None and ctx.key is not None:
        await ctx.layer.admit(ctx, estimated_tokens)


def authorize(target: Target) -> None:
    """Check the caller's key may use ``target`` (before anything is started for it).

    Raises:
        PermissionDeniedError: see :meth:`SecurityLayer.authorize`.
    """
    ctx = current_request.get()
    if ctx is not None and ctx.key is not None:
        ctx.layer.authorize(ctx, target)


def estimate_remote_tokens(body_bytes: int, max_tokens: int | None, n: int, limits: LimitsConfig) -> int:
    """Token estimate for a request forwarded to a remote expert (its tokenizer is not ours).

    About 4 bytes of JSON per prompt token is a generous upper bound for English text.
    """
    return body_bytes // 4 + n * (max_tokens or limits.default_max_tokens)
