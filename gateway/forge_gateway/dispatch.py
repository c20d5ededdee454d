"""The one request path of a generation request, whichever endpoint it came in by.

Every generation endpoint (the raw-ASGI fast path for ``/v1/chat/completions`` and
``/v1/completions``, their Litestar handlers, ``/generate``) goes through a :class:`Dispatcher`:

1. :meth:`Dispatcher.decode` - the only place a request body is decoded (a 400 naming the field,
   also for bodies nested too deeply to decode);
2. :meth:`Dispatcher.open` - the request-shape limits, the target (classified once) and the
   key's allow list for it, bundled as a :class:`Call` that travels decoded to whoever serves it
   (the fast path opens every generation request, ``/generate`` included, once, before the
   framework: the handlers receive the call);
3. :meth:`Call.reserve` - the token-per-minute reservation, once per target served;
4. :meth:`Dispatcher.forward` - for a remote expert: the body rewrite, the upstream call, the
   fallback (reasons from :data:`FALLBACK_WHY`, the one table) and usage recording.

Local experts are served by the handlers with the same :class:`Call` (``call.target`` names the
fallback when a remote expert failed). Nothing here depends on the web framework.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from forge_gateway.errors import validation_error
from forge_gateway.oai.decoding import query_text, request_decoder
from forge_gateway.security import admit, authorize, estimate_remote_tokens
from forge_gateway.security.context import caller_allow_list
from forge_sdk.errors import (
    ExpertUnavailableError,
    InvalidRequestError,
    LargeForgeAIError,
    UpstreamError,
    UpstreamTimeoutError,
)
from forge_sdk.types import ChatCompletionRequest, CompletionRequest, GenerateRequest, message_text

if TYPE_CHECKING:
    from forge_gateway.config import LimitsConfig
    from forge_gateway.routing import Target
    from forge_gateway.state import Gateway
    from forge_gateway.upstream.pool import UpstreamReply

__all__ = [
    "CALL_KEY",
    "FALLBACK_WHY",
    "REQUEST_TYPES",
    "Call",
    "Dispatcher",
    "check_request_limits",
    "fallback_reason",
    "upstream_body",
]

log = structlog.get_logger("forge_gateway.dispatch")

CALL_KEY = "forge.call"
"""Where a :class:`Call` travels in the ASGI scope's ``state`` (fast path -> handler)."""

REQUEST_TYPES: dict[str, type[Any]] = {
    "chat/completions": ChatCompletionRequest,
    "completions": CompletionRequest,
    "generate": GenerateRequest,
}
"""Request type per kind of call (the ``forge_upstream`` a route declares in its ``opt``)."""

FALLBACK_WHY: dict[type[LargeForgeAIError], str] = {
    ExpertUnavailableError: "cooldown",
    UpstreamTimeoutError: "timeout",
    UpstreamError: "error",
}
"""Why a remote expert's request went to the fallback (``x-forge-route-reason: fallback:<why>``)."""

_encode = msgspec.json.Encoder().encode


def check_request_limits(limits: LimitsConfig, *, messages: int | None, max_tokens: int | None) -> None:
    """The request-shape limits every generation obeys, local or remote (``/generate`` too),
    checked once, when the request is opened.

    Raises:
        InvalidRequestError: too many messages, or ``max_tokens`` above the server cap.
    """
    if messages is not None and messages > limits.max_messages:
        raise InvalidRequestError(f"too many messages: {messages} > {limits.max_messages}", param="messages")
    if max_tokens is not None and max_tokens > limits.max_tokens:
        raise InvalidRequestError(
            f"max_tokens {max_tokens} is above this server's limit of {limits.max_tokens}", param="max_tokens"
        )


def fallback_reason(exc: LargeForgeAIError) -> str:
    """The :data:`FALLBACK_WHY` entry of ``exc``'s most specific class."""
    for cls in type(exc).__mro__:
        if cls in FALLBACK_WHY:
            return FALLBACK_WHY[cls]
    return "error"


