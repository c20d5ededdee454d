"""Abuses of the admin API by someone who holds an admin key (or reaches a keyless dev gateway).

An admin may register experts, but must not be able to turn the gateway into a tool against its
own host: no environment secret sent to an endpoint of their choosing, no cloud-metadata SSRF, no
query string that rewrites the upstream path, no header injection through expert names, and no
non-JSON bodies (the CSRF vector of HTML forms).
"""

from __future__ import annotations

import json
import os

import pytest

from tests.security.conftest import Gateway

pytestmark = pytest.mark.asyncio(loop_scope="session")
JSON = {"content-type": "application/json"}


async def _register(
    gw: Gateway, expert: dict[str, object], headers: dict[str, str] | None = None
) -> tuple[int, dict]:
    resp = await gw.request(
        "POST", "/admin/experts", "admin", body=json.dumps(expert).encode(), headers=headers or JSON
    )
    return resp.status, resp.json() if resp.body else {}


@pytest.mark.parametrize(
    "env", ["AWS_SECRET_ACCESS_KEY", "HOME", "FORGE_AUTH_DB_PATH", "forge_upstream_key_x"]
)
async def test_api_key_env_outside_the_prefix_is_refused(gw: Gateway, env: str) -> None:
    status, body = await _register(gw, {"name": "exfil", "endpoint": gw.upstream.url, "api_key_env": env})
    assert status == 400, body
    assert body["error"]["param"] == "api_key_env" and "FORGE_UPSTREAM_KEY_" in body["error"]["message"]


async def test_api_key_env_with_the_prefix_is_sent_upstream(gw: Gateway) -> None:
    os.environ["FORGE_UPSTREAM_KEY_SECURITY_TEST"] = "sk-fine"
    status, body = await _register(
        gw, {"name": "keyed", "endpoint": gw.upstream.url, "api_key_env": "FORGE_UPSTREAM_KEY_SECURITY_TEST"}
    )
    assert status == 201, body
    chat = json.dumps({"model": "keyed", "messages": [{"role": "user", "content": "hi"}]}).encode()
    resp = await gw.request("POST", "/v1/chat/completions", "admin", body=chat, headers=JSON)
    assert resp.status == 200, resp.body
    assert gw.upstream.requests[-1]["headers"]["authorization"] == "Bearer sk-fine"


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://169.254.169.254/latest/meta-data",
        "http://169.254.170.2/v1",
        "http://[fd00:ec2::254]/v1",
        "http://[fe80::1]/v1",
        "http://[::ffff:169.254.169.254]/v1",
        "ftp://127.0.0.1/v1",
        "file:///etc/passwd",
        "http://user:pass@127.0.0.1/v1",
        "http:///v1",
        "http://127.0.0.1:99999/v1",
        "http://127.0.0.1/v1#frag",
    ],
)
async def test_dangerous_endpoints_are_refused(gw: Gateway, endpoint: str) -> None:
    status, body = await _register(gw, {"name": "ssrf", "endpoint": endpoint})
    assert status == 400, body
    assert body["error"]["param"] == "endpoint"


async def test_query_string_in_endpoint_cannot_swallow_the_path(gw: Gateway) -> None:
    status, body = await _register(gw, {"name": "tenant", "endpoint": gw.upstream.url + "?tenant=a"})
    assert status == 201, body
    chat = json.dumps({"model": "tenant", "messages": [{"role": "user", "content": "hi"}]}).encode()
    resp = await gw.request("POST", "/v1/chat/completions", "admin", body=chat, headers=JSON)
    assert resp.status == 200, resp.body
    assert gw.upstream.requests[-1]["path"] == "/v1/chat/completions?tenant=a"


@pytest.mark.parametrize("name", ["evil\n", "evil\r\nx-injected: 1", "evil\nx", " evil", "e" * 65, "../etc"])
async def test_expert_names_are_matched_in_full(gw: Gateway, name: str) -> None:
    status, body = await _register(gw, {"name": name, "endpoint": gw.upstream.url})
    assert status == 400, body


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None],
)
async def test_admin_bodies_must_be_json(gw: Gateway, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    body = json.dumps({"name": "formpost", "admin": True}).encode()
    before = gw.key_count()
    resp = await gw.request("POST", "/admin/keys", "admin", body=body, headers=headers)
    assert resp.status == 415, resp.body
    assert resp.json()["error"]["code"] == "unsupported_media_type"
    assert gw.key_count() == before
