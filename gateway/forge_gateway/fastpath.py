"""Raw-ASGI fast path for requests that a remote expert serves.

Proxying is the gateway's cheapest job, so the framework's per-request machinery (routing,
dependency injection, signature parsing, response objects) was most of its cost: measured at
about 3x the CPU of a bare ASGI proxy on the same upstream client. This layer sits inside the
security middleware (keys, rate limits, admission, metrics, access log still apply) and in front
of Litestar. For the routes that declare an upstream path (``POST /v1/chat/completions`` and
``/v1/completions``, however the path is spelled: the security layer's route authority decided)
it decodes the body once, resolves the target and, when that is a remote expert, proxies the
request itself.

Everything else goes on to Litestar unchanged, with the body replayed: local experts, bodies
that fail validation or name no model (Litestar renders those errors), and fallbacks. A request
whose remote expert failed is replayed with ``model`` set to the fallback target and its
response headers rewritten to say ``fallback:...``, so local generation has one implementation.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import structlog

from forge_gateway.generation import check_request_limits
from forge_gateway.oai.decoding import query_text, request_decoder
from forge_gateway.routing import RESOLVED_TARGET, Target, route_header_pairs
from forge_gateway.security.context import caller_allow_list
from forge_gateway.security.policy import POLICY_SCOPE_KEY
from forge_gateway.state import Gateway
from forge_gateway.upstream import with_model
from forge_sdk.errors import ExpertUnavailableError, LargeForgeAIError, UpstreamError
from forge_sdk.types import ChatCompletionRequest, CompletionRequest, ErrorBody, ErrorResponse

__all__ = ["RemoteFastPath"]

log = structlog.get_logger("forge_gateway.fastpath")

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]
_REQUEST_TYPES: dict[str, type[Any]] = {
    "chat/completions": ChatCompletionRequest,
    "completions": CompletionRequest,
}
"""Request type per upstream path (the ``forge_upstream`` a route declares in its ``opt``)."""
_encode = msgspec.json.Encoder().encode
_FALLBACK_WHY = {ExpertUnavailableError: "cooldown", UpstreamError: "error"}


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _WithUsage(msgspec.Struct):
    usage: _Usage | None = None


_usage_decoder = msgspec.json.Decoder(_WithUsage)


def _headers(target: Target, content_type: bytes, stream: bool) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", content_type), *route_header_pairs(target)]
    if stream:
        headers.append((b"cache-control", b"no-cache"))
    return headers


class RemoteFastPath:
    """ASGI middleware that proxies remote-expert requests without entering the framework.

    Args:
        app: the ASGI app for everything else (Litestar).
        gateway: the gateway state (catalog, upstream pool, limits).
    """

    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway
        self._decoders = {
            path: request_decoder(type_, gateway.config.api.unknown_fields)
            for path, type_ in _REQUEST_TYPES.items()
        }

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # Which route this is was decided once, by the security layer's route authority, on the
        # router's own normalised path; a request it did not see goes to Litestar (and its guard).
        policy = scope.get(POLICY_SCOPE_KEY) if scope["type"] == "http" else None
        upstream_path = policy.upstream_path if policy is not None and scope["method"] == "POST" else None
        if upstream_path is None:
            await self.app(scope, receive, send)
            return
        body, too_big = await _read_body(receive, self.gateway.config.limits.max_body_bytes)
        if too_big:  # Litestar answers 413; it reads any rest of the body itself
            await self.app(scope, _replay(body, receive, more=True), send)
            return
        try:
            request = self._decoders[upstream_path].decode(body)
            target = await self.gateway.catalog.aresolve(
                request.model, lambda: query_text(request), caller_allow_list()
            )
        except (msgspec.DecodeError, LargeForgeAIError):
            target = None  # Litestar renders the error
        if target is None or target.expert is None or target.expert.kind != "remote":
            if target is not None:  # the handler reuses it: classify each request once
                scope.setdefault("state", {})[RESOLVED_TARGET] = (request.model, target)
            await self.app(scope, _replay(body, receive), send)
            return
        started = False

        async def tracked(message: Any) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self._proxy(scope, receive, tracked, request, body, target, upstream_path)
        except LargeForgeAIError as exc:
            if started:
                raise
            await _send_error(send, exc)
        except Exception:
            if started:
                raise
            # Same contract as the framework's handler: logged with its traceback, generic to the client.
            log.exception("unhandled_error", path=scope["path"])
            await _send_error(send, LargeForgeAIError("internal server error", code="internal_error"))

    async def _proxy(
        self, scope: Any, receive: Any, send: Any, request: Any, body: bytes, target: Target, path: str
    ) -> None:
        from forge_gateway.security import admit, estimate_remote_tokens

        gateway = self.gateway
        limits = gateway.config.limits
        expert = target.expert
        assert expert is not None
        max_tokens = getattr(request, "max_completion_tokens", None) or request.max_tokens
        messages = getattr(request, "messages", None)
        check_request_limits(
            limits, messages=None if messages is None else len(messages), max_tokens=max_tokens
        )
        await admit(target, estimate_remote_tokens(len(body), max_tokens, request.n, limits))
        # The client's own bytes go upstream untouched unless something must change: the model
        # name, a missing max_tokens (capped: the TPM reservation assumed it), and for streams the
        # usage chunk, which TPM needs; it is stripped again when the client did not ask for it.
        changes: dict[str, Any] = {}
        if max_tokens is None:
            changes["max_tokens"] = limits.default_max_tokens
        options = getattr(request, "stream_options", None)
        client_usage = bool(options and options.include_usage)
        if request.stream and not client_usage:
            changes["stream_options"] = {**msgspec.to_builtins(options or {}), "include_usage": True}
        upstream_body = with_model(body, expert.upstream_model or expert.name, **changes)
        try:
            reply = await gateway.upstreams.call(target, upstream_body, path, stream=request.stream)
        except (UpstreamError, ExpertUnavailableError) as exc:
            why = "timeout" if exc.status_code == 504 else _FALLBACK_WHY.get(type(exc), "error")
            log.warning("expert_fallback", expert=target.expert_name, error=exc.message)
            fallback = gateway.catalog.fallback(target, why)  # raises when no local fallback exists
            replay = with_model(body, fallback.model)
            await self.app(scope, _replay(replay, receive), _relabel(send, fallback))
            return
        content_type = reply.content_type.encode("latin-1")
        if reply.stream is None:
            await send(
                {
                    "type": "http.response.start",
                    "status": reply.status,
                    "headers": _headers(target, content_type, False),
                }
            )
            await send({"type": "http.response.body", "body": reply.body})
            if reply.status < 400:
                self._record(target, reply.body)
            return
        chunks = reply.stream
        on_tail = None
        if client_usage:
            on_tail = lambda tail: self._record_stream(target, tail)  # noqa: E731
        elif reply.status < 400:
            chunks = _strip_usage(chunks, lambda event: self._record(target, event))
        await _relay_stream(
            send, receive, reply.status, _headers(target, content_type, True), chunks, on_tail
        )

    def _record(self, target: Target, body: bytes) -> None:
        try:
            usage = _usage_decoder.decode(body).usage
        except msgspec.DecodeError:
            return
        if usage is not None:
            self.gateway.record_usage(target, usage.prompt_tokens, usage.completion_tokens, "remote")

    def _record_stream(self, target: Target, tail: bytes) -> None:
        # With include_usage the upstream's last data event before [DONE] carries the usage.
        for event in reversed(tail.split(b"\n\n")):
            if event.startswith(b"data: {") and b'"usage"' in event:
                self._record(target, event[6:])
                return


async def _strip_usage(chunks: Any, record: Callable[[bytes], None]) -> AsyncIterator[bytes]:
    """Relay SSE ``chunks`` without the usage-only event (``"choices": []`` + ``usage``) that the
    gateway asked for on the client's behalf; ``record`` gets that event's JSON."""
    buffer = b""
    try:
        async for chunk in chunks:
            buffer += chunk
            if b"\n\n" not in buffer:
                continue
            *events, buffer = buffer.split(b"\n\n")
            out = []
            for event in events:
                if event.startswith(b"data: {") and b'"usage"' in event and _usage_only(event[6:]):
                    record(event[6:])
                else:
                    out.append(event + b"\n\n")
            if out:
                yield b"".join(out)
        if buffer:
            yield buffer
    finally:
        await chunks.aclose()


class _ChoicesProbe(msgspec.Struct):
    choices: list[msgspec.Raw] | None = None
    usage: _Usage | None = None


_probe = msgspec.json.Decoder(_ChoicesProbe)


def _usage_only(data: bytes) -> bool:
    try:
        probe = _probe.decode(data)
    except msgspec.DecodeError:
        return False
    return probe.usage is not None and not probe.choices


async def _read_body(receive: Any, limit: int) -> tuple[bytes, bool]:
    """The request body, or as much as was read when it passed ``limit`` (then True: more may follow)."""
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body"):
        return body, len(body) > limit
    parts = [body]
    size = len(body)
    while size <= limit:
        message = await receive()
        chunk = message.get("body", b"")
        parts.append(chunk)
        size += len(chunk)
        if not message.get("more_body"):
            return b"".join(parts), size > limit
    return b"".join(parts), True


def _replay(body: bytes, receive: Any, *, more: bool = False) -> Callable[[], Awaitable[Any]]:
    sent = False

    async def replay() -> Any:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": more}
        return await receive()

    return replay


def _relabel(send: Any, target: Target) -> Callable[[Any], Awaitable[None]]:
    """Wrap ``send`` so the response headers name the fallback target and why it served."""

    async def relabel(message: Any) -> None:
        if message["type"] == "http.response.start":
            headers = [
                (name, value)
                for name, value in message.get("headers", ())
                if name not in (b"x-forge-expert", b"x-forge-route-reason", b"x-forge-route-confidence")
            ]
            headers += route_header_pairs(target)
            message = {**message, "headers": headers}
        await send(message)

    return relabel


async def _relay_stream(
    send: Any,
    receive: Any,
    status: int,
    headers: list[tuple[bytes, bytes]],
    chunks: Any,
    on_tail: Callable[[bytes], None] | None = None,
) -> None:
    """Relay upstream chunks; a client that goes away closes the upstream stream too.

    ``on_tail`` gets the last few KB of a stream that ended normally (for usage accounting).
    """
    await send({"type": "http.response.start", "status": status, "headers": headers})
    tail = b""

    async def pump() -> None:
        nonlocal tail
        async for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if on_tail is not None:
                tail = (tail + chunk)[-8192:]

    relay = asyncio.ensure_future(pump())
    disconnected = False

    async def watch() -> None:
        nonlocal disconnected
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected = True
                relay.cancel()
                return

    watcher = asyncio.ensure_future(watch())
    try:
        await relay
    except asyncio.CancelledError:
        if not disconnected:
            raise
        return  # the client left: nothing more to send
    finally:
        watcher.cancel()
        await chunks.aclose()
    await send({"type": "http.response.body", "body": b""})
    if on_tail is not None:
        on_tail(tail)


async def _send_error(send: Any, exc: LargeForgeAIError) -> None:
    body = _encode(ErrorResponse(ErrorBody(exc.message, exc.error_type, exc.param, exc.code)))
    headers = [(b"content-type", b"application/json")]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (exc.headers or {}).items()]
    await send({"type": "http.response.start", "status": exc.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
