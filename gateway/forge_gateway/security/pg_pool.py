"""A psycopg async connection pool whose every call ends within a timeout, on the event loop.

psycopg bounds connecting (``connect_timeout``) and the pool bounds waiting for a connection,
but nothing bounds a query on an open connection except the server's own ``statement_timeout``,
which a server that stops answering (a network partition, a frozen host) never applies: its TCP
connection stays open and the read waits forever. Cancelling the awaiting task does not help
either: psycopg then asks the server to cancel the query and waits up to 10 s for an answer that
never comes. So each call runs as its own task; when it overruns, the caller gets the error at
once and the call's socket is shut down, which makes the pending read see end-of-file: the call
unwinds in milliseconds and the pool discards the connection. No library offers this for
psycopg's async API, hence this module.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from forge_sdk.errors import InvalidRequestError, OverloadedError

if TYPE_CHECKING:
    from psycopg import AsyncConnection

__all__ = ["BoundedPool", "first_line"]

_T = TypeVar("_T")
Work = Callable[["AsyncConnection[Any]"], Awaitable[_T]]


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (psycopg's errors span several)."""
    text = str(exc).strip().strip('"').splitlines()
    return text[0] if text else type(exc).__name__


class BoundedPool:
    """``psycopg_pool.AsyncConnectionPool`` plus a per-call deadline.

    Args:
        url: the PostgreSQL conninfo or URL.
        location: the URL without its password, for error messages.
        size: most connections held.
        timeout: seconds a call may take, waiting for a connection included; also the connect
            timeout, and half the server-side statement timeout.
        prepare: awaited on the connection before each call's work (schema migrations).
    """

    def __init__(
        self,
        url: str,
        *,
        location: str,
        size: int,
        timeout: float,
        prepare: Callable[[AsyncConnection[Any]], Awaitable[None]],
    ) -> None:
        from psycopg_pool import AsyncConnectionPool

        self._location = location
        self._timeout = timeout
        self._prepare = prepare
        self._busy: dict[asyncio.Task[Any], AsyncConnection[Any]] = {}
        """The connection each call in flight is using."""
        self._stray: set[asyncio.Task[Any]] = set()
        """Calls that overran ``timeout``, still unwinding (awaited at :meth:`close`)."""
        self._pool = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=max(1, size),
            timeout=timeout,
            open=False,
            check=self._check,
            # psycopg-pool backs off exponentially while a server is down and gives up after this;
            # the next call then starts a fresh attempt, so recovery never waits on a long backoff.
            reconnect_timeout=max(3 * timeout, 3.0),
            kwargs={
                # Reads need no BEGIN/COMMIT round trips, and the pool's check is a single one.
                "autocommit": True,
                # libpq counts whole seconds, at least 2 (the call's own bound is ``timeout``).
                "connect_timeout": max(2, round(timeout)),
                # A backstop on the server for what the client gave up on; longer than the client's
                # bound so a statement is never cut server-side while the client still waits.
                "options": f"-c statement_timeout={int(timeout * 2000)}",
                "application_name": "forge-gateway",
            },
            name="forge-keys",
        )

    async def open(self) -> None:
        """Start the pool in the running loop (connections are made in the background)."""
        await self._pool.open(wait=False)

    async def close(self) -> None:
        """Let overrun calls unwind (their sockets are already shut), then close every connection."""
        if self._stray:
            await asyncio.wait(set(self._stray), timeout=self._timeout)
            for task in self._stray:
                task.cancel()  # a last resort: unwinding should not take this long
        await self._pool.close(timeout=self._timeout)

    def unavailable(self, why: str) -> OverloadedError:
        """The 503 every caller sees while the database cannot serve."""
        return OverloadedError(
            f"key store {self._location} is unavailable: {why}",
            code="key_store_unavailable",
            headers={"Retry-After": "1"},
        )

    async def call(self, work: Work[_T], *, transaction: bool = True) -> _T:
        """``work(conn)`` on a pooled connection, within ``timeout`` seconds.

        Connections are in autocommit mode: a single read (``transaction=False``) costs one
        round trip; ``transaction=True`` wraps ``work`` in BEGIN ... COMMIT.

        Raises:
            OverloadedError: ``key_store_unavailable`` (unreachable, or no answer in time).
            InvalidRequestError: a value PostgreSQL refuses (a NUL byte in text).
        """
        task = asyncio.create_task(self._run(work, transaction), name="forge-keys-call")
        try:
            done, _ = await asyncio.wait({task}, timeout=self._timeout)
        except asyncio.CancelledError:
            self._abandon(task)
            raise
        if not done:
            self._abandon(task)
            raise self.unavailable(f"no answer within {self._timeout:g} s")
        return task.result()

    def _abandon(self, task: asyncio.Task[Any]) -> None:
        """End an overrun call now, without waiting on the server (see the module docstring)."""
        self._stray.add(task)
        task.add_done_callback(self._unwound)
        conn = self._busy.get(task)
        if conn is not None:
            _sever(conn)
        else:  # still queued for a pool connection: nothing is in flight on the server
            task.cancel()

    def _unwound(self, task: asyncio.Task[Any]) -> None:
        self._stray.discard(task)
        self._busy.pop(task, None)
        if not task.cancelled():
            task.exception()  # retrieved: its caller already got the 503

    def _hold(self, conn: AsyncConnection[Any]) -> None:
        """Note that the current call uses ``conn`` (so :meth:`_abandon` can sever it)."""
        import psycopg

        task = asyncio.current_task()
        if task is None:
            return
        if task in self._stray:  # abandoned while the pool was lending: use no connection
            raise psycopg.OperationalError("call abandoned after its timeout")
        self._busy[task] = conn

    async def _check(self, conn: AsyncConnection[Any]) -> None:
        """The pool's check before lending a connection: a round trip a frozen server never
        answers, so it is severable like the call itself."""
        from psycopg_pool import AsyncConnectionPool

        self._hold(conn)
        await AsyncConnectionPool.check_connection(conn)

    async def _run(self, work: Work[_T], transaction: bool) -> _T:
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            async with self._pool.connection() as conn:
                self._hold(conn)
                await self._prepare(conn)
                if not transaction:
                    return await work(conn)
                async with conn.transaction():
                    return await work(conn)
        except psycopg.DataError as exc:  # e.g. a NUL byte in a name or id: text PostgreSQL refuses
            raise InvalidRequestError(f"value refused by the key store: {exc}") from exc
        except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout) as exc:
            raise self.unavailable(first_line(exc)) from exc
        finally:
            task = asyncio.current_task()
            if task is not None and task not in self._stray:
                self._busy.pop(task, None)


def _sever(conn: AsyncConnection[Any]) -> None:
    """Shut the connection's socket down (not close: psycopg still owns the descriptor)."""
    try:
        sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
    except Exception:  # already closed: nothing is waiting on it
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()
