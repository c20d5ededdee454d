"""PostgreSQL key store and usage ledger: a real server started here, two real gateway processes.

Covers what replicas on different hosts rely on: a key created on one gateway works on the other,
a revocation on one is refused by the other within the refresh interval, usage from both adds up,
and a database outage fails closed (503 ``key_store_unavailable``) and recovers without a restart.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import structlog

from forge_gateway.security.keys import UsageRow, new_key
from forge_gateway.security.keys_pg import SCHEMA_VERSION, PostgresKeyStore
from forge_gateway.security.ledger import UsageLedger
from forge_sdk.errors import ConfigurationError, InvalidRequestError, NotFoundError, OverloadedError
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


async def _opened(url: str, *, timeout: float = 5.0) -> PostgresKeyStore:
    store = PostgresKeyStore(url, timeout=timeout)
    await store.open()
    return store


async def test_migrations_run_once_under_concurrency_and_refuse_a_newer_schema(pg: PostgresServer) -> None:
    url = _database(pg, "forge_migrations")
    stores = [await _opened(url, timeout=5) for _ in range(4)]  # four pools: four replicas starting
    try:
        await asyncio.gather(*(store.version() for store in stores))
        assert [await store.schema_version() for store in stores] == [SCHEMA_VERSION] * 4
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            rows = conn.execute("SELECT version FROM forge_schema_migrations").fetchall()
            assert sorted(r[0] for r in rows) == list(range(1, SCHEMA_VERSION + 1))  # each once
            conn.execute("INSERT INTO forge_schema_migrations (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    finally:
        for store in stores:
            await store.close()
    newer = await _opened(url, timeout=5)
    try:
        with pytest.raises(ConfigurationError, match="newer than this gateway"):
            await newer.keys()
    finally:
        await newer.close()


async def test_store_behaviour_and_hostile_values(pg: PostgresServer) -> None:
    url = _database(pg, "forge_store")
    a, b = await _opened(url), await _opened(url)
    try:
        v0 = await b.version()
        full, record = new_key("alice", rpm=10, models=["math", "general"])
        await a.add_key(record)
        assert await b.version() == v0 + 1  # replicas notice through the counter
        (seen,) = await b.keys()
        assert seen == record and seen.secret_sha256 != full  # only the hash is stored
        assert (await b.revoke(record.id)).revoked_at is not None
        assert await a.keys(include_revoked=False) == []
        for bad_id in ("no-such-key", "nul\x00id"):
            with pytest.raises(NotFoundError):
                await a.revoke(bad_id)
        with pytest.raises(InvalidRequestError):
            await a.add_key(new_key("nul\x00name")[1])
        assert await a.usage(key_id="x\x00'; DROP TABLE forge_usage; --") == []

        async def flush(store: PostgresKeyStore) -> None:
            for _ in range(25):
                await store.add_usage(
                    [UsageRow("k1", "2026-12-01", 1, 10, 5), UsageRow("k2", "2026-12-01", 2, 1, 1)]
                )

        await asyncio.gather(*(flush(s) for s in (a, b, a, b)))  # concurrent upserts, two pools
        rows = {r.key_id: r for r in await a.usage(since="2026-12-01", until="2026-12-01")}
        assert (rows["k1"].requests, rows["k1"].prompt_tokens, rows["k1"].completion_tokens) == (
            100,
            1000,
            500,
        )
        assert (rows["k2"].requests, rows["k2"].prompt_tokens) == (200, 100)
        for store in (a, b, a):  # one batch, written by three attempts: added once
            await store.add_usage([UsageRow("k3", "2026-12-01", 1, 2, 3)], batch_id="batch-1")
        assert [(r.requests, r.prompt_tokens) for r in await b.usage(key_id="k3")] == [(1, 2)]
    finally:
        await a.close()
        await b.close()


async def test_a_frozen_server_fails_calls_in_time_without_blocking_the_loop(pg: PostgresServer) -> None:
    url = _database(pg, "forge_frozen")
    store = await _opened(url, timeout=1)
    await store.version()  # a pooled connection; then the server freezes under it
    gaps: list[float] = []

    async def ticker() -> None:  # what every request handler needs: a loop that keeps turning
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.02)
            gaps.append(time.monotonic() - last)
            last = time.monotonic()

    tick = asyncio.create_task(ticker())
    pg.pause()
    try:
        started = time.monotonic()
        with pytest.raises(OverloadedError, match="no answer within 1 s") as err:
            await store.version()
        elapsed = time.monotonic() - started
        with pytest.raises(OverloadedError):  # later calls too: the pool cannot reconnect either
            await store.keys()
        closing = time.monotonic()
        await store.close()
        closed_in = time.monotonic() - closing
    finally:
        pg.resume()
        tick.cancel()
        await store.close()  # idempotent; here for a failed assertion above
    # Hang detectors, not benchmarks: a blocking driver stalls the loop for the whole wait, and
    # psycopg's own query cancellation waits up to 10 s for a server that never answers.
    assert elapsed < 3 and closed_in < 3, (elapsed, closed_in)
    assert max(gaps) < 0.5, max(gaps)
    assert err.value.code == "key_store_unavailable" and pg.password not in str(err.value)
    store = await _opened(url, timeout=5)
    try:
        assert await store.version() == 0  # the server answers again: so does a store
    finally:
        await store.close()


async def test_a_flush_whose_commit_answer_is_lost_counts_once(pg: PostgresServer) -> None:
    import psycopg

    url = _database(pg, "forge_exactly_once")
    store = await _opened(url, timeout=1)
    try:
        await store.version()  # tables
        ledger = UsageLedger(store, flush_interval=3600)
        ledger.record("k", 10, 5)
        with psycopg.connect(url, autocommit=True) as admin, psycopg.connect(url) as holder:
            # Fault injection: a commit-time trigger waiting on a lock held here, so the store's COMMIT
            # reaches the server and its answer comes only after the client has given up.
            admin.execute(
                "CREATE FUNCTION stall() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN PERFORM pg_advisory_xact_lock(4242); RETURN NULL; END $$"
            )
            admin.execute(
                "CREATE CONSTRAINT TRIGGER stall AFTER INSERT ON forge_usage_batches "
                "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION stall()"
            )
            holder.execute("SELECT pg_advisory_xact_lock(4242)")
            with structlog.testing.capture_logs() as logs:
                await ledger.flush()  # 1 s: "no answer", but the COMMIT is on the server, waiting
            assert [e["event"] for e in logs] == ["usage_flush_failed"]
            holder.commit()  # the lock goes: the server commits the batch nobody heard about
            admin.execute("DROP TRIGGER stall ON forge_usage_batches")  # waits for that commit
            row = admin.execute("SELECT requests FROM forge_usage WHERE key_id = 'k'").fetchone()
            assert row == (1,)  # written, though the flush failed
        await ledger.flush()  # the retry: the same batch id, so nothing is added twice
        assert [(r.requests, r.prompt_tokens) for r in await store.usage(key_id="k")] == [(1, 10)]
        ledger.record("k", 1, 1)
        await ledger.stop()  # later batches carry new ids and add up as usual
        assert [(r.requests, r.prompt_tokens) for r in await store.usage(key_id="k")] == [(2, 11)]
    finally:
        await store.close()


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


@contextmanager
def _replica_pair(
    pg: PostgresServer, database: str, model_dir: Path, tmp: Path
) -> Iterator[tuple[GatewayProcess, GatewayProcess, str]]:
    """Two gateways sharing a fresh PostgreSQL database, and an admin key of it."""
    url = _database(pg, database)
    admin = pg.create_key(url, "ops", admin=True)
    env = {
        "FORGE_AUTH_DATABASE_URL": url,
        "FORGE_AUTH_REFRESH_INTERVAL": str(REFRESH),
        "FORGE_AUTH_USAGE_FLUSH_INTERVAL": "0.2",
        "FORGE_AUTH_DATABASE_TIMEOUT": "1",
    }
    args = ["--model", str(model_dir), "--served-model-name", "tiny", "--engine", "transformers"]
    args += ["--classifier", "keyword"]
    with (
        GatewayProcess(args, env=env, log_path=tmp / "a.log") as gw_a,
        GatewayProcess(args, env=env, log_path=tmp / "b.log") as gw_b,
    ):
        yield gw_a, gw_b, admin


@pytest.fixture(scope="module")
def replicas(
    pg: PostgresServer, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, GatewayProcess, str]]:
    with _replica_pair(pg, "forge_replicas", tiny_model_dir, tmp_path_factory.mktemp("pg-replicas")) as pair:
        yield pair


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


def test_frozen_database_never_stalls_a_gateway(
    pg: PostgresServer, replicas: tuple[GatewayProcess, GatewayProcess, str]
) -> None:
    """A frozen server (SIGSTOP: connections stay open, nothing answers) while both replicas
    refresh keys every 0.2 s and flush usage: they keep answering, fail closed once a refresh
    overruns ``auth.database_timeout`` (1 s here), and recover when it answers again."""
    gw_a, gw_b, admin = replicas
    for gw in (gw_a, gw_b):
        _eventually(lambda gw=gw: _chat(gw, admin).status_code == 200, timeout=30)
    pg.pause()
    try:
        started, refused = time.monotonic(), None
        while time.monotonic() - started < 4:
            # timeout=2: a gateway whose event loop waited on the database would fail here
            assert httpx.get(gw_a.base_url + "/health", timeout=2).status_code == 200
            resp = httpx.post(
                gw_b.base_url + "/v1/chat/completions",
                json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
                headers={"Authorization": f"Bearer {admin}"},
                timeout=2,
            )
            assert resp.status_code in (200, 503)  # served from memory until a refresh overruns
            if resp.status_code == 503 and refused is None:
                refused = resp
    finally:
        pg.resume()
    assert refused is not None, "a frozen key store never failed the gateway closed"
    error = refused.json()["error"]
    assert error["code"] == "key_store_unavailable" and "no answer within 1 s" in error["message"]
    assert refused.headers["retry-after"] == "1" and pg.password not in refused.text
    for gw in (gw_a, gw_b):
        _eventually(lambda gw=gw: _chat(gw, admin).status_code == 200, timeout=30)


def test_replicas_stop_cleanly_and_release_their_connections(
    pg: PostgresServer, tiny_model_dir: Path, tmp_path: Path
) -> None:
    import psycopg

    # Its own pair on its own database: stopping the module's shared replicas would leave other
    # tests without them, and their connections would be counted here.
    def connections() -> int:
        with psycopg.connect(pg.url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE application_name = 'forge-gateway' AND datname = 'forge_replicas_stop'"
            ).fetchone()
            return int(row[0]) if row else 0

    with _replica_pair(pg, "forge_replicas_stop", tiny_model_dir, tmp_path) as replicas:
        assert 0 < connections() <= 8  # two pools of at most auth.database_pool_size (4)
        for gw in replicas[:2]:
            assert gw.stop() == 0  # type: ignore[union-attr]
            log = gw.log_text()  # type: ignore[union-attr]
            for bad in ("Traceback", "Task was destroyed", "Event loop is closed", "never awaited"):
                assert bad not in log, log[-3000:]
        _eventually(lambda: connections() == 0, timeout=10)
