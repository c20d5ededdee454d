"""PostgreSQL key store and usage ledger: a real server started here, two real gateway processes.

Covers what replicas on different hosts rely on: a key created on one gateway works on the other,
a revocation on one is refused by the other within the refresh interval, usage from both adds up,
and a database outage fails closed (503 ``key_store_unavailable``) and recovers without a restart.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from forge_gateway.security.keys import UsageRow
from forge_gateway.security.keys_pg import SCHEMA_VERSION, PostgresKeyStore
from forge_sdk.errors import ConfigurationError, InvalidRequestError, NotFoundError
from tests.services import PostgresServer, postgres_bin
from tests.support import GatewayProcess

REFRESH = 0.2


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not installed (apt-get install -y postgresql)")
    with PostgresServer(bindir) as server:
        yield server


def _database(pg: PostgresServer, name: str) -> str:
    """A fresh database on the server; its URL."""
    import psycopg

    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    return pg.url.rsplit("/", 1)[0] + "/" + name


def test_migrations_run_once_under_concurrency_and_refuse_a_newer_schema(pg: PostgresServer) -> None:
    url = _database(pg, "forge_migrations")
    stores = [PostgresKeyStore(url, timeout=5) for _ in range(4)]
    try:
        threads = [threading.Thread(target=store.version) for store in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(store.schema_version() == SCHEMA_VERSION for store in stores)
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            rows = conn.execute("SELECT version FROM forge_schema_migrations").fetchall()
            assert [r[0] for r in rows] == [SCHEMA_VERSION]
            conn.execute("INSERT INTO forge_schema_migrations (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    finally:
        for store in stores:
            store.close()
    newer = PostgresKeyStore(url, timeout=5)
    try:
        with pytest.raises(ConfigurationError, match="newer than this gateway"):
            newer.keys()
    finally:
        newer.close()


def test_store_behaviour_and_hostile_values(pg: PostgresServer) -> None:
    url = _database(pg, "forge_store")
    a, b = PostgresKeyStore(url), PostgresKeyStore(url)
    try:
        v0 = b.version()
        full, record = a.create("alice", rpm=10, models=["math", "general"])
        assert b.version() == v0 + 1  # replicas notice through the counter
        (seen,) = b.keys()
        assert seen == record and seen.secret_sha256 != full  # only the hash is stored
        assert b.revoke(record.id).revoked_at is not None
        assert a.keys(include_revoked=False) == []
        for bad_id in ("no-such-key", "nul\x00id"):
            with pytest.raises(NotFoundError):
                a.revoke(bad_id)
        with pytest.raises(InvalidRequestError):
            a.create("nul\x00name")
        assert a.usage(key_id="x\x00'; DROP TABLE forge_usage; --") == []

        def flush(store: PostgresKeyStore) -> None:
            for _ in range(25):
                store.add_usage(
                    [UsageRow("k1", "2026-12-01", 1, 10, 5), UsageRow("k2", "2026-12-01", 2, 1, 1)]
                )

        threads = [threading.Thread(target=flush, args=(s,)) for s in (a, b, a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rows = {r.key_id: r for r in a.usage(since="2026-12-01", until="2026-12-01")}
        assert (rows["k1"].requests, rows["k1"].prompt_tokens, rows["k1"].completion_tokens) == (
            100,
            1000,
            500,
        )
        assert (rows["k2"].requests, rows["k2"].prompt_tokens) == (200, 100)
    finally:
        a.close()
        b.close()


def _keys_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "forge_gateway.cli", "keys", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_keys_cli_against_postgres(pg: PostgresServer) -> None:
    url = _database(pg, "forge_cli")
    created = _keys_cli("--db", url, "create", "--name", "ci", "--rpm", "7", "--json")
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    env = {"FORGE_AUTH_DATABASE_URL": url}
    listed = _keys_cli("list", "--json", env=env)
    assert [k["id"] for k in json.loads(listed.stdout)] == [key["id"]]
    assert _keys_cli("revoke", key["id"], env=env).returncode == 0
    assert json.loads(_keys_cli("list", "--json", env=env).stdout) == []
    assert json.loads(_keys_cli("list", "--all", "--json", env=env).stdout)[0]["active"] is False
    gone = _keys_cli("revoke", "000000000000", env=env)
    assert gone.returncode == 1 and gone.stderr.startswith("forge-gateway: error:")
    down = _keys_cli("--db", url.replace(str(pg.port), "1"), "list", env={"FORGE_AUTH_DATABASE_TIMEOUT": "1"})
    assert down.returncode == 1 and "unavailable" in down.stderr and "Traceback" not in down.stderr
    assert pg.password not in down.stderr


def _eventually(check: Callable[[], bool], timeout: float = 15.0) -> float:
    """Seconds until ``check()`` held (fails the test after ``timeout``)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - start


