"""Who is calling: API key verification against an in-memory copy of the key store.

Requests never touch SQLite: the active keys live in a dict keyed by key id. The copy reloads
when ``meta.keys_version`` changes (polled off the event loop every ``auth.refresh_interval``
seconds), and revocations made through this process's admin API apply at once.

"No keys configured" means: no *active* (unrevoked) key in the store. Then the gateway is open
(dev mode) when it listens on a loopback address or ``auth.allow_open`` is set; otherwise every
request except ``/health`` gets 401, so revoking the last key never opens a public gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress

import anyio
import structlog

from forge_gateway.security.keys import ApiKey, KeyStore, parse_key, verify_secret
from forge_sdk.errors import AuthenticationError

__all__ = ["Authenticator", "is_loopback"]

log = structlog.get_logger("forge_gateway.auth")


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Authenticator:
    """Verifies keys from a cached copy of a :class:`KeyStore`.

    Args:
        store: the key store.
        open_allowed: serve without keys when none is active (loopback host or ``allow_open``).
        refresh_interval: seconds between checks for keys changed by other processes.
    """

    def __init__(self, store: KeyStore, *, open_allowed: bool, refresh_interval: float = 1.0) -> None:
        self.store = store
        self.open_allowed = open_allowed
        self.refresh_interval = refresh_interval
        self._keys: dict[str, ApiKey] = {}
        self._version = -1
        self._task: asyncio.Task[None] | None = None
        self.reload()

    @property
    def open(self) -> bool:
        """True when requests need no key (no active key, and open mode is allowed)."""
        return not self._keys and self.open_allowed

    @property
    def active_keys(self) -> int:
        return len(self._keys)

    def reload(self) -> None:
        """Re-read the active keys (blocking; called at start and from a worker thread)."""
        version = self.store.version()
        keys = {k.id: k for k in self.store.keys(include_revoked=False)}
        # One assignment: request handlers see either the old or the new dict, never a mix.
        self._keys = keys
        self._version = version

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
        while True:
            await asyncio.sleep(self.refresh_interval)
            try:
                version = await anyio.to_thread.run_sync(self.store.version)
                if version != self._version:
                    await anyio.to_thread.run_sync(self.reload)
                    log.info("api_keys_reloaded", active_keys=len(self._keys), version=version)
            except Exception as exc:  # a locked/broken file must not kill auth; keep the last copy
                log.warning("api_keys_reload_failed", error=str(exc))
            if self.open != was_open:
                was_open = self.open
                if was_open:
                    log.warning("auth_open", reason="no active API keys; serving without authentication")
