"""A running gateway never becomes open (no-auth): open mode is decided at start-up only.

The attack: on a loopback host (a gateway on 127.0.0.1 behind a reverse proxy on the same machine,
a common production set-up), revoking the last active key switched the running gateway to open
mode, letting every request through. Now a gateway that has had keys needs a key until it restarts.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from forge_gateway.security import KeyStore
from tests.security.support import raw_request, serve_app

pytestmark = pytest.mark.asyncio(loop_scope="session")
JSON = {"content-type": "application/json"}


async def _until(predicate, what: str) -> None:  # type: ignore[no-untyped-def]
    for _ in range(200):  # the key refresh polls every 0.1 s here
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(what)


async def test_revoking_the_last_key_does_not_open_a_loopback_gateway(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    db = tmp_path / "keys.db"
    store = KeyStore(db)
    admin_key, record = store.create("ops", admin=True)
    store.close()
    overrides = {"auth": {"db_path": str(db), "refresh_interval": 0.1}}
    async with serve_app(tiny_model_dir, overrides) as (_, port, _):
        assert (await raw_request(port, "GET", "/v1/models")).status == 401
        auth = {"authorization": f"Bearer {admin_key}"}
        assert (await raw_request(port, "GET", "/v1/models", headers=auth)).status == 200
        # Revoked by this process (admin API), the last key there is.
        resp = await raw_request(port, "DELETE", f"/admin/keys/{record.id}", headers=auth)
        assert resp.status == 200, resp.body
        await asyncio.sleep(0.5)  # several refresh rounds: nothing may reopen it
        for path in ("/v1/models", "/admin/keys", "/experts"):
            resp = await raw_request(port, "GET", path)
            assert resp.status == 401, (path, resp.body)
            assert resp.json()["error"]["type"] == "authentication_error"
        chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        resp = await raw_request(
            port, "POST", "/v1/chat/completions", body=json.dumps(chat).encode(), headers=JSON
        )
        assert resp.status == 401, resp.body
        assert (await raw_request(port, "GET", "/health")).status == 200


async def test_open_gateway_closes_for_good_once_a_key_exists(tiny_model_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "keys.db"
    KeyStore(db).close()  # an empty store: open at start-up (loopback), loudly
    overrides = {"auth": {"db_path": str(db), "refresh_interval": 0.1}}
    async with serve_app(tiny_model_dir, overrides) as (_, port, _):
        assert (await raw_request(port, "GET", "/v1/models")).status == 200
        store = KeyStore(db)  # another process (the CLI) creates a key, then revokes it
        _, record = store.create("ci")

        async def closed() -> bool:
            return (await raw_request(port, "GET", "/v1/models")).status == 401

        await _until(closed, "creating a key did not close the open gateway")
        store.revoke(record.id)
        store.close()
        await asyncio.sleep(0.5)  # several refresh rounds see the revocation
        assert (await raw_request(port, "GET", "/v1/models")).status == 401
        assert (await raw_request(port, "GET", "/admin/keys")).status == 401
