"""Who is calling: API key verification against an in-memory copy of the key store.

Requests never touch the store: the active keys live in a dict keyed by key id. The copy loads
at start and reloads when the store's ``keys_version`` changes (polled every
``auth.refresh_interval`` seconds by a background task; the store calls are async, so a slow
database never stalls the event loop), and revocations made through this process's admin API
apply at once.

When a refresh cannot reach the store (a PostgreSQL outage), the gateway fails closed: keyed
requests get 503 ``key_store_unavailable`` (a revocation could be going unseen) until a refresh
succeeds again; nothing needs a restart.

Open mode (no key needed) is decided once, at start-up: the gateway is open when the key store,
read at start, holds no *active* (unrevoked) key and open mode is allowed (a loopback host, or
``auth.allow_open``); the start-up log says so loudly. It closes for good the moment a key exists
(created here or by another process). It never opens at run time: revoking the last key leaves a
gateway that needs a key nobody has (every request except ``/health`` gets 401), because a gateway
on 127.0.0.1 behind a reverse proxy on the same host is a common production set-up, and "the last
key was revoked" must not mean "everyone is let in". Restart it to serve openly again.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress

import structlog

from forge_gateway.security.keys import ApiKey, parse_key, verify_secret
from forge_gateway.security.store import KeyBackend
from forge_sdk.errors import AuthenticationError, OverloadedError

__all__ = ["Authenticator", "is_loopback"]

log = structlog.get_logger("forge_gateway.auth")

_NOT_LOADED = "keys not loaded yet"


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Authenticator:
    """Verifies keys from a cached copy of a key store (SQLite or PostgreSQL).

    Args:
        store: the key store.
        open_allowed: serve without keys when none is active (loopback host or ``allow_open``).
        refresh_interval: seconds between checks for keys changed by other processes.
    """

    def __init__(self, store: KeyBackend, *, open_allowed: bool, refresh_interval: float = 1.0) -> None:
        self.store = store
        self.open_allowed = open_allowed
        self.refresh_interval = refresh_interval
        self._keys: dict[str, ApiKey] = {}
        self._version = -1
        self._task: asyncio.Task[None] | None = None
        self._store_error: str | None = _NOT_LOADED
        """Why the last refresh failed (or none ran yet); while set, keyed requests get 503."""
        self._open_mode = False
        """Decided in :meth:`start` (no active key then, and open allowed); cleared for good once
        any key is seen, never set again."""

    def _fail(self, exc: BaseException) -> None:
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        if self._store_error in (None, _NOT_LOADED):
            log.error("key_store_unavailable", store=self.store.location, error=message)
        self._store_error = message

    @property
    def available(self) -> bool:
        """False while the key store cannot be reached (requests needing a key get 503)."""
        return self._store_error is None

    @property
    def open(self) -> bool:
        """True when requests need no key: open mode decided at start, and no key seen since."""
        return self._open_mode and not self._keys and self._store_error is None

    @property
    def active_keys(self) -> int:
        return len(self._keys)

    async def reload(self) -> None:
        """Re-read the active keys (at start, on a version change, after a create here)."""
        version = await self.store.version()
        keys = {k.id: k for k in await self.store.keys(include_revoked=False)}
        if keys:
            self._open_mode = False  # for good: a gateway that has had keys never opens again
        # One assignment: request handlers see either the old or the new dict, never a mix.
        self._keys = keys
        self._version = version
        if self._store_error not in (None, _NOT_LOADED):
            log.info("key_store_available", store=self.store.location, active_keys=len(keys))
        self._store_error = None

    def forget(self, key_id: str) -> None:
        """Drop a key from the cache now (this process revoked it)."""
        keys = dict(self._keys)
        keys.pop(key_id, None)
        self._keys = keys

    def authenticate(self, token: str | None) -> ApiKey:
        """The active key for a raw ``Bearer``/``X-API-Key`` value.

        Raises:
            AuthenticationError: missing, malformed, unknown, revoked or wrong key.
        """
        if self._store_error is not None:
            raise OverloadedError(
                f"API keys cannot be checked: the key store is unavailable ({self._store_error}); retry later",
                code="key_store_unavailable",
                headers={"Retry-After": "1"},
            )
        if not token:
            raise AuthenticationError(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'."
            )
        parsed = parse_key(token)
        key = self._keys.get(parsed[0]) if parsed else None
        if key is None or parsed is None or not verify_secret(parsed[1], key.secret_sha256):
            raise AuthenticationError("Incorrect API key provided.")
        return key

    async def start(self) -> None:
        """Load the keys (a store that cannot be reached fails closed until it can) and poll."""
        try:
            await self.reload()
        except Exception as exc:  # the refresh loop keeps trying; until then, fail closed
            self._fail(exc)
        else:
            # The one place open mode is decided. A store unreadable at start never opens later.
            self._open_mode = self.open_allowed and not self._keys
        if self._task is None:
            self._task = asyncio.create_task(self._refresh_loop(), name="forge-auth-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _refresh_loop(self) -> None:
        was_open = self.open
        had_keys = bool(self._keys)
        while True:
            await asyncio.sleep(self.refresh_interval)
            try:
                version = await self.store.version()
                if version != self._version or self._store_error is not None:
                    await self.reload()
                    log.info("api_keys_reloaded", active_keys=len(self._keys), version=version)
            except Exception as exc:  # fail closed until the store answers again; never kill the loop
                self._fail(exc)
            if was_open and self._keys:
                was_open = False
                log.warning("auth_closed", reason="an API key exists; open mode has ended until a restart")
            if had_keys and not self._keys and self._store_error is None:
                log.warning(
                    "auth_no_active_keys",
                    reason="the last API key was revoked; every request still needs a key "
                    "(open mode is decided at start-up only)",
                )
            had_keys = bool(self._keys)
