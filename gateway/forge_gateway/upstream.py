"""Remote experts: pooled connections to OpenAI-compatible upstreams, retries, cooldown.

A lean pooled HTTP/1.1 client (:mod:`forge_gateway.upstream_http`) keeps connections alive
across requests; general-purpose clients cost more than the whole 1 ms budget here. Connect errors,
timeouts and 502/503/504 answers are retried with exponential backoff (SDD §9.3, per-expert
``max_retries``, base delay from ``[router] retry_base_delay``). After ``failure_threshold``
consecutive failed requests an expert cools down for ``cooldown_s``; requests for it then fall
back to the default expert (SDD §9.2), which the caller sees in ``x-forge-route-reason``.

A stream is only committed once the upstream has sent its first body bytes, so a stream can
still fall back while nothing has reached the client; a failure after that ends the stream with
an in-band OpenAI error event.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
import structlog
from litestar import Response
from litestar.response import Stream

from forge_gateway.endpoints import join_endpoint
from forge_gateway.routing import route_headers
from forge_gateway.upstream_http import HttpPool, UpstreamConnectError, UpstreamDisconnectedError, header
from forge_sdk.errors import ExpertUnavailableError, UpstreamError, UpstreamTimeoutError
from forge_sdk.retry import RetryPolicy
from forge_sdk.types import ErrorBody, ErrorResponse

if TYPE_CHECKING:
    from forge_gateway.routing import Target

__all__ = ["UpstreamPool", "UpstreamReply", "UpstreamState", "with_model"]

log = structlog.get_logger("forge_gateway.upstream")
_RETRY_STATUS = frozenset({502, 503, 504})
_encode = msgspec.json.Encoder().encode
_JSON_HEADER = b"content-type: application/json\r\n"


@dataclass(slots=True)
class UpstreamState:
    """Health of one remote expert, as shown in ``/experts``."""

    consecutive_failures: int = 0
    cooldown_until: float = 0.0
    last_error: str | None = None
    requests: int = 0
    failures: int = 0

    def available(self, now: float) -> bool:
        return now >= self.cooldown_until

    def as_dict(self, now: float) -> dict[str, Any]:
        cooling = not self.available(now)
        return {
            "state": "cooldown" if cooling else "ok",
            "consecutive_failures": self.consecutive_failures,
            "cooldown_remaining_s": round(self.cooldown_until - now, 2) if cooling else 0.0,
            "last_error": self.last_error,
            "requests": self.requests,
            "failures": self.failures,
        }


@dataclass(slots=True)
class UpstreamReply:
    """What an upstream answered: a whole body, or a committed stream."""

    status: int
    content_type: str
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None


class _RetryableStatusError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"upstream answered {status}: {text}")
        self.status = status


class UpstreamPool:
    """Connection pool and circuit state for all remote experts.

    Args:
        default_expert: where requests go when a remote expert is unavailable.
        failure_threshold: consecutive failed requests before a cooldown.
        cooldown_s: how long a failing expert is skipped.
        retry_base_delay: first backoff delay, seconds (SDD §9.3: 1.0).
        allow_link_local: allow connections to link-local / cloud-metadata addresses.
    """

    def __init__(
        self,
        *,
        default_expert: str = "general",
        failure_threshold: int = 3,
        cooldown_s: float = 30.0,
        retry_base_delay: float = 1.0,
        allow_link_local: bool = False,
    ) -> None:
        self.allow_link_local = allow_link_local
        self.default_expert = default_expert
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self.retry_base_delay = retry_base_delay
        self.states: dict[str, UpstreamState] = {}
        self._http: HttpPool | None = None
        self._retryable: tuple[type[BaseException], ...] = (
            asyncio.TimeoutError,
            UpstreamConnectError,
            UpstreamDisconnectedError,
            _RetryableStatusError,
        )

    async def start(self) -> None:
        """Open the shared connection pool."""
        self._http = HttpPool(allow_link_local=self.allow_link_local)

    async def stop(self) -> None:
        """Close every pooled connection."""
        if self._http is not None:
            self._http.close()
            self._http = None

    def forget(self, names: Iterable[str]) -> None:
        """Drop the circuit state of experts that left the catalog."""
        for name in names:
            self.states.pop(name, None)

    def status(self, name: str) -> dict[str, Any]:
        """Circuit state of one expert for ``/experts``."""
        return self.states.get(name, UpstreamState()).as_dict(time.monotonic())

    def _state(self, name: str) -> UpstreamState:
        state = self.states.get(name)
        if state is None:
            state = self.states[name] = UpstreamState()
        return state

    def _fail(self, name: str, error: str) -> None:
        state = self._state(name)
        state.consecutive_failures += 1
        state.failures += 1
        state.last_error = error
        if state.consecutive_failures >= self.failure_threshold:
            state.cooldown_until = time.monotonic() + self.cooldown_s
            log.warning("expert_cooldown", expert=name, seconds=self.cooldown_s, error=error)

    def _ok(self, state: UpstreamState) -> None:
        if state.consecutive_failures:
            state.consecutive_failures = 0
            state.cooldown_until = 0.0

    async def call(self, target: Target, body: bytes, path: str, *, stream: bool) -> UpstreamReply:
        """POST ``body`` to the target's upstream ``path`` with retries and circuit accounting.

        Args:
            target: a remote expert target.
            body: the JSON request body, ``model`` already set to the upstream's name.
            path: path below the expert's endpoint, e.g. ``chat/completions``.
            stream: relay the answer as it arrives (committed after its first bytes).

        Raises:
            ExpertUnavailableError: the expert is cooling down.
            UpstreamTimeoutError: it timed out on every attempt.
            UpstreamError: it failed on every attempt.
        """
        expert = target.expert
        assert expert is not None and expert.endpoint, "call() needs a remote expert"
        http = self._http
        assert http is not None, "UpstreamPool.start() was not awaited"
        state = self._state(expert.name)
        state.requests += 1
        if not state.available(time.monotonic()):
            raise ExpertUnavailableError(f"expert {expert.name!r} is cooling down after repeated failures")
        url = join_endpoint(expert.endpoint, path)
        headers = _JSON_HEADER
        if expert.api_key_env and (key := os.environ.get(expert.api_key_env)):
            headers += b"authorization: Bearer %s\r\n" % key.encode("latin-1")
        policy = RetryPolicy(
            max_retries=expert.max_retries, base_delay=self.retry_base_delay, retryable=self._retryable
        )
        timeout = expert.timeout

        async def attempt() -> UpstreamReply:
            # Non-stream: the per-expert timeout bounds the whole attempt. Stream: the wait for
            # the headers, for the first chunk and between chunks.
            status, head, data, chunks = await http.post(url, body, headers, timeout=timeout, stream=stream)
            if status in _RETRY_STATUS:
                raise _RetryableStatusError(status, data[:200].decode(errors="replace"))
            content_type = header(head, b"content-type", "application/json")
            if chunks is None:
                return UpstreamReply(status, content_type, data)
            # Commit to this upstream only once its first body bytes arrived.
            first = await anext(chunks, b"")
            return UpstreamReply(status, content_type or "text/event-stream", stream=_prepend(first, chunks))

        try:
            reply = await policy.acall(attempt)
        except asyncio.TimeoutError as exc:
            self._fail(expert.name, "timeout")
            raise UpstreamTimeoutError(f"expert {expert.name!r} timed out after {timeout:g} s") from exc
        except self._retryable as exc:
            self._fail(expert.name, _describe(exc))
            raise UpstreamError(f"expert {expert.name!r} failed: {_describe(exc)}") from exc
        self._ok(state)
        if reply.stream is not None:
            reply.stream = self._guard(expert.name, reply.stream)
        return reply

    async def _guard(self, name: str, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                yield chunk
        except self._retryable as exc:
            # Bytes already reached the client: too late to fall back, so say it in-band.
            self._fail(name, _describe(exc))
            error = ErrorBody(f"expert {name!r} failed mid-stream: {_describe(exc)}", "upstream_error")
            yield b"data: " + _encode(ErrorResponse(error)) + b"\n\n"

    async def forward(
        self, target: Target, body: bytes, path: str, *, stream: bool
    ) -> Response[bytes] | Stream:
        """Proxy the client's request body to the target's upstream as a response for the client.

        The body goes upstream as the client sent it (every field, tools and response formats
        included); only ``model`` is rewritten when the upstream knows the expert by another name.

        Raises:
            ExpertUnavailableError, UpstreamTimeoutError, UpstreamError: as :meth:`call`;
                the caller falls back.
        """
        expert = target.expert
        assert expert is not None
        body = with_model(body, expert.upstream_model or expert.name)
        reply = await self.call(target, body, path, stream=stream)
        headers = route_headers(target)
        if reply.stream is None:
            return Response(
                reply.body, status_code=reply.status, media_type=reply.content_type, headers=headers
            )
        headers["cache-control"] = "no-cache"
        return Stream(reply.stream, status_code=reply.status, media_type="text/event-stream", headers=headers)


class _Model(msgspec.Struct):
    model: str = ""


_model_decoder = msgspec.json.Decoder(_Model)


def with_model(body: bytes, model: str, **changes: Any) -> bytes:
    """``body`` (a JSON object) with its ``model`` set to ``model`` and the top-level fields in
    ``changes`` set too; every other field byte-for-byte."""
    if not changes and _model_decoder.decode(body).model == model:
        return body
    fields = msgspec.json.decode(body, type=dict[str, msgspec.Raw])
    fields["model"] = msgspec.Raw(_encode(model))
    for name, value in changes.items():
        fields[name] = msgspec.Raw(_encode(value))
    return _encode(fields)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, _RetryableStatusError):
        return f"HTTP {exc.status}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _prepend(first: bytes, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        if first:
            yield first
        async for chunk in chunks:
            yield chunk
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
