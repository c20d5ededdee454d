"""API keys and the usage ledger in one embedded SQLite file.

A key reads ``lf-<id>-<secret>``: ``id`` (12 hex chars) is public and names the row; ``secret``
(32 random bytes, URL-safe base64) is never stored, only its SHA-256. The secret has 256 bits
of entropy, so a plain hash is as strong as a slow KDF here and keeps verification ~1 us.
Comparisons use :func:`hmac.compare_digest`.

Every change to the keys table bumps ``meta.keys_version`` in the same transaction, so a
gateway replica notices a create or revoke from any process by polling one integer.
The file runs in WAL mode: readers (gateways) never block the writer (CLI, ledger flushes).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forge_sdk.errors import ConfigurationError, InvalidRequestError, NotFoundError

__all__ = [
    "KEY_COLUMNS",
    "MAX_LIMIT",
    "ApiKey",
    "KeyStore",
    "UsageRow",
    "hash_secret",
    "key_row",
    "new_key",
    "parse_key",
    "row_to_key",
    "usage_filter",
    "verify_secret",
]

KEY_PREFIX = "lf"
_ID_BYTES = 6
_SECRET_BYTES = 32
MAX_LIMIT = 10**12
"""Largest rpm/tpm accepted (SQLite integers are 64-bit; nobody needs more per minute)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL,
    rpm INTEGER,
    tpm INTEGER,
    models TEXT,
    admin INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS usage (
    key_id TEXT NOT NULL,
    day TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, day)
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('keys_version', 0);
"""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One API key as stored (never the secret itself)."""

    id: str
    name: str
    secret_sha256: str
    rpm: int | None
    """Requests per minute (None: the server default)."""
    tpm: int | None
    """Prompt + completion tokens per minute (None: the server default)."""
    models: tuple[str, ...] | None
    """Models/experts this key may use (None: all)."""
    admin: bool
    created_at: float
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def allows(self, *names: str) -> bool:
        """Whether any of ``names`` (requested model, resolved expert) is on the allow list."""
        return self.models is None or any(n in self.models for n in names)

    def public_dict(self) -> dict[str, Any]:
        """The key's metadata for listings (no secret, no hash)."""
        return {
            "id": self.id,
            "name": self.name,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "models": list(self.models) if self.models is not None else None,
            "admin": self.admin,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
            "active": self.active,
        }


@dataclass(frozen=True, slots=True)
class UsageRow:
    """Tokens one key used on one UTC day."""

    key_id: str
    day: str
    requests: int
    prompt_tokens: int
    completion_tokens: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "day": self.day,
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


def hash_secret(secret: str) -> str:
    """Hex SHA-256 of a key's secret part."""
    return hashlib.sha256(secret.encode()).hexdigest()


def verify_secret(secret: str, digest: str) -> bool:
    """Constant-time check of ``secret`` against a stored digest."""
    return hmac.compare_digest(hash_secret(secret), digest)


