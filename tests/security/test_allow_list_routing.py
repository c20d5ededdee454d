"""``model: "auto"`` under a key limited to some experts: the router keeps to the key's list.

A choice outside the list goes to the default expert (``general``) when the key may use it, and
says so in ``x-forge-route-reason``; a key that may use neither the choice nor the default is
refused with 403, never served by an expert it may not use.
"""

from __future__ import annotations

import json

import pytest

from tests.security.conftest import Gateway

pytestmark = pytest.mark.asyncio(loop_scope="session")

JSON = {"content-type": "application/json"}
MATH = "Solve for x: 3x + 7 = 22, then compute the derivative of x^3 + 2x."


def _chat(model: str = "auto") -> bytes:
    return json.dumps(
        {"model": model, "messages": [{"role": "user", "content": MATH}], "max_tokens": 2}
    ).encode()


async def test_unlimited_key_gets_the_routers_choice(gw: Gateway) -> None:
    resp = await gw.request("POST", "/v1/chat/completions", "user", body=_chat(), headers=JSON)
    assert resp.status == 200, resp.body
    chosen = resp.headers["x-forge-expert"]
    assert chosen != "general" and "not-allowed" not in resp.headers["x-forge-route-reason"]


async def test_limited_key_is_routed_to_the_default_expert_it_may_use(gw: Gateway) -> None:
    resp = await gw.request("POST", "/v1/chat/completions", "general_only", body=_chat(), headers=JSON)
    assert resp.status == 200, resp.body
    assert resp.headers["x-forge-expert"] == "general"
    assert ":not-allowed:" in resp.headers["x-forge-route-reason"]
    route = await gw.request("POST", "/route?query=" + MATH.replace(" ", "+"), "general_only")
    assert route.status == 200 and route.json()["expert"] == "general"


async def test_key_that_may_use_neither_is_refused(gw: Gateway) -> None:
    resp = await gw.request("POST", "/v1/chat/completions", "legal_only", body=_chat(), headers=JSON)
    assert resp.status == 403 and resp.json()["error"]["type"] == "permission_error"
    direct = await gw.request(
        "POST", "/v1/chat/completions", "general_only", body=_chat("tiny"), headers=JSON
    )
    assert direct.status == 403  # naming a model outright is still checked as before