@pytest.fixture(scope="module")
def replicas(
    pg: PostgresServer, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, GatewayProcess, str]]:
    url = _database(pg, "forge_replicas")
    store = PostgresKeyStore(url)
    admin = store.create("ops", admin=True)[0]
    store.close()
    tmp = tmp_path_factory.mktemp("pg-replicas")
    env = {
        "FORGE_AUTH_DATABASE_URL": url,
        "FORGE_AUTH_REFRESH_INTERVAL": str(REFRESH),
        "FORGE_AUTH_USAGE_FLUSH_INTERVAL": "0.2",
        "FORGE_AUTH_DATABASE_TIMEOUT": "1",
    }
    args = ["--model", str(tiny_model_dir), "--served-model-name", "tiny", "--engine", "transformers"]
    args += ["--classifier", "keyword"]
    with (
        GatewayProcess(args, env=env, log_path=tmp / "a.log") as gw_a,
        GatewayProcess(args, env=env, log_path=tmp / "b.log") as gw_b,
    ):
        yield gw_a, gw_b, admin


def _chat(gw: GatewayProcess, key: str) -> httpx.Response:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    return httpx.post(
        gw.base_url + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )


def test_two_gateways_share_keys_revocations_and_usage(
    replicas: tuple[GatewayProcess, GatewayProcess, str],
) -> None:
    gw_a, gw_b, admin = replicas
    auth = {"Authorization": f"Bearer {admin}"}
    created = httpx.post(gw_a.base_url + "/admin/keys", json={"name": "shared"}, headers=auth, timeout=10)
    assert created.status_code == 201, created.text
    key, key_id = created.json()["key"], created.json()["id"]
    served = 0

    def ok(gw: GatewayProcess) -> bool:
        nonlocal served
        good = _chat(gw, key).status_code == 200
        served += good
        return good

    assert ok(gw_a)  # the creating replica reloads at once
    _eventually(lambda: ok(gw_b), timeout=10 * REFRESH + 5)
    for gw in (gw_a, gw_b, gw_a, gw_b, gw_b):
        assert ok(gw)

    def requests_logged() -> int:
        resp = httpx.get(gw_b.base_url + "/admin/usage", params={"key_id": key_id}, headers=auth, timeout=10)
        rows = resp.json()["data"]
        return int(rows[0]["requests"]) if rows else 0

    # Both replicas flush every 0.2 s into one row per key and day: it sums what either served.
    _eventually(lambda: requests_logged() == served, timeout=10)
    time.sleep(0.6)
    assert requests_logged() == served == 7

    revoked = httpx.delete(gw_b.base_url + f"/admin/keys/{key_id}", headers=auth, timeout=10)
    assert revoked.status_code == 200
    assert _chat(gw_b, key).status_code == 401  # at once where it was revoked
    delay = _eventually(lambda: _chat(gw_a, key).status_code == 401, timeout=10 * REFRESH + 5)
    assert delay < 10 * REFRESH + 5


def test_database_outage_fails_closed_and_recovers(
    pg: PostgresServer, replicas: tuple[GatewayProcess, GatewayProcess, str]
) -> None:
    gw_a, gw_b, admin = replicas
    assert _chat(gw_a, admin).status_code == 200
    pg.stop()
    try:
        _eventually(lambda: _chat(gw_a, admin).status_code == 503, timeout=15)
        _eventually(lambda: _chat(gw_b, admin).status_code == 503, timeout=15)
        resp = _chat(gw_b, admin)
        error = resp.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["code"] == "key_store_unavailable" and "key store" in error["message"]
        assert resp.headers["retry-after"] == "1"
        assert pg.password not in resp.text
        assert httpx.get(gw_a.base_url + "/health", timeout=10).status_code == 200  # the process lives on
        usage = httpx.get(
            gw_a.base_url + "/admin/usage", headers={"Authorization": f"Bearer {admin}"}, timeout=30
        )
        assert usage.status_code == 503
    finally:
        pg.start()
    for gw in (gw_a, gw_b):
        _eventually(lambda gw=gw: _chat(gw, admin).status_code == 200, timeout=30)
