"""API keys and the usage ledger in PostgreSQL, shared by gateway replicas on any host.

The same rows as the SQLite store (:mod:`forge_gateway.security.keys`): hashed secrets only, a
``keys_version`` counter bumped in the transaction of every create/revoke (replicas poll it), and
per-key per-day usage added with ``INSERT ... ON CONFLICT DO UPDATE`` so concurrent flushes from
many replicas sum instead of overwriting each other.

Driver: psycopg 3's async API with ``psycopg_pool.AsyncConnectionPool``, on the gateway's event
loop (no worker threads). The pool checks a connection before lending it, so a restarted server
is picked up without restarting the gateway.

Every call is bounded on the client by ``timeout``, even against a server that stops answering
without closing its connections (:mod:`~forge_gateway.security.pg_pool`).

Schema changes are numbered migrations in ``_MIGRATIONS``, applied once, in order, under an
advisory lock (replicas starting together do not race) and recorded in ``forge_schema_migrations``.
Append new ones; never edit an applied one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from forge_gateway.security.keys import (
    KEY_COLUMNS,
    ApiKey,
    UsageRow,
    key_row,
    row_to_key,
    usage_filter,
)
from forge_gateway.security.pg_pool import BoundedPool, first_line
from forge_sdk.errors import ConfigurationError, NotFoundError

if TYPE_CHECKING:
    from psycopg import AsyncConnection

__all__ = ["SCHEMA_VERSION", "PostgresKeyStore"]

_MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE forge_api_keys (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            secret_sha256 TEXT NOT NULL,
            rpm BIGINT,
            tpm BIGINT,
            models TEXT,
            admin BOOLEAN NOT NULL DEFAULT FALSE,
            created_at DOUBLE PRECISION NOT NULL,
            revoked_at DOUBLE PRECISION
        );
        CREATE TABLE forge_usage (
            key_id TEXT NOT NULL,
            day TEXT NOT NULL,
            requests BIGINT NOT NULL DEFAULT 0,
            prompt_tokens BIGINT NOT NULL DEFAULT 0,
            completion_tokens BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (key_id, day)
        );
        CREATE TABLE forge_meta (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
        INSERT INTO forge_meta (name, value) VALUES ('keys_version', 0);
        """,
    ),
    (
        2,
        # Usage batches already applied (ids kept two days): a retried flush is added once.
        """
        CREATE TABLE forge_usage_batches (
            id TEXT PRIMARY KEY,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
        );
        CREATE INDEX forge_usage_batches_applied_at ON forge_usage_batches (applied_at);
        """,
    ),
)
SCHEMA_VERSION = _MIGRATIONS[-1][0]
"""The schema version this code writes and reads."""

_MIGRATION_LOCK = 0x4C46_4B53  # pg_advisory_xact_lock id: "LFKS"


