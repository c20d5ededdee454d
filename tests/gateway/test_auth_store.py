"""API key store, in-memory authenticator, `forge-gateway keys` CLI and the open-listen rule."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest

from forge_gateway.cli import main
from forge_gateway.config import load_config
from forge_gateway.security import KeyStore, check_open_listen
from forge_gateway.security.auth import Authenticator, is_loopback
from forge_gateway.security.keys import UsageRow, hash_secret, parse_key
from forge_gateway.security.store import SQLiteBackend
from forge_sdk.errors import (
    AuthenticationError,
    ConfigurationError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
)


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    s = KeyStore(tmp_path / "keys.db")
    yield s
    s.close()


def test_key_format_and_only_hash_stored(store: KeyStore, tmp_path: Path) -> None:
    full, record = store.create("alice", rpm=10, tpm=1000, models=["math", " code "], admin=False)
    key_id, secret = parse_key(full)  # type: ignore[misc]
    assert full.startswith("lf-") and key_id == record.id and len(secret) >= 40
    assert record.models == ("code", "math") and record.rpm == 10 and record.tpm == 1000
    assert record.secret_sha256 == hash_secret(secret)
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("keys.db"))
    assert secret.encode() not in raw and full.encode() not in raw
    assert hash_secret(secret).encode() in raw


def test_parse_key_rejects_malformed() -> None:
    for bad in ("", "lf", "lf-abc", "sk-abc-def", "lf--secret", "lf-abc-"):
        assert parse_key(bad) is None
    assert parse_key("lf-abc-se-cr-et") == ("abc", "se-cr-et")


def test_create_validates(store: KeyStore) -> None:
    with pytest.raises(InvalidRequestError, match="name"):
        store.create("  ")
    with pytest.raises(InvalidRequestError, match="rpm"):
        store.create("x", rpm=0)
    with pytest.raises(InvalidRequestError, match="models"):
        store.create("x", models=[" "])


def test_revoke_bumps_version_and_is_idempotent(store: KeyStore) -> None:
    _, record = store.create("bob")
    v0 = store.version()
    revoked = store.revoke(record.id)
    assert revoked.revoked_at is not None and not revoked.active
    assert store.version() == v0 + 1
    store.revoke(record.id)
    assert store.version() == v0 + 1
    assert store.keys(include_revoked=False) == []
    assert [k.id for k in store.keys()] == [record.id]
    with pytest.raises(NotFoundError):
        store.revoke("nope")


def test_usage_upserts_per_key_and_day(store: KeyStore) -> None:
    store.add_usage([UsageRow("a", "2026-11-01", 1, 10, 5), UsageRow("b", "2026-11-01", 2, 1, 1)])
    store.add_usage([UsageRow("a", "2026-11-01", 1, 3, 2), UsageRow("a", "2026-11-02", 1, 7, 7)])
    rows = {(r.key_id, r.day): r for r in store.usage()}
    assert rows[("a", "2026-11-01")] == UsageRow("a", "2026-11-01", 2, 13, 7)
    assert [r.day for r in store.usage(key_id="a", since="2026-11-02")] == ["2026-11-02"]
    assert [r.key_id for r in store.usage(until="2026-11-01")] == ["a", "b"]


def test_gateway_store_does_not_create_file(tmp_path: Path) -> None:
    path = tmp_path / "none.db"
    lazy = KeyStore(path, create=False)
    assert lazy.keys() == [] and lazy.version() == -1 and not path.exists()
    assert lazy.add_usage([UsageRow("-", "2026-11-01", 1, 1, 1)]) is False
    KeyStore(path).create("later")
    assert [k.name for k in lazy.keys()] == ["later"]  # the file appeared: picked up


async def test_authenticator_verifies_and_caches(store: KeyStore) -> None:
    full, record = store.create("alice")
    backend = SQLiteBackend(store.path, create=False)
    await backend.open()
    auth = Authenticator(backend, open_allowed=True)
    with pytest.raises(OverloadedError):  # nothing loaded yet: closed, never open
        auth.authenticate(full)
    assert not auth.open
    await auth.reload()
    assert not auth.open
    assert auth.authenticate(full).id == record.id
    key_id, secret = parse_key(full)  # type: ignore[misc]
    for bad in (None, "", "garbage", f"lf-{key_id}-{secret}x", f"lf-000000000000-{secret}"):
        with pytest.raises(AuthenticationError):
            auth.authenticate(bad)
    auth.forget(record.id)
    with pytest.raises(AuthenticationError):
        auth.authenticate(full)
    await backend.close()


async def test_revocation_from_another_process_applies_within_refresh(tmp_path: Path) -> None:
    path = tmp_path / "k.db"
    cli_store = KeyStore(path)
    full, record = cli_store.create("alice")
    backend = SQLiteBackend(path, create=False)
    await backend.open()
    auth = Authenticator(backend, open_allowed=False, refresh_interval=0.1)
    await auth.start()
    try:
        assert auth.authenticate(full).id == record.id
        cli_store.revoke(record.id)  # a second connection: what `forge-gateway keys revoke` does
        for _ in range(50):
            await asyncio.sleep(0.05)
            if auth.active_keys == 0:
                break
        with pytest.raises(AuthenticationError):
            auth.authenticate(full)
        assert not auth.open  # not loopback/allow_open: revoking the last key never opens it
    finally:
        await auth.stop()
        await backend.close()
        cli_store.close()


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.com")


async def test_open_listen_rule(tmp_path: Path) -> None:
    db = tmp_path / "k.db"
    base = {"model": "m", "auth": {"db_path": str(db)}}
    public = load_config(overrides={**base, "host": "0.0.0.0"}, environ={})
    store = SQLiteBackend(db, create=False)
    await store.open()
    with pytest.raises(ConfigurationError, match="--allow-open"):
        await check_open_listen(public, store)
    await check_open_listen(load_config(overrides=base, environ={}), store)
    allow = load_config(
        overrides={**base, "host": "0.0.0.0", "auth": {"db_path": str(db), "allow_open": True}}, environ={}
    )
    await check_open_listen(allow, store)
    KeyStore(db).create("k")
    await check_open_listen(public, store)  # the file appeared: picked up
    await store.close()


def test_cli_keys_lifecycle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "cli.db")
    assert (
        main(["keys", "--db", db, "create", "--name", "alice", "--rpm", "5", "--experts", "math,code"]) == 0
    )
    out, err = capsys.readouterr()
    full = out.strip()
    assert parse_key(full) is not None and "cannot be shown again" in err
    assert main(["keys", "--db", db, "create", "--name", "ops", "--admin", "--json"]) == 0
    admin = json.loads(capsys.readouterr().out)
    assert admin["admin"] is True and parse_key(admin["key"]) is not None
    assert main(["keys", "--db", db, "list"]) == 0
    listing = capsys.readouterr().out
    assert "alice" in listing and "code,math" in listing and full not in listing
    key_id = parse_key(full)[0]  # type: ignore[index]
    assert main(["keys", "--db", db, "revoke", key_id]) == 0
    assert "revoked" in capsys.readouterr().out
    assert main(["keys", "--db", db, "list", "--json"]) == 0
    assert [k["name"] for k in json.loads(capsys.readouterr().out)] == ["ops"]
    assert main(["keys", "--db", db, "list", "--all", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2
    KeyStore(db).add_usage([UsageRow(key_id, "2026-11-02", 3, 30, 12)])
    assert main(["keys", "--db", db, "usage", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["total_tokens"] == 42
    assert main(["keys", "--db", db, "usage"]) == 0
    assert "alice" in capsys.readouterr().out
    # Hashes only, in the file.
    rows = sqlite3.connect(db).execute("SELECT secret_sha256 FROM api_keys").fetchall()
    assert all(len(r[0]) == 64 for r in rows)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["revoke", "nope"], "no API key with id 'nope'"),
        (["create", "--name", "x", "--tpm", "0"], "tpm must be between 1 and"),
    ],
)
def test_cli_keys_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    KeyStore(tmp_path / "e.db").close()
    assert main(["keys", "--db", str(tmp_path / "e.db"), *argv]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("forge-gateway: error:") and message in err and "\n" not in err
