"""Remote experts: pooled connections to OpenAI-compatible upstreams, retries, cooldown.

One shared ``httpx.AsyncClient`` keeps connections alive across requests. Connect errors and
timeouts are retried with exponential backoff (SDD §9.3, per-expert ``max_retries``); after
``failure_threshold`` consecutive failures an expert cools down for ``cooldown_s`` and requests
for it fall back to the default expert (SDD §9.2), which the caller sees in headers.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import msgspec
import structlog
from litestar import Response
from litestar.response import Stream

from forge_sdk.errors import ExpertUnavailableError, UpstreamError, UpstreamTimeoutError
from forge_sdk.retry import RetryPolicy

if TYPE_CHECKING:
    from forge_gateway.routing import Target
    from forge_gateway.state import Gateway

__all__ = ["UpstreamPool", "UpstreamState"]

log = structlog.get_logger("forge_gateway.upstream")
_RETRY_STATUS = {502, 503, 504}


@dataclass(slots=True)
class UpstreamState:
    """Health of one remote expert, as shown in ``/experts``."""

    consecutive_failures: int = 0
    cooldown_until: float = 0.0
    last_error: str | None = None

    def available(self, now: float) -> bool:
        return now >= self.cooldown_until

    def as_dict(self, now: float) -> dict[str, Any]:
        cooling = not self.available(now)
        return {
            "state": "cooldown" if cooling else "ok",
            "consecutive_failures": self.consecutive_failures,
            "cooldown_remaining_s": round(self.cooldown_until - now, 2) if cooling else 0.0,
            "last_error": self.last_error,
        }


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
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        limits = httpx.Limits(max_connections=1024, max_keepalive_connections=256, keepalive_expiry=60)
        self._client = httpx.AsyncClient(limits=limits, timeout=None)

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def forget(self, names: Iterable[str]) -> None:
        for name in names:
            self.states.pop(name, None)

    def status(self, name: str) -> dict[str, Any]:
        """Circuit state of one expert for ``/experts``."""
        return self.states.get(name, UpstreamState()).as_dict(time.monotonic())

    def _fail(self, name: str, error: str) -> None:
        state = self.states.setdefault(name, UpstreamState())
        state.consecutive_failures += 1
        state.last_error = error
        if state.consecutive_failures >= self.failure_threshold:
            state.cooldown_until = time.monotonic() + self.cooldown_s
            log.warning("expert_cooldown", expert=name, seconds=self.cooldown_s, error=error)

    def _ok(self, name: str) -> None:
        state = self.states.get(name)
        if state is not None and state.consecutive_failures:
            state.consecutive_failures = 0
            state.cooldown_until = 0.0

    async def _send(self, target: Target, body: bytes, path: str, stream: bool) -> httpx.Response:
        assert self._client is not None, "UpstreamPool.start() was not awaited"
        expert = target.expert
        assert expert is not None and expert.endpoint
        url = f"{expert.endpoint.rstrip('/')}/{path}"
        headers = {"content-type": "application/json"}
        if expert.api_key_env:
            key = os.environ.get(expert.api_key_env)
            if key:
                headers["authorization"] = f"Bearer {key}"
        timeout = httpx.Timeout(expert.timeout, connect=min(expert.timeout, 5.0))
        policy = RetryPolicy(
            max_retries=expert.max_retries,
            base_delay=self.retry_base_delay,
            retryable=(httpx.TimeoutException, httpx.ConnectError, _RetryableStatusError),
        )
        client = self._client

        async def attempt() -> httpx.Response:
            req = client.build_request("POST", url, content=body, headers=headers, timeout=timeout)
            response = await client.send(req, stream=stream)
            if response.status_code in _RETRY_STATUS:
                await response.aread()
                await response.aclose()
                raise _RetryableStatusError(response.status_code, response.text[:200])
            return response

        return await policy.acall(attempt)

    async def forward(
        self, gateway: Gateway, target: Target, request: Any, path: str
    ) -> Response[bytes] | Stream:
        """Proxy a chat/completions request to the target's upstream.

        Raises:
            ExpertUnavailableError: the expert is cooling down.
            UpstreamTimeoutError / UpstreamError: it failed after retries (the caller falls back).
        """
        from forge_gateway.api_openai import route_headers

        expert = target.expert
        assert expert is not None
        state = self.states.get(expert.name)
        if state is not None and not state.available(time.monotonic()):
            raise ExpertUnavailableError(f"expert {expert.name!r} is cooling down after repeated failures")
        upstream_model = expert.upstream_model or expert.name
        body = msgspec.json.encode(msgspec.structs.replace(request, model=upstream_model))
        try:
            response = await self._send(target, body, path, stream=request.stream)
        except httpx.TimeoutException as exc:
            self._fail(expert.name, "timeout")
            raise UpstreamTimeoutError(f"expert {expert.name!r} timed out") from exc
        except (httpx.HTTPError, _RetryableStatusError) as exc:
            self._fail(expert.name, type(exc).__name__)
            raise UpstreamError(f"expert {expert.name!r} failed: {exc}") from exc
        self._ok(expert.name)
        headers = route_headers(target)
        if not request.stream:
            return Response(
                response.content,
                status_code=response.status_code,
                media_type=response.headers.get("content-type", "application/json"),
                headers=headers,
            )
        return Stream(
            _relay(response),
            status_code=response.status_code,
            media_type="text/event-stream",
            headers={**headers, "cache-control": "no-cache"},
        )


async def _relay(response: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.aiter_raw():
            yield chunk
    finally:
        await response.aclose()


class _RetryableStatusError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"upstream answered {status}: {text}")
        self.status = status