@dataclass(slots=True)
class Call:
    """One generation request on its way: decoded once, resolved once, checked once."""

    request: Any
    """The decoded request (a ``forge_sdk.types`` request Struct)."""
    body: bytes
    """The JSON body a remote expert gets (before :meth:`Dispatcher.forward` rewrites it)."""
    path: str
    """Upstream path below a remote expert's endpoint, e.g. ``chat/completions``."""
    target: Target
    """Who serves it: the resolved expert, or the fallback after a remote expert failed."""
    size: int
    """Bytes of the client's body (the token estimate for a remote expert uses it)."""
    max_tokens: int | None
    """The effective completion budget the client asked for (None: the server default)."""
    n: int = 1
    """Choices per prompt."""
    stream: bool = False
    """Server-sent events instead of one JSON body."""
    client_usage: bool = False
    """The client asked for the usage chunk (``stream_options.include_usage``)."""
    source: Any = None
    """The request as the client's endpoint shaped it, when it is not :attr:`request`
    (``/generate``'s :class:`~forge_sdk.types.GenerateRequest`)."""
    authorized: Target | None = None
    """The target the key's allow list was checked for."""

    @property
    def relayed(self) -> bool:
        """Whether a remote expert's answer goes to the client as it is (not for ``/generate``,
        whose answer is reshaped)."""
        return self.source is None

    def authorize(self) -> None:
        """Check the key may use :attr:`target` (once per target).

        Raises:
            PermissionDeniedError: the key's allow list excludes it.
        """
        if self.authorized is not self.target:
            authorize(self.target)
            self.authorized = self.target

    async def reserve(self, tokens: int) -> None:
        """Reserve ``tokens`` of the key's tokens-per-minute budget for :attr:`target` (once
        the serving side knows the estimate: prompt tokens, or body size for a remote expert).

        Raises:
            PermissionDeniedError: the target changed (a fallback) to one the key may not use.
            RateLimitError: see :func:`forge_gateway.security.admit`.
        """
        self.authorize()
        await admit(tokens)


def _max_tokens(request: Any) -> int | None:
    return getattr(request, "max_completion_tokens", None) or request.max_tokens


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _WithUsage(msgspec.Struct):
    usage: _Usage | None = None


class _ChoicesProbe(msgspec.Struct):
    choices: list[msgspec.Raw] | None = None
    usage: _Usage | None = None


_usage_decoder = msgspec.json.Decoder(_WithUsage)
_probe = msgspec.json.Decoder(_ChoicesProbe)
_fields_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])


def upstream_body(call: Call, default_max_tokens: int) -> bytes:
    """The body a remote expert gets: the client's fields re-encoded once each (a duplicate
    key keeps the value that was checked, the last, as the decoder did), ``model`` set to the
    upstream's name, a missing ``max_tokens`` filled in (the reservation assumed it), only
    ``max_completion_tokens`` when both names were given, and a stream's usage chunk asked
    for (the TPM accounting needs it; it is stripped again when the client did not ask)."""
    expert = call.target.expert
    assert expert is not None
    fields = _fields_decoder.decode(call.body)
    fields["model"] = msgspec.Raw(_encode(expert.upstream_model or expert.name))
    if call.max_tokens is None:
        fields["max_tokens"] = msgspec.Raw(_encode(default_max_tokens))
    elif getattr(call.request, "max_completion_tokens", None) is not None and "max_tokens" in fields:
        del fields["max_tokens"]
    if call.stream and not call.client_usage:
        options = getattr(call.request, "stream_options", None)
        fields["stream_options"] = msgspec.Raw(
            _encode({**msgspec.to_builtins(options or {}), "include_usage": True})
        )
    return _encode(fields)


