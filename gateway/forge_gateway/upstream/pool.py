"""Remote experts: pooled connections to OpenAI-compatible upstreams, retries, cooldown.

A lean pooled HTTP/1.1 client (:mod:`forge_gateway.upstream.client`) keeps connections alive
across requests; general-purpose clients cost more than the whole 1 ms budget here. An expert
may list several replicas (``endpoints``): each attempt goes to a replica chosen by
:mod:`forge_gateway.upstream.replicas`, and a replica cools down for ``cooldown_s`` after
``failure_threshold`` consecutive failed requests. A POST is resent (to another replica at once,
or after an exponential backoff round, SDD §9.3, per-expert ``max_retries``, base delay from
``[router] retry_base_delay``) only when the upstream cannot have acted on it: connect errors and
503 answers (the client itself also resends once on a pooled connection found closed before any
byte came back). Timeouts, disconnects and 502/504 are not resent (a generation may be running
there): they fall back at once. All attempts together stay within ``limits.request_timeout``.
Only when every replica failed or is cooling do requests fall back to the default expert
(SDD §9.2), which the caller sees in ``x-forge-route-reason``.

A stream is only committed once the upstream has sent its first body bytes, so a stream can
still fall back while nothing has reached the client; a failure after that ends the stream with
an in-band OpenAI error event.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from forge_gateway.errors import sse_error
from forge_gateway.upstream.client import HttpPool, UpstreamConnectError, UpstreamDisconnectedError, header
from forge_gateway.upstream.endpoints import join_endpoint
from forge_gateway.upstream.replicas import HealthProber, ReplicaSet, ReplicaState
from forge_sdk.errors import ExpertUnavailableError, UpstreamError, UpstreamTimeoutError
from forge_sdk.experts import ExpertModel

if TYPE_CHECKING:
    from forge_gateway.routing import Target

__all__ = ["UpstreamPool", "UpstreamReply", "UpstreamState"]

log = structlog.get_logger("forge_gateway.upstream")
_RETRY_STATUS = frozenset({502, 503, 504})
_JSON_HEADER = b"content-type: application/json\r\n"


@dataclass(slots=True)
class UpstreamState:
    """Request-level counters of one remote expert (its replicas keep their own health)."""

    requests: int = 0
    failures: int = 0


@dataclass(slots=True)
class UpstreamReply:
    """What an upstream answered: a whole body, or a committed stream."""

    status: int
    content_type: str
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None


class _StatusError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"upstream answered {status}: {text}")
        self.status = status


class _UnavailableError(_StatusError):
    """503: the upstream says it did not take the request on (safe to resend)."""


class UpstreamPool:
    """Connection pool and circuit state for all remote experts.

    Args:
        default_expert: where requests go when a remote expert is unavailable.
        failure_threshold: consecutive failed requests before a cooldown.
        cooldown_s: how long a failing expert is skipped.
        retry_base_delay: first backoff delay, seconds (SDD §9.3: 1.0).
        allow_link_local: allow connections to link-local / cloud-metadata addresses.
        health_check_interval: seconds between probes of cooling replicas (0: none).
        request_timeout: seconds all attempts of one request may take together.
    """

    def __init__(
        self,
        *,
        default_expert: str = "general",
        failure_threshold: int = 3,
        cooldown_s: float = 30.0,
        retry_base_delay: float = 1.0,
        allow_link_local: bool = False,
        health_check_interval: float = 2.0,
        request_timeout: float = 60.0,
    ) -> None:
        self.allow_link_local = allow_link_local
        self.request_timeout = request_timeout
        self.default_expert = default_expert
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self.retry_base_delay = retry_base_delay
        self.states: dict[str, UpstreamState] = {}
        self.replicas: dict[str, tuple[ExpertModel, ReplicaSet]] = {}
        """Replica state per expert name, made on first use (an expert that changes is forgotten)."""
        self._prober = HealthProber(lambda: self.replicas.values(), health_check_interval)
        self._http: HttpPool | None = None
        self._failures: tuple[type[BaseException], ...] = (
            asyncio.TimeoutError,
            UpstreamConnectError,
            UpstreamDisconnectedError,
            _StatusError,
        )
        """What counts as a failed attempt (circuit accounting, fallback)."""
        self._retryable: tuple[type[BaseException], ...] = (UpstreamConnectError, _UnavailableError)
        """What is resent: only what the upstream cannot have acted on."""

    async def start(self) -> None:
        """Open the shared connection pool."""
        self._http = HttpPool(allow_link_local=self.allow_link_local)
        self._prober.start()

    async def stop(self) -> None:
        """Stop the health probes and close every pooled connection."""
        await self._prober.stop()
        if self._http is not None:
            self._http.close()
            self._http = None

    def forget(self, names: Iterable[str]) -> None:
        """Drop the state of experts that left the catalog or changed."""
        for name in names:
            self.states.pop(name, None)
            self.replicas.pop(name, None)

    def status(self, expert: ExpertModel | str) -> dict[str, Any]:
        """State of one remote expert and each of its replicas, for ``/experts`` (by name: the
        expert as last called; one never called has no replica state yet)."""
        if isinstance(expert, str):
            known = self.replicas.get(expert)
            if known is None:
                return {"state": "ok", "replicas": [], "requests": 0, "failures": 0}
            expert = known[0]
        counters = self.states.get(expert.name, UpstreamState())
        status = self._replica_set(expert).status(time.monotonic())
        status.update(requests=counters.requests, failures=counters.failures)
        return status

    def replica_sets(self) -> list[tuple[str, ReplicaSet]]:
        """``(expert name, replicas)`` of every remote expert called so far (for metrics)."""
        return [(name, replicas) for name, (_, replicas) in list(self.replicas.items())]

    def _state(self, name: str) -> UpstreamState:
        state = self.states.get(name)
        if state is None:
            state = self.states[name] = UpstreamState()
        return state

    def _replica_set(self, expert: ExpertModel) -> ReplicaSet:
        known = self.replicas.get(expert.name)
        if known is not None and known[0] == expert:
            return known[1]
        replicas = ReplicaSet(
            expert.replicas, failure_threshold=self.failure_threshold, cooldown_s=self.cooldown_s
        )
        self.replicas[expert.name] = (expert, replicas)
        return replicas

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
        replicas = self._replica_set(expert)
        if not replicas.available(time.monotonic()):
            raise ExpertUnavailableError(f"expert {expert.name!r} is cooling down after repeated failures")
        headers = _JSON_HEADER
        if expert.api_key_env and (key := os.environ.get(expert.api_key_env)):
            headers += b"authorization: Bearer %s\r\n" % key.encode("latin-1")
        timeout = expert.timeout

        async def attempt(replica: ReplicaState) -> UpstreamReply:
            # Non-stream: the per-expert timeout bounds the whole attempt. Stream: the wait for
            # the headers, for the first chunk and between chunks.
            url = join_endpoint(replica.url, path)
            status, head, data, chunks = await http.post(url, body, headers, timeout=timeout, stream=stream)
            if status in _RETRY_STATUS:
                error = _UnavailableError if status == 503 else _StatusError
                raise error(status, data[:200].decode(errors="replace"))
            content_type = header(head, b"content-type", "application/json")
            if chunks is None:
                return UpstreamReply(status, content_type, data)
            # Commit to this upstream only once its first body bytes arrived.
            first = await anext(chunks, b"")
            return UpstreamReply(status, content_type or "text/event-stream", stream=_prepend(first, chunks))

        # Every replica gets a try before the request falls back, and at least max_retries + 1
        # attempts are made. A failed replica hands over to another one at once; only when all
        # of them failed in this request does the next round wait (exponential backoff).
        budget = max(expert.max_retries + 1, len(replicas.states))
        tried: set[str] = set()
        counted: set[str] = set()
        rounds = 0
        last: BaseException | None = None
        deadline = asyncio.timeout(self.request_timeout)  # all attempts and backoffs together
        try:
            async with deadline:
                for _ in range(budget):
                    replica = replicas.pick(time.monotonic(), tried)
                    if replica is None:
                        if not tried:
                            break  # everything is cooling down
                        await asyncio.sleep(self.retry_base_delay * 2**rounds)
                        rounds += 1
                        tried.clear()
                        replica = replicas.pick(time.monotonic(), tried)
                        if replica is None:
                            break
                    replica.requests += 1
                    replica.outstanding += 1
                    try:
                        reply = await attempt(replica)
                    except self._failures as exc:
                        replica.outstanding -= 1
                        last = exc
                        tried.add(replica.url)
                        if replica.url not in counted:  # one failed request per replica, however many tries
                            counted.add(replica.url)
                            replicas.failed(replica, _describe(exc), expert.name)
                        if not isinstance(exc, self._retryable):
                            break  # it may have reached the upstream: never resend it
                        continue
                    except BaseException:
                        replica.outstanding -= 1
                        raise
                    replicas.succeeded(replica)
                    if reply.stream is None:
                        replica.outstanding -= 1
                    else:
                        # The stream holds its replica until it ends, however it ends.
                        reply.stream = _Held(
                            self._guard(expert.name, replicas, replica, reply.stream), replica.release
                        )
                    return reply
        except TimeoutError as exc:
            if not deadline.expired():
                raise
            state.failures += 1
            raise UpstreamTimeoutError(
                f"expert {expert.name!r} took longer than limits.request_timeout ({self.request_timeout:g} s)"
            ) from exc
        state.failures += 1
        if last is None:
            raise ExpertUnavailableError(f"expert {expert.name!r} is cooling down after repeated failures")
        if isinstance(last, asyncio.TimeoutError):
            raise UpstreamTimeoutError(f"expert {expert.name!r} timed out after {timeout:g} s") from last
        raise UpstreamError(f"expert {expert.name!r} failed: {_describe(last)}") from last

    async def _guard(
        self, name: str, replicas: ReplicaSet, replica: ReplicaState, chunks: AsyncIterator[bytes]
    ) -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                yield chunk
        except self._failures as exc:
            # Bytes already reached the client: too late to fall back, so say it in-band.
            replicas.failed(replica, _describe(exc), name)
            yield sse_error(UpstreamError(f"expert {name!r} failed mid-stream: {_describe(exc)}"))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, _StatusError):
        return f"HTTP {exc.status}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class _Held:
    """An async iterator that calls ``release`` exactly once when it ends: exhausted, failed,
    closed, or dropped without ever being iterated (a client gone before the first byte)."""

    __slots__ = ("_chunks", "_release")

    def __init__(self, chunks: AsyncIterator[bytes], release: Callable[[], None]) -> None:
        self._chunks = chunks
        self._release: Callable[[], None] | None = release

    def __aiter__(self) -> _Held:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await anext(self._chunks)
        except BaseException:
            self.release()
            raise

    async def aclose(self) -> None:
        self.release()
        await self._chunks.aclose()  # type: ignore[attr-defined]

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

    def __del__(self) -> None:
        self.release()


async def _prepend(first: bytes, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        if first:
            yield first
        async for chunk in chunks:
            yield chunk
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
