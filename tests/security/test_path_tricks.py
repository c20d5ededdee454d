"""Attacks on the path: every spelling of an admin route reaches the admin rule, never the handler.

The gateway once decided "admin or not" on the raw path while Litestar routed on a normalised one:
``POST //admin/keys`` with a non-admin key created an admin key. Each case below sends the
request target byte for byte and asserts the refusal, and that no key was created.
"""

from __future__ import annotations

import json

import pytest

from tests.security.conftest import Gateway

pytestmark = pytest.mark.asyncio(loop_scope="session")

NEW_ADMIN_KEY = json.dumps({"name": "pwned", "admin": True}).encode()
JSON = {"content-type": "application/json"}

ADMIN_KEYS_SPELLINGS = [
    "/admin/keys",
    "//admin/keys",
    "///admin/keys",
    "/./admin/keys",
    "/admin//keys",
    "/admin/./keys",
    "/v1/../admin/keys",
    "/%61dmin/keys",
    "/admin/%6beys",
    "/admin/keys/",
    "//admin//keys//",
    "/ADMIN/keys",
    "/Admin/Keys",
    "/admin/keys?admin=1",
    "/admin/keys#frag",
    "/admin%2Fkeys",
]


@pytest.mark.parametrize("target", ADMIN_KEYS_SPELLINGS)
async def test_user_key_cannot_create_keys_through_any_spelling(gw: Gateway, target: str) -> None:
    before = gw.key_count()
    resp = await gw.request("POST", target, "user", body=NEW_ADMIN_KEY, headers=JSON)
    assert resp.status in (400, 403, 404, 405), (resp.status, resp.body)
    assert gw.key_count() == before


@pytest.mark.parametrize("target", ADMIN_KEYS_SPELLINGS)
async def test_no_key_gets_401_on_any_spelling(gw: Gateway, target: str) -> None:
    resp = await gw.request("GET", target)
    assert resp.status in (400, 401), (resp.status, resp.body)


@pytest.mark.parametrize("target", ["/admin/keys", "//admin/keys", "/admin/keys/", "/admin//keys"])
async def test_spellings_that_route_are_the_same_route_for_an_admin(gw: Gateway, target: str) -> None:
    # Same route, same admission: the admin may, the user may not.
    assert (await gw.request("GET", target, "admin")).status == 200
    assert (await gw.request("GET", target, "user")).status == 403


# Under ``uvicorn --root-path /gw`` the ASGI path is ``/gw/admin/keys``: no longer "starts with /admin".
@pytest.mark.parametrize(
    "target", ["/admin/keys", "//admin/keys", "/admin/keys/", "/gw/admin/keys", "/./admin/keys"]
)
async def test_uvicorn_root_path_does_not_hide_admin_routes(gw: Gateway, target: str) -> None:
    before = gw.key_count()
    resp = await gw.request("POST", target, "user", port=gw.root_port, body=NEW_ADMIN_KEY, headers=JSON)
    assert resp.status in (403, 404), (resp.status, resp.body)
    assert gw.key_count() == before


async def test_root_path_admin_still_works_for_admins(gw: Gateway) -> None:
    resp = await gw.request("GET", "/admin/keys", "admin", port=gw.root_port)
    assert resp.status == 200, resp.body


@pytest.mark.parametrize(
    "target",
    ["/admin/experts", "//admin/experts", "/admin/experts/", "/admin/adapters/x/load", "//admin/usage"],
)
async def test_other_admin_routes_refuse_user_keys(gw: Gateway, target: str) -> None:
    method = "GET" if "usage" in target else "POST"
    body = json.dumps({"name": "evil", "endpoint": "http://127.0.0.1:1/v1"}).encode()
    resp = await gw.request(method, target, "user", body=body if method == "POST" else b"", headers=JSON)
    assert resp.status == 403, (resp.status, resp.body)


@pytest.mark.parametrize("target", ["/metrics", "//metrics", "/metrics/", "root:/metrics"])
async def test_metrics_need_an_admin_key_on_every_spelling(gw: Gateway, target: str) -> None:
    port = gw.root_port if target.startswith("root:") else gw.port
    target = target.removeprefix("root:")
    assert (await gw.request("GET", target, "user", port=port)).status == 403
    assert (await gw.request("GET", target, port=port)).status == 401
    assert (await gw.request("GET", target, "admin", port=port)).status == 200


@pytest.mark.parametrize(
    "target", ["/v1/chat/completions", "/v1/chat/completions/", "//v1//chat/completions"]
)
async def test_generation_twins_get_the_same_allow_list_on_the_fast_path(gw: Gateway, target: str) -> None:
    body = json.dumps({"model": "legal", "messages": [{"role": "user", "content": "hi"}]}).encode()
    allowed = await gw.request("POST", target, "legal_only", body=body, headers=JSON)
    assert allowed.status == 200 and allowed.headers["x-forge-expert"] == "legal", allowed.body
    refused = await gw.request("POST", target, "general_only", body=body, headers=JSON)
    assert refused.status == 403, refused.body
    assert (await gw.request("POST", target, body=body, headers=JSON)).status == 401


@pytest.mark.parametrize("target", ["/v1/completions/", "/generate/", "/v1/models/"])
async def test_other_twins_need_a_key_too(gw: Gateway, target: str) -> None:
    method = "GET" if "models" in target else "POST"
    resp = await gw.request(method, target, body=b"{}" if method == "POST" else b"", headers=JSON)
    assert resp.status == 401, resp.body


async def test_health_is_public_on_its_twins(gw: Gateway) -> None:
    for target in ("/health", "/health/", "//health"):
        resp = await gw.request("GET", target)
        assert resp.status == 200, (target, resp.body)
