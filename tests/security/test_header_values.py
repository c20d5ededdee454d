"""Header values built from data are always safe: keywords validated, route headers encoded.

The attack: an expert registered with the keyword ``积分`` made every request routed by it a 500
(the route reason header is encoded as Latin-1); a keyword with ``\\x01`` dropped the connection.
Now a keyword with control characters is refused at registration (400), and every route header
value is percent-encoded outside visible ASCII, so ``积分`` routes and reads back intact.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote, unquote

import pytest
import pytest_asyncio

from forge_gateway.routing import Target, header_value, route_headers
from forge_sdk.errors import ConfigurationError
from forge_sdk.experts import ExpertModel, ExpertRegistry
from tests.security.support import Upstream, raw_request, serve_app

pytestmark = pytest.mark.asyncio(loop_scope="session")
JSON = {"content-type": "application/json"}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def port(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[int]:
    tmp = tmp_path_factory.mktemp("headers")
    upstream = Upstream()
    await upstream.start()
    registry = tmp / "experts.json"
    ExpertRegistry(registry).register(
        ExpertModel(name="ledger", endpoint=upstream.url, specialization="bookkeeping", keywords=["账本"])
    )
    overrides = {"registry": str(registry), "auth": {"db_path": str(tmp / "keys.db")}}
    try:
        async with serve_app(tiny_model_dir, overrides) as (_, port, _):
            yield port
    finally:
        await upstream.stop()


async def test_unicode_keyword_routes_with_an_encoded_reason(port: int) -> None:
    expert = json.dumps({"name": "points", "specialization": "loyalty", "keywords": ["积分"]}).encode()
    assert (await raw_request(port, "POST", "/admin/experts", body=expert, headers=JSON)).status == 201
    for name, keyword, path, extra in [
        ("points", "积分", "/v1/chat/completions", {}),
        ("points", "积分", "/v1/chat/completions", {"stream": True}),
        ("ledger", "账本", "/v1/chat/completions", {}),  # a remote expert: the upstream relay's headers
        ("ledger", "账本", "/v1/chat/completions", {"stream": True}),
    ]:
        body = {
            "model": "auto",
            "messages": [{"role": "user", "content": f"how do I use {keyword} ?"}],
            "max_tokens": 4,
            **extra,
        }
        resp = await raw_request(port, "POST", path, body=json.dumps(body).encode(), headers=JSON)
        assert resp.status == 200, (name, extra, resp.body)
        assert resp.headers["x-forge-expert"] == name
        reason = resp.headers["x-forge-route-reason"]
        assert reason.isascii() and unquote(reason).endswith(f"keyword:{keyword}"), reason
    resp = await raw_request(port, "POST", "/route?query=" + quote("how do I use 积分 ?"))
    assert resp.status == 200 and resp.json()["expert"] == "points", resp.body
    assert unquote(resp.headers["x-forge-route-reason"]).endswith("keyword:积分")


@pytest.mark.parametrize("keyword", ["\x01", "pay\x01", "a\r\nx-evil: 1", "\x7f", "\u0085", " ", "k" * 65])
async def test_control_character_keywords_are_refused_at_registration(port: int, keyword: str) -> None:
    expert = json.dumps({"name": "ctl", "keywords": [keyword]}).encode()
    resp = await raw_request(port, "POST", "/admin/experts", body=expert, headers=JSON)
    assert resp.status == 400, resp.body
    assert resp.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(ConfigurationError):
        ExpertModel.from_dict({"name": "ctl", "keywords": [keyword]})
    with pytest.raises(ValueError, match="keyword"):  # built in code (a plugin, forge-train --register)
        ExpertModel(name="ctl", keywords=[keyword])
    # The gateway still answers on a new connection: nothing was dropped or poisoned.
    assert (await raw_request(port, "GET", "/health")).status == 200


@pytest.mark.parametrize(
    "reason",
    ["router:plugin:\x01", "router:x:a\r\nset-cookie: x=1", "router:x:积分", "router:x:%41", "é" * 400],
)
def test_route_headers_are_latin1_safe_whatever_the_reason(reason: str) -> None:
    """A plugin classifier's reason may hold anything; the header values never do."""
    headers = route_headers(Target("tiny", None, reason, 0.5))
    for value in headers.values():
        assert value.isascii() and value.isprintable() and len(value) <= 256, value
        value.encode("latin-1")
    if len(reason) < 50:
        assert unquote(headers["x-forge-route-reason"]) == reason
    assert header_value("keyword:积分") == "keyword:%E7%A7%AF%E5%88%86"
