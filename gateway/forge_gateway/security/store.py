"""One interface for the key store and usage ledger, and the choice between its two backends.

``[auth] database_url`` unset: the embedded SQLite file ``db_path`` (replicas must share a host).
``database_url = "postgresql://..."``: PostgreSQL, shared by replicas on any number of hosts.

Both stores are blocking (SQLite is; PostgreSQL goes through psycopg's connection pool) and are
called off the event loop: requests never touch them. Keys are verified against an in-memory
copy that reloads when the store's version counter moves, and usage is written in batches, so
the store sees a few queries a second per replica whatever the request rate.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from forge_gateway.security.keys import ApiKey, KeyStore, UsageRow
from forge_sdk.errors import ConfigurationError

if TYPE_CHECKING:
    from forge_gateway.config import AuthConfig

__all__ = ["KeyBackend", "is_postgres_url", "open_store"]


class KeyBackend(Protocol):
    """What the gateway and ``forge-gateway keys`` need from a key store (every method blocks)."""

    @property
    def location(self) -> str:
        """Where the keys live, without secrets (for messages and logs)."""

    @property
    def exists(self) -> bool:
        """Whether the store exists yet (a gateway without one has no keys: dev mode)."""

    def create(
        self,
        name: str,
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        models: Iterable[str] | None = None,
        admin: bool = False,
    ) -> tuple[str, ApiKey]:
        """Create a key: ``(full key, record)``; see :func:`forge_gateway.security.keys.new_key`."""

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke a key (idempotent); raises ``NotFoundError`` for an unknown id."""

    def keys(self, *, include_revoked: bool = True) -> list[ApiKey]:
        """All keys, oldest first."""

    def version(self) -> int:
        """A counter every create/revoke bumps, from any process (-1: no store yet)."""

    def add_usage(self, rows: Iterable[UsageRow]) -> bool:
        """Add counts to the per-key per-day totals atomically; False when there is no store."""

    def usage(
        self, *, key_id: str | None = None, since: str | None = None, until: str | None = None
    ) -> list[UsageRow]:
        """Usage rows filtered by key and an inclusive ``YYYY-MM-DD`` range, by day then key."""

    def close(self) -> None:
        """Release the file or the connection pool."""


def is_postgres_url(value: str) -> bool:
    """Whether ``value`` names a PostgreSQL database rather than an SQLite file."""
    return value.startswith(("postgresql://", "postgres://"))


def open_store(auth: AuthConfig, *, create: bool, db: str | None = None) -> KeyBackend:
    """The key store ``[auth]`` configures (``db`` overrides it: a file path or a PostgreSQL URL).

    Args:
        auth: the ``[auth]`` section.
        create: create the SQLite file now if missing (PostgreSQL tables are always created,
            by the versioned migrations, on first use).
        db: an explicit location (``forge-gateway keys --db``).

    Raises:
        ConfigurationError: a ``database_url`` that is not a PostgreSQL URL, or psycopg missing.
    """
    url = db if db is not None and is_postgres_url(db) else (None if db else auth.database_url)
    if url is None:
        return KeyStore(db or auth.db_path, create=create)
    if not is_postgres_url(url):
        raise ConfigurationError("auth.database_url must start with postgresql:// (or postgres://)")
    from forge_gateway.security.keys_pg import PostgresKeyStore

    return PostgresKeyStore(url, pool_size=auth.database_pool_size, timeout=auth.database_timeout)
