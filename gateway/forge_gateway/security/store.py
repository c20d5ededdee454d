"""One async interface for the key store and usage ledger, and the choice between its two backends.

``[auth] database_url`` unset: the embedded SQLite file ``db_path`` (replicas must share a host).
``database_url = "postgresql://..."``: PostgreSQL, shared by replicas on any number of hosts.

Every method is a coroutine run on the event loop. PostgreSQL is natively async (psycopg 3's
async connections and ``AsyncConnectionPool``, see :mod:`~forge_gateway.security.keys_pg`);
SQLite has no async driver in the standard library, so :class:`SQLiteBackend` runs each call of
the blocking :class:`~forge_gateway.security.keys.KeyStore` in a worker thread. Requests never
wait on either: keys are verified against an in-memory copy that reloads when the store's version
counter moves, and usage is written in batches, so the store sees a few queries a second per
replica whatever the request rate.

A backend is built without I/O (at app construction), connected with :meth:`KeyBackend.open`
inside the event loop that will use it, and released with :meth:`KeyBackend.close` on that loop.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import anyio

from forge_gateway.security.keys import ApiKey, KeyStore, UsageRow
from forge_sdk.errors import ConfigurationError

if TYPE_CHECKING:
    from forge_gateway.config import AuthConfig

__all__ = ["KeyBackend", "SQLiteBackend", "is_postgres_url", "open_store"]


class KeyBackend(Protocol):
    """What the gateway and ``forge-gateway keys`` need from a key store (all async)."""

    @property
    def location(self) -> str:
        """Where the keys live, without secrets (for messages and logs)."""

    async def open(self) -> None:
        """Connect (start the pool); call once, inside the event loop that uses the store."""

    async def add_key(self, record: ApiKey) -> None:
        """Store a key made by :func:`~forge_gateway.security.keys.new_key` (bumps the version)."""

    async def revoke(self, key_id: str) -> ApiKey:
        """Revoke a key (idempotent); raises ``NotFoundError`` for an unknown id."""

    async def keys(self, *, include_revoked: bool = True) -> list[ApiKey]:
        """All keys, oldest first."""

    async def version(self) -> int:
        """A counter every create/revoke bumps, from any process (-1: no store yet)."""

    async def add_usage(self, rows: Iterable[UsageRow], *, batch_id: str | None = None) -> bool:
        """Add counts to the per-key per-day totals atomically; False when there is no store.

        A ``batch_id`` seen before is skipped (the batch was applied by an earlier attempt whose
        outcome the caller could not know). SQLite needs no ids: a local commit either happened
        or raised.
        """

    async def usage(
        self, *, key_id: str | None = None, since: str | None = None, until: str | None = None
    ) -> list[UsageRow]:
        """Usage rows filtered by key and an inclusive ``YYYY-MM-DD`` range, by day then key."""

    async def close(self) -> None:
        """Release the file or the connection pool (idempotent)."""


class SQLiteBackend:
    """The SQLite :class:`~forge_gateway.security.keys.KeyStore` behind the async interface.

    Each call runs in a worker thread: sqlite3 blocks, and a WAL checkpoint or a writer holding
    the file lock must not stall the event loop.

    Args:
        path: the database file.
        create: create the file now if missing (a gateway passes False: no file, no keys).
    """

    def __init__(self, path: str | Path, *, create: bool) -> None:
        self._path, self._create = path, create
        self._store: KeyStore | None = None

    @property
    def location(self) -> str:
        return str(self._path)

    def _db(self) -> KeyStore:
        if self._store is None:
            raise ConfigurationError(f"key store {self._path} used before open()")
        return self._store

    async def open(self) -> None:
        if self._store is None:
            self._store = await anyio.to_thread.run_sync(lambda: KeyStore(self._path, create=self._create))

    async def add_key(self, record: ApiKey) -> None:
        await anyio.to_thread.run_sync(self._db().add_key, record)

    async def revoke(self, key_id: str) -> ApiKey:
        return await anyio.to_thread.run_sync(self._db().revoke, key_id)

    async def keys(self, *, include_revoked: bool = True) -> list[ApiKey]:
        store = self._db()
        return await anyio.to_thread.run_sync(lambda: store.keys(include_revoked=include_revoked))

    async def version(self) -> int:
        return await anyio.to_thread.run_sync(self._db().version)

    async def add_usage(self, rows: Iterable[UsageRow], *, batch_id: str | None = None) -> bool:
        return await anyio.to_thread.run_sync(self._db().add_usage, list(rows))

    async def usage(
        self, *, key_id: str | None = None, since: str | None = None, until: str | None = None
    ) -> list[UsageRow]:
        store = self._db()
        return await anyio.to_thread.run_sync(lambda: store.usage(key_id=key_id, since=since, until=until))

    async def close(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            await anyio.to_thread.run_sync(store.close)


def is_postgres_url(value: str) -> bool:
    """Whether ``value`` names a PostgreSQL database rather than an SQLite file."""
    return value.startswith(("postgresql://", "postgres://"))


def open_store(auth: AuthConfig, *, create: bool, db: str | None = None) -> KeyBackend:
    """The key store ``[auth]`` configures (``db`` overrides it: a file path or a PostgreSQL URL),
    not yet connected: ``await store.open()`` inside the event loop that will use it.

    Args:
        auth: the ``[auth]`` section.
        create: create the SQLite file at open if missing (PostgreSQL tables are always created,
            by the versioned migrations, on first use).
        db: an explicit location (``forge-gateway keys --db``).

    Raises:
        ConfigurationError: a ``database_url`` that is not a PostgreSQL URL, or psycopg missing.
    """
    url = db if db is not None and is_postgres_url(db) else (None if db else auth.database_url)
    if url is None:
        return SQLiteBackend(db or auth.db_path, create=create)
    if not is_postgres_url(url):
        raise ConfigurationError("auth.database_url must start with postgresql:// (or postgres://)")
    from forge_gateway.security.keys_pg import PostgresKeyStore

    return PostgresKeyStore(url, pool_size=auth.database_pool_size, timeout=auth.database_timeout)
