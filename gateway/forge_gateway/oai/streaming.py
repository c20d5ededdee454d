"""Server-Sent Events framing, and priming a stream so errors before the first token are HTTP errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeVar

import msgspec

__all__ = ["SSE_DONE", "primed", "sse"]

T = TypeVar("T")
SSE_DONE = b"data: [DONE]\n\n"
_encode = msgspec.json.Encoder().encode


def sse(obj: Any) -> bytes:
    """One SSE ``data:`` event holding ``obj`` as JSON."""
    return b"data: " + _encode(obj) + b"\n\n"


async def primed(stream: AsyncIterator[T]) -> AsyncIterator[T]:
    """``stream`` with its first item already awaited.

    Bad requests the engine only notices when it starts (a schema that does not compile, a
    refused sampling value) then raise here, before the response headers, and reach the client
    as a proper 4xx instead of an in-band error after a 200.
    """
    try:
        first = await anext(stream)
    except StopAsyncIteration:
        return _empty()
    except BaseException:
        await stream.aclose()  # type: ignore[attr-defined]
        raise
    return _chain(first, stream)


async def _empty() -> AsyncIterator[Any]:
    return
    yield


async def _chain(first: T, rest: AsyncIterator[T]) -> AsyncIterator[T]:
    try:
        yield first
        async for item in rest:
            yield item
    finally:
        await rest.aclose()  # type: ignore[attr-defined]
