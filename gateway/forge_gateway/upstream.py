"""Remote experts: pooled connections to OpenAI-compatible upstreams, retries, cooldown.

One shared aiohttp session keeps connections alive across requests (httpx measured ~8x slower
per request here, which alone would miss the proxy's 1,000 requests/s per core). Connect errors,
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
import functools
import os
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
import structlog
from litestar import Response
from litestar.response import Stream

from forge_sdk.errors import ExpertUnavailableError, UpstreamError, UpstreamTimeoutError
from forge_sdk.retry import RetryPolicy
from forge_sdk.types import ErrorBody, ErrorResponse

if TYPE_CHECKING:
    from forge_gateway.routing import Target

__all__ = ["UpstreamPool", "UpstreamReply", "UpstreamState"]

log = structlog.get_logger("forge_gateway.upstream")
_RETRY_STATUS = frozenset({502, 503, 504})
_encode = msgspec.json.Encoder().encode


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
    """

    def __init__(
        self,
        *,
        default_expert: str = "general",
        failure_threshold: int = 3,
        cooldown_s: float = 30.0,
        retry_base_delay: float = 1.0,
    ) -> None:
        self.default_expert = default_expert
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self.retry_base_delay = retry_base_delay
        self.states: dict[str, UpstreamState] = {}
        self._session: Any = None
        self._retryable: tuple[type[BaseException], ...] = ()

    async def start(self) -> None:
        """Open the shared connection pool."""
        import aiohttp

        self._retryable = (
            asyncio.TimeoutError,
            aiohttp.ClientConnectionError,
            aiohttp.ClientPayloadError,
            _RetryableStatusError,
        )
        connector = aiohttp.TCPConnector(limit=1024, limit_per_host=0, keepalive_timeout=60)
        # No session-wide timeout: each expert brings its own.
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None), auto_decompress=True
        )

    async def stop(self) -> None:
        """Close every pooled connection."""
        if self._session is not None:
            await self._session.close()
            self._session = None

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
        assert self._session is not None, "UpstreamPool.start() was not awaited"
        state = self._state(expert.name)
        state.requests += 1
        if not state.available(time.monotonic()):
            raise ExpertUnavailableError(f"expert {expert.name!r} is cooling down after repeated failures")
        url = f"{expert.endpoint.rstrip('/')}/{path}"
        headers = {"content-type": "application/json"}
        if expert.api_key_env and (key := os.environ.get(expert.api_key_env)):
            headers["authorization"] = f"Bearer {key}"
        policy = RetryPolicy(
            max_retries=expert.max_retries, base_delay=self.retry_base_delay, retryable=self._retryable
        )
        timeout = expert.timeout

        async def attempt() -> UpstreamReply:
            if stream:
                return await self._open_stream(url, body, headers, timeout)
            # The per-expert timeout bounds the whole attempt, connect to last byte.
            async with self._session.post(
                url, data=body, headers=headers, timeout=_timeout(timeout, total=True)
            ) as response:
                data = await response.read()
            if response.status in _RETRY_STATUS:
                raise _RetryableStatusError(response.status, data[:200].decode(errors="replace"))
            return UpstreamReply(response.status, response.content_type or "application/json", data)

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

    async def _open_stream(
        self, url: str, body: bytes, headers: dict[str, str], timeout: float
    ) -> UpstreamReply:
        # sock_read bounds the wait for headers, for the first chunk and between chunks.
        response = await self._session.post(url, data=body, headers=headers, timeout=_timeout(timeout))
        try:
            if response.status >= 400:
                data = await response.read()
                if response.status in _RETRY_STATUS:
                    raise _RetryableStatusError(response.status, data[:200].decode(errors="replace"))
                return UpstreamReply(response.status, response.content_type or "application/json", data)
            first = await response.content.readany()
        except BaseException:
            response.release()
            raise
        return UpstreamReply(response.status, "text/event-stream", stream=_relay(response, first))

    async def _guard(self, name: str, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                yield chunk
        except self._retryable as exc:
            # Bytes already reached the client: too late to fall back, so say it in-band.
            self._fail(name, _describe(exc))
            error = ErrorBody(f"expert {name!r} failed mid-stream: {_describe(exc)}", "upstream_error")
            yield b"data: " + _encode(ErrorResponse(error)) + b"\n\n"

    async def forward(self, target: Target, request: Any, path: str) -> Response[bytes] | Stream:
        """Proxy an OpenAI request Struct to the target's upstream as a response for the client.

        Raises:
            ExpertUnavailableError, UpstreamTimeoutError, UpstreamError: as :meth:`call`;
                the caller falls back.
        """
        expert = target.expert
        assert expert is not None
        body = _encode(msgspec.structs.replace(request, model=expert.upstream_model or expert.name))
        reply = await self.call(target, body, path, stream=bool(request.stream))
        headers = _route_headers(target)
        if reply.stream is None:
            return Response(
                reply.body, status_code=reply.status, media_type=reply.content_type, headers=headers
            )
        headers["cache-control"] = "no-cache"
        return Stream(reply.stream, status_code=reply.status, media_type="text/event-stream", headers=headers)


@functools.lru_cache(maxsize=64)
def _timeout(seconds: float, total: bool = False) -> Any:
    import aiohttp

    if total:
        return aiohttp.ClientTimeout(total=seconds, sock_connect=seconds)
    return aiohttp.ClientTimeout(total=None, sock_connect=seconds, sock_read=seconds)


def _route_headers(target: Target) -> dict[str, str]:
    from forge_gateway.api_openai import route_headers

    return route_headers(target)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, _RetryableStatusError):
        return f"HTTP {exc.status}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _relay(response: Any, first: bytes) -> AsyncIterator[bytes]:
    try:
        if first:
            yield first
        while chunk := await response.content.readany():
            yield chunk
    finally:
        response.release()
