"""The pure-ASGI front door: request id, authentication, RPM limit, admission, metrics, access log.

It wraps Litestar's whole ASGI handler (outside routing), so every request, including unknown
routes, gets exactly one access-log line and one metrics sample. The work per request is a
header scan, a dict lookup, one SHA-256, a GCRA update and a few counters; refusals are written
straight to the socket without entering the framework.
"""

from __future__ import annotations

import math
import os
import time
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from forge_gateway.security.context import RequestContext, current_request
from forge_gateway.security.ratelimit import rate_limit_headers
from forge_sdk.errors import (
    AuthenticationError,
    LargeForgeAIError,
    PermissionDeniedError,
    RateLimitError,
)
from forge_sdk.types import ErrorBody, ErrorResponse

if TYPE_CHECKING:
    from forge_gateway.security.layer import SecurityLayer

__all__ = ["SecurityMiddleware"]

access_log = structlog.get_logger("forge_gateway.access")

_encode = msgspec.json.Encoder().encode
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")
GENERATION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/generate"})


def _valid_request_id(value: str) -> bool:
    return 0 < len(value) <= 128 and all(c in _ID_CHARS for c in value)


def _retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds))) if math.isfinite(seconds) else "60"


class SecurityMiddleware:
    """ASGI middleware around the gateway app.

    Args:
        app: the wrapped ASGI handler.
        layer: the security layer (keys, limits, metrics, ledger).
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
        for name, value in scope["headers"]:
            if name == b"authorization":
                raw = value.decode("latin-1")
                scheme, _, rest = raw.partition(" ")
                token = rest.strip() if scheme.lower() == "bearer" else ""
            elif name == b"x-api-key" and token is None:
                token = value.decode("latin-1").strip()
            elif name == b"x-request-id":
                candidate = value.decode("latin-1")
                if _valid_request_id(candidate):
                    request_id = candidate
        if not request_id:
            request_id = os.urandom(16).hex()  # 5x cheaper than uuid4, same entropy
        path: str = scope["path"]
        method: str = scope["method"]
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
                if path != "/health":
                    await self._guard(ctx, path, method, token)
                if path == "/metrics" and method in ("GET", "HEAD"):
                    await self._send_metrics(send_wrapper)
                    return
                if method == "POST" and path in GENERATION_PATHS:
                    await layer.admission.acquire()
                    admitted = True
            except LargeForgeAIError as exc:
                await self._send_error(send_wrapper, exc)
                return
            await self.app(scope, receive, send_wrapper)
        finally:
            if admitted:
                layer.admission.release()
            current_request.reset(reset)
            elapsed = time.perf_counter() - started
            route = scope.get("path_template") or (path if path in layer.known_paths else "unmatched")
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

    async def _guard(self, ctx: RequestContext, path: str, method: str, token: str | None) -> None:
        """Authenticate, authorise admin paths, and take one request from the RPM budget."""
        layer = self.layer
        auth = layer.authenticator
        admin_path = path.startswith("/admin") or (
            path == "/metrics" and not layer.config.auth.public_metrics
        )
        if path == "/metrics" and layer.config.auth.public_metrics:
            return
        if auth.open:
            if admin_path and not layer.open_admin:
                layer.metrics.auth_failures.labels("403").inc()
                raise PermissionDeniedError(
                    "admin endpoints need an admin API key; none exists (create one with `forge-gateway keys create --admin`)"
                )
            return
        try:
            key = auth.authenticate(token)
        except AuthenticationError:
            layer.metrics.auth_failures.labels("401").inc()
            raise
        ctx.key = key
        structlog.contextvars.bind_contextvars(key_id=key.id)
        if admin_path and not key.admin:
            layer.metrics.auth_failures.labels("403").inc()
            raise PermissionDeniedError(f"{path} needs an admin API key")
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

    async def _send_metrics(self, send: Any) -> None:
        from forge_gateway.security.metrics import CONTENT_TYPE_LATEST

        body = self.layer.metrics.render()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", CONTENT_TYPE_LATEST.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    async def _send_error(send: Any, exc: LargeForgeAIError) -> None:
        body = _encode(ErrorResponse(ErrorBody(exc.message, exc.error_type, exc.param, exc.code)))
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if isinstance(exc, AuthenticationError):
            headers.append((b"www-authenticate", b'Bearer realm="forge-gateway"'))
        headers.extend((k.lower().encode(), v.encode()) for k, v in exc.headers.items())
        await send({"type": "http.response.start", "status": exc.status_code, "headers": headers})
        await send({"type": "http.response.body", "body": body})
