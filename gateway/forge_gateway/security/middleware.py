"""The pure-ASGI front door: request id, authentication, RPM limit, admission, metrics, access log.

It wraps Litestar's whole ASGI handler (outside routing), so every request, including unknown
routes, gets exactly one access-log line and one metrics sample. What a request must show is
decided by :class:`~forge_gateway.security.policy.RouteAuthority` on the route the router itself
will pick, never on the raw path. The work per request is a header scan, a cached route lookup,
one SHA-256, a GCRA update and a few counters; refusals are written straight to the socket
without entering the framework.

Requests with a body have it read whole first, bounded in size and time (413 / 408: the only
place those limits are enforced); generation requests only then take a concurrency slot, so slow
uploads cannot hold the slots.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import structlog

from forge_gateway.asgi import replay_body
from forge_gateway.errors import send_error
from forge_gateway.security.auth import is_loopback
from forge_gateway.security.context import RequestContext, current_request
from forge_gateway.security.policy import POLICY_SCOPE_KEY, RoutePolicy
from forge_gateway.security.ratelimit import rate_limit_headers
from forge_sdk.errors import (
    AuthenticationError,
    LargeForgeAIError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    RequestBodyTimeoutError,
    UnsupportedMediaTypeError,
)

if TYPE_CHECKING:
    from forge_gateway.security.layer import SecurityLayer

__all__ = ["SecurityMiddleware"]

access_log = structlog.get_logger("forge_gateway.access")

_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")
_WATCHED = frozenset(
    {b"authorization", b"x-api-key", b"x-request-id", b"origin", b"host", b"content-type", b"content-length"}
)


_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
"""Methods whose body the middleware reads (bounded in size and time) before anything else."""


class _ClientGoneError(Exception):
    """The client disconnected while sending its body: nothing to answer."""


def _valid_request_id(value: str) -> bool:
    return 0 < len(value) <= 128 and all(c in _ID_CHARS for c in value)


def _retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds))) if math.isfinite(seconds) else "60"


def _loopback_host(hostport: str) -> bool:
    """Whether a ``Host`` / origin authority names this machine (``[::1]:8000``, ``localhost``)."""
    host = hostport.rsplit(":", 1)[0] if hostport.count(":") == 1 else hostport
    if host.startswith("[") and "]" in host:
        host = host[1 : host.index("]")]
    return is_loopback(host.lower())


class SecurityMiddleware:
    """ASGI middleware around the gateway app.

    Args:
        app: the wrapped ASGI handler.
        layer: the security layer (keys, limits, metrics, ledger, route authority).
    """

    def __init__(self, app: Any, layer: SecurityLayer) -> None:
        self.app = app
        self.layer = layer

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        layer = self.layer
        token: str | None = None
        request_id = ""
        seen: dict[bytes, str] = {}
        for name, value in scope["headers"]:
            if name not in _WATCHED:
                continue
            if name == b"authorization":
                raw = value.decode("latin-1")
                scheme, _, rest = raw.partition(" ")
                token = rest.strip() if scheme.lower() == "bearer" else ""
            elif name == b"x-api-key":
                if token is None:
                    token = value.decode("latin-1").strip()
            elif name == b"x-request-id":
                candidate = value.decode("latin-1")
                if _valid_request_id(candidate):
                    request_id = candidate
            else:
                seen.setdefault(name, value.decode("latin-1"))
        if not request_id:
            request_id = os.urandom(16).hex()  # 5x cheaper than uuid4, same entropy
        path: str = scope["path"]
        method: str = scope["method"]
        policy = layer.authority.decide(scope)
        scope[POLICY_SCOPE_KEY] = policy
        ctx = RequestContext(request_id, None, layer)
        reset = current_request.set(ctx)
        structlog.contextvars.bind_contextvars(request_id=request_id)
        status = 500
        admitted = False

        async def send_wrapper(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                for hname, hvalue in headers:
                    if hname == b"x-forge-expert":
                        ctx.expert = hvalue.decode("latin-1")
                headers.append((b"x-request-id", request_id.encode()))
                rate_limit_headers(ctx.requests_decision, ctx.tokens_decision, headers)
                message = {**message, "headers": headers}
            await send(message)

        try:
            try:
                await self._guard(ctx, policy, method, token, seen)
                if method in _BODY_METHODS:
                    # The one place the body-size limit (and deadline) is enforced, for every route.
                    body = await self._read_body(receive, seen.get(b"content-length"))
                    receive = replay_body(body, receive)
                if policy.generation and method == "POST":
                    await layer.admission.acquire()
                    admitted = True
            except LargeForgeAIError as exc:
                await send_error(send_wrapper, exc)
                return
            except _ClientGoneError:
                status = 499
                return
            await self.app(scope, receive, send_wrapper)
        finally:
            if admitted:
                layer.admission.release()
            current_request.reset(reset)
            elapsed = time.perf_counter() - started
            route = scope.get("path_template") or policy.template or "unmatched"
            layer.metrics.observe_request(route, status, ctx.expert, elapsed)
            key = ctx.key
            access_log.info(
                "request",
                method=method,
                path=path,
                status=status,
                latency_ms=round(elapsed * 1000, 3),
                expert=ctx.expert or None,
                key_id=key.id if key else None,
                key_name=key.name if key else None,
                prompt_tokens=ctx.prompt_tokens if ctx.usage_seen else None,
                completion_tokens=ctx.completion_tokens if ctx.usage_seen else None,
            )
            if ctx.reserved_tokens and key is not None:
                await layer.reconcile(ctx, status)

    async def _guard(
        self, ctx: RequestContext, policy: RoutePolicy, method: str, token: str | None, seen: dict[bytes, str]
    ) -> None:
        """Authenticate, apply the route's scope, and take one request from the RPM budget.

        Raises:
            AuthenticationError: no valid key on a route that needs one.
            PermissionDeniedError: an admin route without admin rights, or a cross-site /
                rebound request to an open (keyless) gateway's admin route.
            UnsupportedMediaTypeError: an admin request body that is not JSON.
            RateLimitError: the key's requests-per-minute budget is spent.
        """
        layer = self.layer
        auth = layer.authenticator
        if auth.open:
            ctx.authenticated = True
            ctx.admin = layer.open_admin and self._from_this_machine(seen)
            if policy.scope == "admin":
                if not layer.open_admin:
                    layer.metrics.auth_failures.labels("403").inc()
                    raise PermissionDeniedError(
                        "admin endpoints need an admin API key; none exists "
                        "(create one with `forge-gateway keys create --admin`)"
                    )
                self._same_machine_only(seen)
                self._json_body_only(method, seen)
            return
        if policy.scope == "public":
            if token:  # optional: a valid key unlocks details on public routes (/health)
                try:
                    key = auth.authenticate(token)
                except LargeForgeAIError:  # a bad key (or a key store outage) just gets no details
                    return
                ctx.key, ctx.authenticated, ctx.admin = key, True, key.admin
            return
        try:
            key = auth.authenticate(token)
        except AuthenticationError:
            layer.metrics.auth_failures.labels("401").inc()
            raise
        ctx.key, ctx.authenticated, ctx.admin = key, True, key.admin
        structlog.contextvars.bind_contextvars(key_id=key.id)
        if policy.scope == "admin":
            if not key.admin:
                layer.metrics.auth_failures.labels("403").inc()
                raise PermissionDeniedError(f"{policy.template} needs an admin API key")
            self._json_body_only(method, seen)
        rpm = key.rpm or layer.config.rate_limit.default_rpm
        if rpm:
            decision = await layer.acquire("r:" + key.id, rpm, 1)
            ctx.requests_decision = decision
            if not decision.allowed:
                layer.metrics.rate_limited.labels("requests").inc()
                raise RateLimitError(
                    f"Rate limit reached for requests: limit {rpm} per minute. "
                    f"Please try again in {decision.retry_after:.3f}s.",
                    code="rate_limit_exceeded",
                    headers={
                        "retry-after": _retry_after(decision.retry_after),
                        "retry-after-ms": str(math.ceil(decision.retry_after * 1000)),
                    },
                )

    @staticmethod
    def _from_this_machine(seen: dict[bytes, str]) -> bool:
        origin = seen.get(b"origin")
        if origin is not None and (origin == "null" or not _loopback_host(urlsplit(origin).netloc)):
            return False
        host = seen.get(b"host")
        return host is None or _loopback_host(host)

    def _same_machine_only(self, seen: dict[bytes, str]) -> None:
        """Open mode trusts the machine, not the browser on it: refuse cross-site requests
        (``Origin`` of another host) and DNS rebinding (a ``Host`` that is not loopback)."""
        origin = seen.get(b"origin")
        if origin is not None and (origin == "null" or not _loopback_host(urlsplit(origin).netloc)):
            self.layer.metrics.auth_failures.labels("403").inc()
            raise PermissionDeniedError(f"cross-site admin request from origin {origin!r} refused")
        host = seen.get(b"host")
        if host is not None and not _loopback_host(host):
            self.layer.metrics.auth_failures.labels("403").inc()
            raise PermissionDeniedError(
                f"admin request for host {host!r} refused: a keyless gateway answers loopback names only"
            )

    @staticmethod
    def _json_body_only(method: str, seen: dict[bytes, str]) -> None:
        if method in ("GET", "HEAD", "DELETE", "OPTIONS"):
            return
        length = seen.get(b"content-length")
        if length is not None and length.strip() == "0":
            return
        media = seen.get(b"content-type", "").partition(";")[0].strip().lower()
        if media != "application/json":
            raise UnsupportedMediaTypeError(
                f"admin request bodies must be application/json, not {media or 'unspecified'!r}"
            )

    async def _read_body(self, receive: Any, content_length: str | None) -> bytes:
        """The whole request body, within ``limits.max_body_bytes`` and ``limits.body_timeout``.

        Raises:
            PayloadTooLargeError: the body is larger than allowed (413).
            RequestBodyTimeoutError: the body did not arrive in time (408).
            _ClientGoneError: the client disconnected.
        """
        limits = self.layer.config.limits
        limit = limits.max_body_bytes
        too_big = PayloadTooLargeError(f"request body is larger than the limit of {limit} bytes")
        if content_length is not None and content_length.strip().isdigit() and int(content_length) > limit:
            raise too_big
        parts: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(limits.body_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise _ClientGoneError
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    more = message.get("more_body", False)
                    if size > limit:
                        await self._drain(receive, more, size, limit)
                        raise too_big
                    parts.append(chunk)
                    if not more:
                        break
        except TimeoutError as exc:
            raise RequestBodyTimeoutError(
                f"request body not received within {limits.body_timeout:g} s"
            ) from exc
        return parts[0] if len(parts) == 1 else b"".join(parts)

    @staticmethod
    async def _drain(receive: Any, more: bool, size: int, limit: int) -> None:
        """Read (and drop) the rest of an oversized body, up to 4x the limit, so the client that
        is still sending gets its 413 instead of a reset connection."""
        while more and size <= 4 * limit:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGoneError
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
