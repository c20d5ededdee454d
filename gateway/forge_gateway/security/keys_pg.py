"""API keys and the usage ledger in PostgreSQL, shared by gateway replicas on any host.

The same rows as the SQLite store (:mod:`forge_gateway.security.keys`): hashed secrets only, a
``keys_version`` counter bumped in the transaction of every create/revoke (replicas poll it), and
per-key per-day usage added with ``INSERT ... ON CONFLICT DO UPDATE`` so concurrent flushes from
many replicas sum instead of overwriting each other.

Driver: psycopg 3 with psycopg-pool. Its blocking API fits the store interface shared with SQLite
(every call already runs in a worker thread, and no request waits on the store); the pool checks
a connection before lending it, so a restarted server is picked up without restarting the gateway.

Schema changes are numbered migrations in ``_MIGRATIONS``, applied once, in order, under an
advisory lock (replicas starting together do not race) and recorded in ``forge_schema_migrations``.
Append new ones; never edit an applied one.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from forge_gateway.security.keys import (
    KEY_COLUMNS,
    ApiKey,
    UsageRow,
    key_row,
    new_key,
    row_to_key,
    usage_filter,
)
from forge_sdk.errors import ConfigurationError, InvalidRequestError, NotFoundError, OverloadedError

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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().strip('"').splitlines()
    return text[0] if text else type(exc).__name__


class PostgresKeyStore:
    """Keys and usage in PostgreSQL; every method blocks (call it off the event loop).

    Args:
        url: ``postgresql://user:password@host:port/db``.
        pool_size: most connections held by this process.
        timeout: seconds to wait for a connection (and per statement) before the store counts
            as unavailable.

    Raises:
        ConfigurationError: psycopg / psycopg-pool not installed, or a malformed URL.
    """

    def __init__(self, url: str, *, pool_size: int = 4, timeout: float = 5.0) -> None:
        try:
            from psycopg_pool import ConnectionPool
        except ImportError as exc:
            raise ConfigurationError(
                "auth.database_url is PostgreSQL but psycopg is missing: pip install 'forge-gateway[postgres]'"
            ) from exc
        try:
            self._location = _redact(url)
        except ValueError as exc:
            raise ConfigurationError(f"auth.database_url is not a valid URL: {exc}") from exc
        self._timeout = timeout
        self._migrated = False
        self._migrate_lock = threading.Lock()
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max(1, pool_size),
            timeout=timeout,
            open=False,
            check=ConnectionPool.check_connection,
            # psycopg-pool backs off exponentially while a server is down and gives up after this;
            # the next request then starts a fresh attempt, so recovery never waits on a long backoff.
            reconnect_timeout=max(3 * timeout, 3.0),
            kwargs={
                "connect_timeout": max(1, round(timeout)),
                "options": f"-c statement_timeout={int(timeout * 1000)}",
                "application_name": "forge-gateway",
            },
            name="forge-keys",
        )
        try:
            self._pool.open(wait=False)
        except Exception as exc:  # a conninfo psycopg cannot parse
            raise ConfigurationError(f"auth.database_url is not usable: {exc}") from exc

    @property
    def location(self) -> str:
        return self._location

    @property
    def exists(self) -> bool:
        return True  # tables are created on first use

    def close(self) -> None:
        self._pool.close()

    # --- plumbing -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Any]:
        """A pooled connection inside one transaction; an unreachable server becomes a 503 error."""
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            with self._pool.connection() as conn:
                if not self._migrated:
                    self._migrate(conn)
                with conn.transaction():
                    yield conn
        except psycopg.DataError as exc:  # e.g. a NUL byte in a name or id: text PostgreSQL refuses
            raise InvalidRequestError(f"value refused by the key store: {exc}") from exc
        except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout) as exc:
            raise OverloadedError(
                f"key store {self._location} is unavailable: {_first_line(exc)}",
                code="key_store_unavailable",
                headers={"Retry-After": "1"},
            ) from exc

    def _migrate(self, conn: Any) -> None:
        with self._migrate_lock:
            if self._migrated:
                return
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS forge_schema_migrations "
                    "(version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
                )
                row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM forge_schema_migrations").fetchone()
                current = int(row[0])
                if current > SCHEMA_VERSION:
                    raise ConfigurationError(
                        f"key store {self._location} has schema version {current}, newer than this "
                        f"gateway's {SCHEMA_VERSION}: upgrade forge-gateway"
                    )
                for version, sql in _MIGRATIONS:
                    if version > current:
                        conn.execute(sql)
                        conn.execute("INSERT INTO forge_schema_migrations (version) VALUES (%s)", (version,))
            self._migrated = True

    def schema_version(self) -> int:
        """The highest migration applied to the database."""
        with self._tx() as conn:
            return int(conn.execute("SELECT MAX(version) FROM forge_schema_migrations").fetchone()[0])

    # --- keys -----------------------------------------------------------------------------------

    def create(
        self,
        name: str,
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        models: Iterable[str] | None = None,
        admin: bool = False,
    ) -> tuple[str, ApiKey]:
        full, record = new_key(name, rpm=rpm, tpm=tpm, models=models, admin=admin)
        with self._tx() as conn:
            conn.execute(
                f"INSERT INTO forge_api_keys ({KEY_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, NULL)",
                key_row(record),
            )
            conn.execute("UPDATE forge_meta SET value = value + 1 WHERE name = 'keys_version'")
        return full, record

    def revoke(self, key_id: str) -> ApiKey:
        import time

        if "\x00" in key_id:  # PostgreSQL text cannot hold NUL: no such key
            raise NotFoundError(f"no API key with id {key_id!r}", param="key_id")
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE forge_api_keys SET revoked_at = %s WHERE id = %s AND revoked_at IS NULL",
                (time.time(), key_id),
            )
            if cur.rowcount:
                conn.execute("UPDATE forge_meta SET value = value + 1 WHERE name = 'keys_version'")
            row = conn.execute(
                f"SELECT {KEY_COLUMNS} FROM forge_api_keys WHERE id = %s", (key_id,)
            ).fetchone()
        if row is None:
            raise NotFoundError(f"no API key with id {key_id!r}", param="key_id")
        return row_to_key(row)

    def keys(self, *, include_revoked: bool = True) -> list[ApiKey]:
        query = f"SELECT {KEY_COLUMNS} FROM forge_api_keys"
        if not include_revoked:
            query += " WHERE revoked_at IS NULL"
        with self._tx() as conn:
            rows = conn.execute(query + " ORDER BY created_at").fetchall()
        return [row_to_key(r) for r in rows]

    def version(self) -> int:
        with self._tx() as conn:
            return int(conn.execute("SELECT value FROM forge_meta WHERE name = 'keys_version'").fetchone()[0])

    # --- usage ledger ---------------------------------------------------------------------------

    def add_usage(self, rows: Iterable[UsageRow]) -> bool:
        data = [(r.key_id, r.day, r.requests, r.prompt_tokens, r.completion_tokens) for r in rows]
        if not data:
            return True
        with self._tx() as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO forge_usage (key_id, day, requests, prompt_tokens, completion_tokens) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (key_id, day) DO UPDATE SET "
                "requests = forge_usage.requests + EXCLUDED.requests, "
                "prompt_tokens = forge_usage.prompt_tokens + EXCLUDED.prompt_tokens, "
                "completion_tokens = forge_usage.completion_tokens + EXCLUDED.completion_tokens",
                data,
            )
        return True

    def usage(
        self, *, key_id: str | None = None, since: str | None = None, until: str | None = None
    ) -> list[UsageRow]:
        if any(v is not None and "\x00" in v for v in (key_id, since, until)):
            return []  # PostgreSQL text cannot hold NUL, so no row matches (as in SQLite)
        where, args = usage_filter(key_id, since, until, "%s")
        query = "SELECT key_id, day, requests, prompt_tokens, completion_tokens FROM forge_usage" + where
        with self._tx() as conn:
            rows = conn.execute(query + " ORDER BY day, key_id", args).fetchall()
        return [UsageRow(r[0], r[1], int(r[2]), int(r[3]), int(r[4])) for r in rows]
