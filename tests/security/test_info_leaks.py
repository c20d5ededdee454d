"""What a caller learns: only what its key may use, and no operator details unless admin.

Endpoints (internal URLs), adapter/model folders, env var names, upstream error strings and the
base model's local path are operator details: a non-admin key or an anonymous caller must not
see them on ``/v1/models``, ``/experts``, ``/route`` or ``/health``.
"""

from __future__ import annotations

import pytest

from tests.security.conftest import Gateway

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_models_lists_only_what_the_key_may_use(gw: Gateway) -> None:
    legal = (await gw.request("GET", "/v1/models", "legal_only")).json()
    assert {m["id"] for m in legal["data"]} == {"legal", "auto"}
    everything = {m["id"] for m in (await gw.request("GET", "/v1/models", "user")).json()["data"]}
    assert {"tiny", "legal", "auto"} <= everything


async def test_models_hide_the_base_model_path_from_non_admins(gw: Gateway, tiny_model_dir: object) -> None:
    body = (await gw.request("GET", "/v1/models", "user")).body
    assert str(tiny_model_dir).encode() not in body
    assert str(tiny_model_dir).encode() in (await gw.request("GET", "/v1/models", "admin")).body


async def test_experts_hide_endpoints_env_names_and_errors(gw: Gateway) -> None:
    user = await gw.request("GET", "/experts", "user")
    assert user.status == 200
    for secret in (gw.upstream.url.encode(), b"endpoint", b"api_key_env", b"last_error", b"adapter_path"):
        assert secret not in user.body, secret
    names = {e["name"] for e in user.json()["experts"]}
    assert "legal" in names
    limited = {e["name"] for e in (await gw.request("GET", "/experts", "legal_only")).json()["experts"]}
    assert limited == {"legal"}
    admin = await gw.request("GET", "/experts", "admin")
    assert gw.upstream.url.encode() in admin.body and b"last_error" in admin.body


async def test_route_hides_the_endpoint_from_non_admins(gw: Gateway) -> None:
    user = await gw.request("POST", "/route?query=review%20my%20contract", "user")
    assert user.status == 200 and user.json()["expert"] == "legal"
    assert user.json()["endpoint"] == "remote"
    admin = await gw.request("POST", "/route?query=review%20my%20contract", "admin")
    assert admin.json()["endpoint"] == gw.upstream.url


async def test_health_says_healthy_and_nothing_more_without_a_key(gw: Gateway) -> None:
    anonymous = await gw.request("GET", "/health")
    assert anonymous.status == 200 and anonymous.json() == {"status": "healthy"}
    assert (await gw.request("GET", "/health", "user")).json() == {"status": "healthy"}
    detailed = (await gw.request("GET", "/health", "admin")).json()
    assert detailed["status"] == "healthy" and "engine" in detailed


async def test_unknown_routes_do_not_reveal_themselves_to_anonymous_callers(gw: Gateway) -> None:
    assert (await gw.request("GET", "/no/such/route")).status == 401
    assert (await gw.request("GET", "/openapi/openapi.json")).status == 401
    assert (await gw.request("GET", "/no/such/route", "user")).status == 404