def parse_key(token: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a well-formed ``lf-<id>-<secret>`` key, else None."""
    parts = token.split("-", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def new_key(
    name: str,
    *,
    rpm: int | None = None,
    tpm: int | None = None,
    models: Iterable[str] | None = None,
    admin: bool = False,
) -> tuple[str, ApiKey]:
    """A fresh ``(full key, record)`` after checking the inputs (every key store creates keys here).

    Raises:
        InvalidRequestError: empty name, a limit out of range, or an empty model list.
    """
    if not name or not name.strip():
        raise InvalidRequestError("key name must not be empty", param="name")
    for label, value in (("rpm", rpm), ("tpm", tpm)):
        if value is not None and not 1 <= value <= MAX_LIMIT:
            raise InvalidRequestError(f"{label} must be between 1 and {MAX_LIMIT}, got {value}", param=label)
    model_list = sorted({m.strip() for m in models if m.strip()}) if models is not None else None
    if model_list is not None and not model_list:
        raise InvalidRequestError("models must name at least one model or expert", param="models")
    key_id = secrets.token_hex(_ID_BYTES)
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    record = ApiKey(
        id=key_id,
        name=name.strip(),
        secret_sha256=hash_secret(secret),
        rpm=rpm,
        tpm=tpm,
        models=tuple(model_list) if model_list is not None else None,
        admin=admin,
        created_at=time.time(),
    )
    return f"{KEY_PREFIX}-{key_id}-{secret}", record


def key_row(record: ApiKey) -> tuple[Any, ...]:
    """The first eight ``KEY_COLUMNS`` of a new key (``revoked_at`` is NULL), models as JSON text."""
    models = json.dumps(list(record.models)) if record.models is not None else None
    return (
        record.id,
        record.name,
        record.secret_sha256,
        record.rpm,
        record.tpm,
        models,
        record.admin,
        record.created_at,
    )


def usage_filter(
    key_id: str | None, since: str | None, until: str | None, mark: str
) -> tuple[str, list[str]]:
    """``(" WHERE ...", args)`` selecting usage rows by key and inclusive day range (``mark``: the
    driver's placeholder, ``?`` or ``%s``); ``("", [])`` when nothing filters."""
    where, args = [], []
    for clause, value in (("key_id = ", key_id), ("day >= ", since), ("day <= ", until)):
        if value is not None:
            where.append(clause + mark)
            args.append(value)
    return (" WHERE " + " AND ".join(where) if where else ""), args


def row_to_key(row: Sequence[Any]) -> ApiKey:
    models = json.loads(row[5]) if row[5] is not None else None
    return ApiKey(
        id=row[0],
        name=row[1],
        secret_sha256=row[2],
        rpm=row[3],
        tpm=row[4],
        models=tuple(models) if models is not None else None,
        admin=bool(row[6]),
        created_at=row[7],
        revoked_at=row[8],
    )


KEY_COLUMNS = "id, name, secret_sha256, rpm, tpm, models, admin, created_at, revoked_at"


class KeyStore:
    """The SQLite file of keys and usage; every method blocks (call it off the event loop).

    Args:
        path: database file.
        create: create the file (and its folder) now if missing. A gateway passes False: with
            no file it has no keys (dev mode) and opens the file once ``keys create`` makes it.

    Raises:
        ConfigurationError: the file cannot be opened or is not a key store.
    """

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        if create or self.path.exists():
            self._open()

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # One connection shared by the gateway's worker threads, serialised by the lock.
            db = sqlite3.connect(self.path, timeout=10.0, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise ConfigurationError(f"cannot open key store {self.path}: {exc}") from exc
        self._db = db
        return db

    def _conn(self) -> sqlite3.Connection | None:
        """The connection, opening the file if it appeared since; None while it does not exist."""
        if self._db is None and self.path.exists():
            self._open()
        return self._db

    @property
    def location(self) -> str:
        """Where the keys live, for messages and logs."""
        return str(self.path)

    @property
    def exists(self) -> bool:
        return self._conn() is not None

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # --- keys ---------------------------------------------------------------------------------

    def create(
        self,
        name: str,
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        models: Iterable[str] | None = None,
        admin: bool = False,
    ) -> tuple[str, ApiKey]:
        """Create a key; returns ``(full key, record)``. The full key is never retrievable again.

        Raises:
            InvalidRequestError: see :func:`new_key`.
        """
        full, record = new_key(name, rpm=rpm, tpm=tpm, models=models, admin=admin)
        self.add_key(record)
        return full, record

    def add_key(self, record: ApiKey) -> None:
        """Store a key made by :func:`new_key` (creates the file if missing)."""
        db = self._conn() or self._open()
        with self._lock, db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                f"INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                key_row(record),
            )
            self._bump_version(db)

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke a key (idempotent); returns its record.

        Raises:
            NotFoundError: no key with that id.
        """
        db = self._conn()
        if db is None:
            raise NotFoundError(
                f"no API key with id {key_id!r} (no key store at {self.path})", param="key_id"
            )
        with self._lock, db:
            db.execute("BEGIN IMMEDIATE")
            cur = db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (time.time(), key_id),
            )
            if cur.rowcount:
                self._bump_version(db)
            row = db.execute(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no API key with id {key_id!r}", param="key_id")
        return row_to_key(row)

    def keys(self, *, include_revoked: bool = True) -> list[ApiKey]:
        """All keys, oldest first."""
        query = f"SELECT {KEY_COLUMNS} FROM api_keys"
        if not include_revoked:
            query += " WHERE revoked_at IS NULL"
        db = self._conn()
        if db is None:
            return []
        with self._lock:
            rows = db.execute(query + " ORDER BY created_at").fetchall()
        return [row_to_key(r) for r in rows]

    def version(self) -> int:
        """Counter bumped by every key create/revoke, from any process (-1: no file yet)."""
        db = self._conn()
        if db is None:
            return -1
        with self._lock:
            return int(db.execute("SELECT value FROM meta WHERE name = 'keys_version'").fetchone()[0])

    @staticmethod
    def _bump_version(db: sqlite3.Connection) -> None:
        db.execute("UPDATE meta SET value = value + 1 WHERE name = 'keys_version'")

    # --- usage ledger -------------------------------------------------------------------------

    def add_usage(self, rows: Iterable[UsageRow]) -> bool:
        """Add counts to the per-key, per-day totals in one transaction.

        Returns:
            False when there is no key store file (dev mode without keys): nothing was written.
        """
        data = [(r.key_id, r.day, r.requests, r.prompt_tokens, r.completion_tokens) for r in rows]
        db = self._conn()
        if not data or db is None:
            return bool(not data)
        with self._lock, db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT INTO usage (key_id, day, requests, prompt_tokens, completion_tokens) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (key_id, day) DO UPDATE SET "
                "requests = requests + excluded.requests, "
                "prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
                "completion_tokens = completion_tokens + excluded.completion_tokens",
                data,
            )
        return True

    def usage(
        self, *, key_id: str | None = None, since: str | None = None, until: str | None = None
    ) -> list[UsageRow]:
        """Usage rows, filtered by key and inclusive ``YYYY-MM-DD`` day range."""
        where, args = usage_filter(key_id, since, until, "?")
        query = "SELECT key_id, day, requests, prompt_tokens, completion_tokens FROM usage" + where
        db = self._conn()
        if db is None:
            return []
        with self._lock:
            rows = db.execute(query + " ORDER BY day, key_id", args).fetchall()
        return [UsageRow(*r) for r in rows]
