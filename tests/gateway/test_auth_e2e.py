"""API keys end to end: a real `forge-gateway serve` (transformers engine, tiny model).

The matrix: no key, wrong key, revoked key, key for another model, non-admin on admin routes
answer 401/403 in the OpenAI shape, and the official ``openai`` client raises the matching
errors. Then: revocation by the CLI reaches the running server, and neither keys nor prompt
text appear in its logs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from forge_gateway.security import KeyStore
from tests.support import GatewayProcess

PROMPT_CANARY = "zebra-canary-prompt-7781 please answer"


@dataclass
class Server:
    gw: GatewayProcess
    db: Path
    keys: dict[str, str]
    log: Path

    def url(self, path: str) -> str:
        return self.gw.base_url + path


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("auth-e2e")
    db = tmp / "keys.db"
    store = KeyStore(db)
    keys = {
        "user": store.create("user")[0],
        "admin": store.create("ops", admin=True)[0],
        "revoked": store.create("gone")[0],
        "math_only": store.create("math-only", models=["mathexpert"])[0],
        "to_revoke_live": store.create("live-revoke")[0],
    }
    store.revoke(keys["revoked"].split("-")[1])
    store.close()
    log = tmp / "gateway.log"
    args = ["--model", str(tiny_model_dir), "--served-model-name", "tiny", "--engine", "transformers"]
    args += ["--classifier", "keyword"]
    env = {"FORGE_AUTH_DB_PATH": str(db), "FORGE_AUTH_REFRESH_INTERVAL": "0.2"}
    with GatewayProcess(args, env=env, log_path=log) as gw:
        yield Server(gw, db, keys, log)


def _chat_body(model: str = "tiny") -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": PROMPT_CANARY}], "max_tokens": 3}


def _assert_openai_error(resp: httpx.Response, status: int, error_type: str) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == error_type and body["error"]["message"]


@pytest.mark.parametrize(
    ("headers", "status", "error_type"),
    [
        ({}, 401, "authentication_error"),
        ({"Authorization": "Bearer lf-000000000000-wrongwrongwrong"}, 401, "authentication_error"),
        ({"Authorization": "Bearer not-even-a-key"}, 401, "authentication_error"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, 401, "authentication_error"),
        ({"X-API-Key": "lf-000000000000-wrongwrongwrong"}, 401, "authentication_error"),
        ("revoked", 401, "authentication_error"),
        ("math_only", 403, "permission_error"),
    ],
)
def test_chat_auth_matrix(
    server: Server, headers: dict[str, str] | str, status: int, error_type: str
) -> None:
    if isinstance(headers, str):
        headers = {"Authorization": f"Bearer {server.keys[headers]}"}
    resp = httpx.post(server.url("/v1/chat/completions"), json=_chat_body(), headers=headers, timeout=60)
    _assert_openai_error(resp, status, error_type)
    if status == 401:
        assert resp.headers["www-authenticate"].startswith("Bearer")


def test_valid_keys_both_header_styles(server: Server) -> None:
    for headers in ({"Authorization": f"Bearer {server.keys['user']}"}, {"X-API-Key": server.keys["user"]}):
        resp = httpx.post(server.url("/v1/chat/completions"), json=_chat_body(), headers=headers, timeout=60)
        assert resp.status_code == 200, resp.text
        assert resp.json()["usage"]["completion_tokens"] >= 1


def test_health_is_open_everything_else_is_not(server: Server) -> None:
    assert httpx.get(server.url("/health")).status_code == 200
    for path in ("/v1/models", "/experts", "/openapi/openapi.json", "/metrics", "/admin/keys", "/nope"):
        _assert_openai_error(httpx.get(server.url(path)), 401, "authentication_error")


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/admin/keys"), ("GET", "/admin/usage"), ("GET", "/metrics"), ("POST", "/admin/experts")],
)
def test_admin_routes_need_admin_key(server: Server, method: str, path: str) -> None:
    user = {"Authorization": f"Bearer {server.keys['user']}"}
    _assert_openai_error(
        httpx.request(method, server.url(path), headers=user, json={}), 403, "permission_error"
    )
    admin = {"Authorization": f"Bearer {server.keys['admin']}"}
    resp = httpx.request(method, server.url(path), headers=admin, json={})
    assert resp.status_code not in (401, 403), resp.text


def test_openai_client_raises_typed_errors(server: Server) -> None:
    base = server.url("/v1")
    cases = [
        (
            openai.OpenAI(base_url=base, api_key="lf-000000000000-wrong", max_retries=0),
            "tiny",
            openai.AuthenticationError,
        ),
        (
            openai.OpenAI(base_url=base, api_key=server.keys["revoked"], max_retries=0),
            "tiny",
            openai.AuthenticationError,
        ),
        (
            openai.OpenAI(base_url=base, api_key=server.keys["math_only"], max_retries=0),
            "tiny",
            openai.PermissionDeniedError,
        ),
    ]
    for client, model, error in cases:
        with pytest.raises(error) as info:
            client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
        assert info.value.body["type"] in ("authentication_error", "permission_error")  # type: ignore[index]
    ok = openai.OpenAI(base_url=base, api_key=server.keys["user"], max_retries=0)
    resp = ok.chat.completions.with_raw_response.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert resp.headers["x-request-id"] and resp.parse().choices[0].message.role == "assistant"


def test_admin_key_api_create_use_revoke(server: Server) -> None:
    admin = {"Authorization": f"Bearer {server.keys['admin']}"}
    created = httpx.post(server.url("/admin/keys"), json={"name": "made-by-api", "rpm": 50}, headers=admin)
    assert created.status_code == 201, created.text
    new_key = created.json()["key"]
    headers = {"Authorization": f"Bearer {new_key}"}
    assert httpx.get(server.url("/v1/models"), headers=headers).status_code == 200
    listing = httpx.get(server.url("/admin/keys"), headers=admin).json()["data"]
    assert "made-by-api" in [k["name"] for k in listing] and new_key not in json.dumps(listing)
    bad = httpx.post(server.url("/admin/keys"), json={"name": "x", "rpm": 0}, headers=admin)
    _assert_openai_error(bad, 400, "invalid_request_error")
    revoked = httpx.delete(server.url(f"/admin/keys/{created.json()['id']}"), headers=admin)
    assert revoked.status_code == 200 and revoked.json()["active"] is False
    # This process revoked it: refused at once, no refresh wait.
    _assert_openai_error(httpx.get(server.url("/v1/models"), headers=headers), 401, "authentication_error")
    _assert_openai_error(
        httpx.delete(server.url("/admin/keys/nope"), headers=admin), 404, "invalid_request_error"
    )


def test_cli_revocation_reaches_running_server(server: Server) -> None:
    key = server.keys["to_revoke_live"]
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.get(server.url("/v1/models"), headers=headers).status_code == 200
    subprocess.run(
        [
            sys.executable,
            "-m",
            "forge_gateway.cli",
            "keys",
            "--db",
            str(server.db),
            "revoke",
            key.split("-")[1],
        ],
        check=True,
        capture_output=True,
    )
    revoked_at = time.monotonic()
    while httpx.get(server.url("/v1/models"), headers=headers).status_code == 200:
        assert time.monotonic() - revoked_at < 3.0, "revocation not applied within 3 s"
        time.sleep(0.05)
    _assert_openai_error(httpx.get(server.url("/v1/models"), headers=headers), 401, "authentication_error")


def test_usage_ledger_via_admin_api(server: Server) -> None:
    user = {"Authorization": f"Bearer {server.keys['user']}"}
    admin = {"Authorization": f"Bearer {server.keys['admin']}"}
    key_id = server.keys["user"].split("-")[1]

    def totals() -> tuple[int, int]:
        rows = httpx.get(server.url("/admin/usage"), params={"key_id": key_id}, headers=admin).json()["data"]
        return sum(r["requests"] for r in rows), sum(r["total_tokens"] for r in rows)

    before = totals()
    resp = httpx.post(server.url("/v1/chat/completions"), json=_chat_body(), headers=user, timeout=60).json()
    after = totals()
    assert after[0] == before[0] + 1 and after[1] == before[1] + resp["usage"]["total_tokens"]
    _assert_openai_error(
        httpx.get(server.url("/admin/usage"), params={"since": "yesterday"}, headers=admin),
        400,
        "invalid_request_error",
    )


def test_request_id_echoed_and_logs_hold_no_secrets(server: Server) -> None:
    headers = {"Authorization": f"Bearer {server.keys['user']}", "x-request-id": "trace-abc-123"}
    resp = httpx.post(server.url("/v1/chat/completions"), json=_chat_body(), headers=headers, timeout=60)
    assert resp.headers["x-request-id"] == "trace-abc-123"
    generated = httpx.get(server.url("/health")).headers["x-request-id"]
    assert len(generated) == 32
    bad_id = httpx.get(server.url("/health"), headers={"x-request-id": "evil\tid"}).headers["x-request-id"]
    assert bad_id != "evil\tid"
    time.sleep(0.3)
    text = server.log.read_text()
    for key in server.keys.values():
        assert key not in text and key.split("-", 2)[2] not in text
    assert PROMPT_CANARY not in text and "zebra-canary" not in text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    access = [
        entry
        for entry in lines
        if entry.get("event") == "request" and entry.get("request_id") == "trace-abc-123"
    ]
    assert len(access) == 1
    entry = access[0]
    assert entry["status"] == 200 and entry["path"] == "/v1/chat/completions" and entry["method"] == "POST"
    assert entry["key_name"] == "user" and entry["key_id"] == server.keys["user"].split("-")[1]
    assert entry["expert"] == "tiny" and entry["latency_ms"] > 0 and entry["level"] == "info"


def test_serve_refuses_public_host_without_keys(tmp_path: Path, tiny_model_dir: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "forge_gateway.cli",
        "serve",
        "--model",
        str(tiny_model_dir),
        "--host",
        "0.0.0.0",
    ]
    env_db = {"FORGE_AUTH_DB_PATH": str(tmp_path / "empty.db")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={**os.environ, **env_db})
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert err.startswith("forge-gateway: error: no API keys") and "--allow-open" in err and "\n" not in err
    assert "Traceback" not in proc.stderr
