"""A hostile upstream against the hand-written HTTP/1.1 client (``forge_gateway.upstream.client``)
and the retry rules of the upstream pool.

A raw asyncio server on loopback answers each path with scripted bytes: interim 1xx answers,
bodies past the stream high-water mark, bytes on an idle pooled connection, read-until-close
bodies, garbage, early close, a slow drip, chunked edge cases, oversized headers and bodies, an
upstream that hangs up at once, and an IPv6 host. Each case asserts a correct answer or a clear
upstream error, within its timeout.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from forge_gateway.routing import Target
from forge_gateway.upstream import client as upstream_http
from forge_gateway.upstream.client import HttpPool, UpstreamConnectError, UpstreamDisconnectedError
from forge_gateway.upstream.pool import UpstreamPool
from forge_sdk.errors import UpstreamError, UpstreamTimeoutError
from forge_sdk.experts import ExpertModel

pytestmark = pytest.mark.asyncio(loop_scope="session")
BIG = b"x" * (1024 * 1024)  # 4x the stream high-water mark


class Hostile:
    """Scripted upstream: ``/mode`` picks the misbehaviour."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, bytes]] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, host: str = "127.0.0.1") -> None:
        self.server = await asyncio.start_server(self._handle, host, 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.transport.abort()

    def count(self, mode: str) -> int:
        return sum(1 for path, _ in self.requests if path.startswith(f"/{mode}"))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                length = next(int(x.split(":")[1]) for x in lines if x.lower().startswith("content-length"))
                await reader.readexactly(length)
                self.requests.append((path, head))
                if not await self._answer(path.strip("/").split("/")[0], writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, StopIteration):
            pass
        finally:
            writer.close()

    async def _answer(self, mode: str, w: asyncio.StreamWriter) -> bool:
        """Write the scripted answer; False closes the connection."""
        ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\nok"
        if mode == "ok":
            w.write(ok)
        elif mode == "interim":
            w.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n" + ok)
        elif mode == "big":
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(BIG) + BIG)
        elif mode == "untilclose":
            w.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nhello ")
            await w.drain()
            await asyncio.sleep(0.05)
            w.write(b"world")
            await w.drain()
            return False
        elif mode == "garbage":
            w.write(b"SMTP READY\r\n\r\n\x00\xff")
        elif mode == "earlyclose":
            return False
        elif mode == "drip":
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n")
            for _ in range(100):
                await w.drain()
                await asyncio.sleep(0.1)
                w.write(b"x")
        elif mode == "chunked":
            w.write(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\ntrailer: yes\r\n\r\n"
            )
        elif mode == "badchunk":
            w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n")
        elif mode == "lies":
            w.write(ok)
            await w.drain()
            await asyncio.sleep(0.05)  # then, unasked, a second "answer" on the idle connection
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nevil")
        elif mode == "error":
            w.write(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\n\r\noops")
        elif mode == "hugeheaders":
            w.write(b"HTTP/1.1 200 OK\r\nx-junk: " + b"a" * 100_000 + b"\r\ncontent-length: 0\r\n\r\n")
        elif mode == "unavailable":
            w.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy")
        elif mode == "slow":
            await asyncio.sleep(5)
            w.write(ok)
        elif mode == "sse":
            w.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n")
            w.write(b"transfer-encoding: chunked\r\n\r\n")
            for _ in range(3):
                event = b"data: " + b"y" * 200_000 + b"\n\n"
                w.write(b"%x\r\n%s\r\n" % (len(event), event))
            w.write(b"0\r\n\r\n")
        await w.drain()
        return True


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def hostile() -> AsyncIterator[Hostile]:
    server = Hostile()
    await server.start()
    yield server
    await server.stop()


async def _post(pool: HttpPool, hostile: Hostile, mode: str, timeout: float = 2.0) -> tuple[int, bytes]:
    status, _, body, _ = await asyncio.wait_for(
        pool.post(f"http://127.0.0.1:{hostile.port}/{mode}/v1", b"{}", b"", timeout=timeout, stream=False), 10
    )
    return status, body


async def test_interim_1xx_answers_are_skipped(hostile: Hostile) -> None:
    assert await _post(HttpPool(), hostile, "interim") == (200, b"ok")


async def test_non_stream_body_past_the_high_water_mark_does_not_stall(hostile: Hostile) -> None:
    status, body = await _post(HttpPool(), hostile, "big")
    assert status == 200 and body == BIG


async def test_oversized_bodies_and_headers_are_clear_errors(
    hostile: Hostile, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upstream_http, "MAX_BODY_BYTES", 64 * 1024)
    with pytest.raises(UpstreamDisconnectedError, match="larger than"):
        await _post(HttpPool(), hostile, "big")
    with pytest.raises(UpstreamDisconnectedError, match="headers larger"):
        await _post(HttpPool(), hostile, "hugeheaders")


async def test_read_until_close_body(hostile: Hostile) -> None:
    assert await _post(HttpPool(), hostile, "untilclose") == (200, b"hello world")


@pytest.mark.parametrize("mode", ["garbage", "earlyclose", "badchunk"])
async def test_garbage_early_close_and_bad_chunks_are_upstream_errors(hostile: Hostile, mode: str) -> None:
    with pytest.raises(UpstreamDisconnectedError):
        await _post(HttpPool(), hostile, mode)


async def test_chunked_extensions_and_trailers(hostile: Hostile) -> None:
    assert await _post(HttpPool(), hostile, "chunked") == (200, b"hello world")


async def test_slow_drip_is_bounded_by_the_timeout(hostile: Hostile) -> None:
    started = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        await _post(HttpPool(), hostile, "drip", timeout=0.5)
    assert time.monotonic() - started < 3


async def test_unasked_bytes_on_an_idle_connection_never_answer_the_next_request(hostile: Hostile) -> None:
    pool = HttpPool()
    assert await _post(pool, hostile, "lies") == (200, b"ok")
    await asyncio.sleep(0.2)  # the unasked "evil" answer arrives on the pooled connection now
    assert await _post(pool, hostile, "ok") == (200, b"ok")


async def test_keep_alive_reuse_after_errors(hostile: Hostile) -> None:
    pool = HttpPool()
    assert await _post(pool, hostile, "error") == (500, b"oops")
    assert await _post(pool, hostile, "ok") == (200, b"ok")
    with pytest.raises(UpstreamDisconnectedError):
        await _post(pool, hostile, "garbage")
    assert await _post(pool, hostile, "ok") == (200, b"ok")


async def test_an_upstream_that_hangs_up_at_once_is_no_reconnect_loop() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        writer.transport.abort()

    accepted: list[int] = []
    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises((UpstreamDisconnectedError, UpstreamConnectError)):
            await asyncio.wait_for(
                HttpPool().post(f"http://127.0.0.1:{port}/v1", b"{}", b"", timeout=2, stream=False), 5
            )
        assert len(accepted) == 1
    finally:
        server.close()


async def test_streams_skip_1xx_and_relay_events_larger_than_the_high_water_mark(hostile: Hostile) -> None:
    status, _, _, chunks = await HttpPool().post(
        f"http://127.0.0.1:{hostile.port}/sse/v1", b"{}", b"", timeout=2, stream=True
    )
    assert status == 200 and chunks is not None
    data = b"".join([chunk async for chunk in chunks])
    assert data.count(b"data: ") == 3 and len(data) == 3 * (200_000 + 8)


async def test_ipv6_hosts_keep_their_brackets_in_host() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    server = Hostile()
    try:
        await server.start("::1")
    except OSError:
        pytest.skip("no IPv6 loopback")
    try:
        status, _, body, _ = await HttpPool().post(
            f"http://[::1]:{server.port}/ok/v1", b"{}", b"", timeout=2, stream=False
        )
        assert (status, body) == (200, b"ok")
        assert f"host: [::1]:{server.port}\r\n".encode() in server.requests[-1][1]
    finally:
        await server.stop()


# --- the pool's retry rules ------------------------------------------------------------------


def _target(url: str, **kw: object) -> Target:
    return Target("x", ExpertModel(name="x", endpoint=url, **kw), "requested")  # type: ignore[arg-type]


async def test_posts_that_reached_the_upstream_are_not_resent(hostile: Hostile) -> None:
    pool = UpstreamPool(retry_base_delay=0.01)
    await pool.start()
    try:
        for mode in ("earlyclose", "garbage"):
            before = hostile.count(mode)
            with pytest.raises(UpstreamError):
                await pool.call(
                    _target(f"http://127.0.0.1:{hostile.port}/{mode}/v1", max_retries=3),
                    b"{}",
                    "c",
                    stream=False,
                )
            assert hostile.count(mode) - before == 1
        before = hostile.count("unavailable")
        with pytest.raises(UpstreamError):  # 503: the upstream says it did not take it on
            await pool.call(
                _target(f"http://127.0.0.1:{hostile.port}/unavailable/v1", max_retries=2),
                b"{}",
                "c",
                stream=False,
            )
        assert hostile.count("unavailable") - before == 3
    finally:
        await pool.stop()


async def test_retries_together_are_bounded_by_request_timeout(hostile: Hostile) -> None:
    pool = UpstreamPool(retry_base_delay=0.01, request_timeout=0.5)
    await pool.start()
    try:
        started = time.monotonic()
        with pytest.raises(UpstreamTimeoutError):
            await pool.call(
                _target(f"http://127.0.0.1:{hostile.port}/slow/v1", timeout=30, max_retries=5),
                b"{}",
                "c",
                stream=False,
            )
        assert time.monotonic() - started < 2
    finally:
        await pool.stop()
