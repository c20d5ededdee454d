"""Raw-ASGI fast path: the front of every ``/v1`` generation request.

Proxying is the gateway's cheapest job, so the framework's per-request machinery (routing,
dependency injection, signature parsing, response objects) was most of its cost: measured at
about 3x the CPU of a bare ASGI proxy on the same upstream client. This layer sits inside the
security middleware (keys, rate limits, admission, metrics, access log still apply) and in front
of Litestar. For the routes that declare a kind of call (``POST /v1/chat/completions``,
``/v1/completions`` and ``/generate``, however the path is spelled: the security layer's route authority decided)
it decodes the body once and opens the request's :class:`~forge_gateway.dispatch.Call`
(limits, target, allow list); a remote expert's chat or text completion is forwarded and relayed
from here.

Every other call (a local expert's, a remote one that fell back, ``/generate``'s) goes on to its
Litestar handler with the decoded call in the scope (``state[CALL_KEY]``): the body is never
decoded twice, and the handlers never check limits or keys again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from forge_gateway.asgi import replay_body
from forge_gateway.dispatch import CALL_KEY, Call, Dispatcher
from forge_gateway.errors import internal_error, send_error
from forge_gateway.routing import route_header_pairs
from forge_gateway.security.policy import POLICY_SCOPE_KEY
from forge_sdk.errors import LargeForgeAIError

__all__ = ["RemoteFastPath"]

log = structlog.get_logger("forge_gateway.api.fastpath")

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


class RemoteFastPath:
    """ASGI middleware that opens every ``/v1`` generation call and proxies remote experts'.

    Args:
        app: the ASGI app for everything else (Litestar).
        dispatcher: the gateway's request path.
    """

    def __init__(self, app: ASGIApp, dispatcher: Dispatcher) -> None:
        self.app = app
        self.dispatcher = dispatcher

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # Which route this is was decided once, by the security layer's route authority, on the
        # router's own normalised path; a request it did not see goes to Litestar (and its guard).
        policy = scope.get(POLICY_SCOPE_KEY) if scope["type"] == "http" else None
        upstream_path = policy.upstream_path if policy is not None and scope["method"] == "POST" else None
        if upstream_path is None:
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Any) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            # The security middleware already read the whole body within the size and time limits.
            body = await _read_body(receive)
            call = await self.dispatcher.open_body(upstream_path, body)
            expert = call.target.expert
            if call.relayed and expert is not None and expert.kind == "remote":
                if await self._proxy(call, receive, tracked):
                    return
            scope.setdefault("state", {})[CALL_KEY] = call
            await self.app(scope, replay_body(body, receive), send)
        except LargeForgeAIError as exc:
            if started:
                raise
            await send_error(send, exc)
        except Exception:
            if started:
                raise
            # Same contract as the framework's handler: logged with its traceback, generic to the client.
            log.exception("unhandled_error", path=scope["path"])
            await send_error(send, internal_error())

    async def _proxy(self, call: Call, receive: Any, send: Any) -> bool:
        """Forward a remote expert's call and relay its answer; False when it fell back."""
        reply = await self.dispatcher.forward(call)
        if reply is None:
            return False
        headers = [(b"content-type", reply.content_type.encode("latin-1")), *route_header_pairs(call.target)]
        if reply.stream is None:
            await send({"type": "http.response.start", "status": reply.status, "headers": headers})
            await send({"type": "http.response.body", "body": reply.body})
            return True
        headers.append((b"cache-control", b"no-cache"))
        await _relay_stream(send, receive, reply.status, headers, reply.stream)
        return True


async def _read_body(receive: Any) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        return body
    parts = [body]
    while message.get("more_body"):
        message = await receive()
        parts.append(message.get("body", b""))
    return b"".join(parts)


async def _relay_stream(
    send: Any,
    receive: Any,
    status: int,
    headers: list[tuple[bytes, bytes]],
    chunks: Any,
) -> None:
    """Relay upstream chunks; a client that goes away closes the upstream stream too."""
    await send({"type": "http.response.start", "status": status, "headers": headers})

    async def pump() -> None:
        async for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

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