class Dispatcher:
    """Decode, limit, resolve, admit, forward and account generation requests for one gateway.

    Args:
        gateway: the gateway state (config, catalog, upstream pool, usage listeners).
    """

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.unknown_fields = gateway.config.api.unknown_fields

    def decode(self, body: bytes, type_: type[Any]) -> Any:
        """Decode a JSON body into ``type_`` (the only place a request body is decoded).

        Raises:
            InvalidRequestError: not JSON, a field of the wrong shape (the error names it), or
                nested too deeply to decode.
        """
        try:
            return request_decoder(type_, self.unknown_fields).decode(body)
        except msgspec.DecodeError as exc:  # ValidationError included
            raise validation_error(exc) from None
        except RecursionError:
            raise InvalidRequestError(
                "request body is nested too deeply to decode", code="invalid_json"
            ) from None

    async def open_body(self, kind: str, body: bytes) -> Call:
        """Decode a client's body of ``kind`` (a key of :data:`REQUEST_TYPES`) and open its call.

        ``/generate`` (``kind="generate"``) is a chat completion in the SDD's shapes: it opens as
        one, with the client's request kept as :attr:`Call.source`.

        Raises:
            InvalidRequestError, ModelNotFoundError, PermissionDeniedError: see :meth:`decode`
                and :meth:`open`.
        """
        request = self.decode(body, REQUEST_TYPES[kind])
        if kind != "generate":
            return await self.open(request, body, kind)
        if (request.prompt is None) == (request.messages is None):
            raise InvalidRequestError("give exactly one of `prompt` or `messages`", param="prompt")
        messages = (
            [{"role": m.role, "content": message_text(m)} for m in request.messages]
            if request.messages
            else [{"role": "user", "content": request.prompt}]
        )
        chat = {
            "model": request.expert or "auto",
            "messages": messages,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        }
        call = await self.open(
            msgspec.convert(chat, ChatCompletionRequest), _encode(chat), "chat/completions"
        )
        call.size, call.source = len(body), request
        return call

    async def open(self, request: Any, body: bytes, path: str) -> Call:
        """Check the request's shape limits, resolve its target and check the key may use it.

        Args:
            request: a decoded chat or text completion request.
            body: the JSON body a remote expert would get.
            path: the upstream path (``chat/completions`` or ``completions``).

        Raises:
            InvalidRequestError: too many messages or ``max_tokens`` above the server cap.
            ModelNotFoundError, PermissionDeniedError: no such model, or not for this key.
        """
        max_tokens = _max_tokens(request)
        messages = getattr(request, "messages", None)
        check_request_limits(
            self.gateway.config.limits,
            messages=None if messages is None else len(messages),
            max_tokens=max_tokens,
        )
        target = await self.gateway.catalog.aresolve(
            request.model, lambda: query_text(request), caller_allow_list()
        )
        options = getattr(request, "stream_options", None)
        call = Call(
            request,
            body,
            path,
            target,
            len(body),
            max_tokens,
            request.n,
            bool(request.stream),
            bool(options and options.include_usage),
        )
        call.authorize()  # before anything (an upstream call, a standalone engine) runs for it
        return call

    async def forward(self, call: Call) -> UpstreamReply | None:
        """Send a remote expert's call upstream (retries, cooldown) and account its usage.

        Returns:
            The upstream's reply (a stream's chunks account usage as they pass), or None when
            the expert failed and ``call.target`` is now the local fallback to serve it.

        Raises:
            PermissionDeniedError, RateLimitError: not admitted.
            ExpertUnavailableError: the expert failed and no local fallback exists.
        """
        gateway = self.gateway
        target = call.target
        await call.reserve(estimate_remote_tokens(call.size, call.max_tokens, call.n, gateway.config.limits))
        body = upstream_body(call, gateway.config.limits.default_max_tokens)
        try:
            reply = await gateway.upstreams.call(target, body, call.path, stream=call.stream)
        except (UpstreamError, ExpertUnavailableError) as exc:
            log.warning("expert_fallback", expert=target.expert_name, error=exc.message)
            call.target = gateway.catalog.fallback(target, fallback_reason(exc))
            call.authorize()
            return None
        if reply.status >= 400:
            return reply
        if reply.stream is None:
            self.record(target, reply.body)
        elif call.client_usage:
            reply.stream = _record_tail(reply.stream, lambda tail: self._record_stream(target, tail))
        else:
            reply.stream = _strip_usage(reply.stream, lambda event: self.record(target, event))
        return reply

    def record(self, target: Target, body: bytes) -> None:
        """Record the ``usage`` of an upstream's JSON answer (or usage event), if it has one."""
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
                self.record(target, event[6:])
                return


async def _record_tail(chunks: AsyncIterator[bytes], record: Callable[[bytes], None]) -> AsyncIterator[bytes]:
    """Relay ``chunks``; a stream that ended normally hands its last few KB to ``record``."""
    tail = b""
    try:
        async for chunk in chunks:
            tail = (tail + chunk)[-8192:]
            yield chunk
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
    record(tail)


async def _strip_usage(chunks: AsyncIterator[bytes], record: Callable[[bytes], None]) -> AsyncIterator[bytes]:
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
        await chunks.aclose()  # type: ignore[attr-defined]


def _usage_only(data: bytes) -> bool:
    try:
        probe = _probe.decode(data)
    except msgspec.DecodeError:
        return False
    return probe.usage is not None and not probe.choices
