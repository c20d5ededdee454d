"""A keyless dev gateway on loopback opens its admin API to this machine, not to every web page.

A browser on the developer's machine can be made to send requests to 127.0.0.1 by any site
(cross-site ``Origin``), or to reach it under the attacker's DNS name (DNS rebinding: a ``Host``
that is not loopback). Both are refused on admin routes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.security.support import raw_request, serve_app

pytestmark = pytest.mark.asyncio(loop_scope="session")
EXPERT = json.dumps({"name": "dev", "endpoint": "http://127.0.0.1:1/v1"}).encode()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def open_port(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[int]:
    db = tmp_path_factory.mktemp("open") / "no-keys.db"
    async with serve_app(tiny_model_dir, {"auth": {"db_path": str(db)}}) as (_, port, _):
        yield port


async def test_same_machine_admin_call_works(open_port: int) -> None:
    resp = await raw_request(
        open_port, "POST", "/admin/experts", body=EXPERT, headers={"content-type": "application/json"}
    )
    assert resp.status == 201, resp.body
    local_origin = {"origin": f"http://localhost:{open_port}"}
    assert (await raw_request(open_port, "GET", "/metrics", headers=local_origin)).status == 200


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://127.0.0.1.evil.example"])
async def test_cross_site_origin_is_refused(open_port: int, origin: str) -> None:
    headers = {"content-type": "application/json", "origin": origin}
    resp = await raw_request(open_port, "POST", "/admin/experts", body=EXPERT, headers=headers)
    assert resp.status == 403, resp.body


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "192.168.1.5"])
async def test_dns_rebinding_host_is_refused(open_port: int, host: str) -> None:
    resp = await raw_request(
        open_port,
        "POST",
        "/admin/experts",
        body=EXPERT,
        headers={"content-type": "application/json"},
        host=host,
    )
    assert resp.status == 403, resp.body
    assert (await raw_request(open_port, "GET", "/admin/keys", host=host)).status == 403


async def test_form_posts_are_refused_even_from_this_machine(open_port: int) -> None:
    headers = {"content-type": "application/x-www-form-urlencoded"}
    resp = await raw_request(open_port, "POST", "/admin/experts", body=EXPERT, headers=headers)
    assert resp.status == 415, resp.body