def _redact(url: str) -> str:
    """The URL without its password (for messages and logs)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = (
        (f"{parts.username}@" if parts.username else "") + host + (f":{parts.port}" if parts.port else "")
    )
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class PostgresKeyStore:
    """Keys and usage in PostgreSQL, async on the event loop (see the module docstring).

    Built without I/O; :meth:`open` starts the pool inside the loop that will use it and
    :meth:`close` releases every connection on that loop.

    Args:
        url: ``postgresql://user:password@host:port/db``.
        pool_size: most connections held by this process.
        timeout: seconds any one call may take (waiting for a connection included) before the
            store counts as unavailable (see :class:`~forge_gateway.security.pg_pool.BoundedPool`).

    Raises:
        ConfigurationError: psycopg / psycopg-pool not installed, or a malformed URL.
    """

    def __init__(self, url: str, *, pool_size: int = 4, timeout: float = 5.0) -> None:
        try:
            self._location = _redact(url)
        except ValueError as exc:
            raise ConfigurationError(f"auth.database_url is not a valid URL: {exc}") from exc
        self._migrated = False
        self._migrate_lock = asyncio.Lock()
        try:
            self._pool = BoundedPool(
                url, location=self._location, size=pool_size, timeout=timeout, prepare=self._migrate
            )
        except ImportError as exc:
            raise ConfigurationError(
                "auth.database_url is PostgreSQL but psycopg is missing: pip install 'forge-gateway[postgres]'"
            ) from exc

    @property
    def location(self) -> str:
        return self._location

    async def open(self) -> None:
        """Start the pool in the running loop (connections are made in the background)."""
        try:
            await self._pool.open()
        except Exception as exc:  # a conninfo psycopg cannot parse
            raise ConfigurationError(f"auth.database_url is not usable: {first_line(exc)}") from exc

    async def close(self) -> None:
        """Close every pooled connection (calls still unwinding from a timeout first)."""
        await self._pool.close()

    async def _migrate(self, conn: AsyncConnection[Any]) -> None:
        """Apply pending migrations once per process (the first call of each runs this)."""
        if self._migrated:
            return
        async with self._migrate_lock:
            if self._migrated:
                return
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS forge_schema_migrations "
                    "(version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
                )
                cur = await conn.execute("SELECT COALESCE(MAX(version), 0) FROM forge_schema_migrations")
                current = int((await _one(cur))[0])
                if current > SCHEMA_VERSION:
                    raise ConfigurationError(
                        f"key store {self._location} has schema version {current}, newer than this "
                        f"gateway's {SCHEMA_VERSION}: upgrade forge-gateway"
                    )
                for version, sql in _MIGRATIONS:
                    if version > current:
                        await conn.execute(sql)
                        await conn.execute(
                            "INSERT INTO forge_schema_migrations (version) VALUES (%s)", (version,)
                        )
            self._migrated = True

    async def schema_version(self) -> int:
        """The highest migration applied to the database."""

        async def work(conn: AsyncConnection[Any]) -> int:
            cur = await conn.execute("SELECT MAX(version) FROM forge_schema_migrations")
            return int((await _one(cur))[0])

        return await self._pool.call(work, transaction=False)

    # --- keys -----------------------------------------------------------------------------------

    async def add_key(self, record: ApiKey) -> None:
        async def work(conn: AsyncConnection[Any]) -> None:
            await conn.execute(
                f"INSERT INTO forge_api_keys ({KEY_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, NULL)",
                key_row(record),
            )
            await conn.execute(_BUMP_VERSION)

        await self._pool.call(work)

    async def revoke(self, key_id: str) -> ApiKey:
        if "\x00" in key_id:  # PostgreSQL text cannot hold NUL: no such key
            raise NotFoundError(f"no API key with id {key_id!r}", param="key_id")

        async def work(conn: AsyncConnection[Any]) -> Any:
            cur = await conn.execute(
                "UPDATE forge_api_keys SET revoked_at = %s WHERE id = %s AND revoked_at IS NULL",
                (time.time(), key_id),
            )
            if cur.rowcount:
                await conn.execute(_BUMP_VERSION)
            cur = await conn.execute(f"SELECT {KEY_COLUMNS} FROM forge_api_keys WHERE id = %s", (key_id,))
            return await cur.fetchone()

        row = await self._pool.call(work)
        if row is None:
            raise NotFoundError(f"no API key with id {key_id!r}", param="key_id")
        return row_to_key(row)

    async def keys(self, *, include_revoked: bool = True) -> list[ApiKey]:
        query = f"SELECT {KEY_COLUMNS} FROM forge_api_keys"
        if not include_revoked:
            query += " WHERE revoked_at IS NULL"

        async def work(conn: AsyncConnection[Any]) -> list[Any]:
            return await (await conn.execute(query + " ORDER BY created_at")).fetchall()

        return [row_to_key(r) for r in await self._pool.call(work, transaction=False)]

    async def version(self) -> int:
        async def work(conn: AsyncConnection[Any]) -> int:
            cur = await conn.execute("SELECT value FROM forge_meta WHERE name = 'keys_version'")
            return int((await _one(cur))[0])

        return await self._pool.call(work, transaction=False)

    # --- usage ledger ---------------------------------------------------------------------------

    async def add_usage(self, rows: Iterable[UsageRow], *, batch_id: str | None = None) -> bool:
        data = [(r.key_id, r.day, r.requests, r.prompt_tokens, r.completion_tokens) for r in rows]
        if not data:
            return True

        async def work(conn: AsyncConnection[Any]) -> None:
            if batch_id is not None:
                # A retry of a batch an earlier attempt committed (its answer was lost) finds its
                # id here and adds nothing; a concurrent attempt waits on the row lock, then does.
                cur = await conn.execute(
                    "INSERT INTO forge_usage_batches (id) VALUES (%s) ON CONFLICT DO NOTHING", (batch_id,)
                )
                if not cur.rowcount:
                    return
                await conn.execute(
                    "DELETE FROM forge_usage_batches WHERE applied_at < now() - interval '2 days'"
                )
            async with conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO forge_usage (key_id, day, requests, prompt_tokens, completion_tokens) "
                    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (key_id, day) DO UPDATE SET "
                    "requests = forge_usage.requests + EXCLUDED.requests, "
                    "prompt_tokens = forge_usage.prompt_tokens + EXCLUDED.prompt_tokens, "
                    "completion_tokens = forge_usage.completion_tokens + EXCLUDED.completion_tokens",
                    data,
                )

        await self._pool.call(work)
        return True

    async def usage(
        self, *, key_id: str | None = None, since: str | None = None, until: str | None = None
    ) -> list[UsageRow]:
        if any(v is not None and "\x00" in v for v in (key_id, since, until)):
            return []  # PostgreSQL text cannot hold NUL, so no row matches (as in SQLite)
        where, args = usage_filter(key_id, since, until, "%s")
        query = "SELECT key_id, day, requests, prompt_tokens, completion_tokens FROM forge_usage" + where

        async def work(conn: AsyncConnection[Any]) -> list[Any]:
            return await (await conn.execute(query + " ORDER BY day, key_id", args)).fetchall()

        return [
            UsageRow(r[0], r[1], int(r[2]), int(r[3]), int(r[4]))
            for r in await self._pool.call(work, transaction=False)
        ]


_BUMP_VERSION = "UPDATE forge_meta SET value = value + 1 WHERE name = 'keys_version'"


async def _one(cur: Any) -> Any:
    """The single row a query returns (every caller's query always returns one)."""
    row = await cur.fetchone()
    if row is None:  # only a hand-edited database gets here
        raise ConfigurationError("key store schema is damaged: an expected row is missing")
    return row
