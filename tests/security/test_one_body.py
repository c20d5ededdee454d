"""Smuggling through the body: what is authorised, limited and metered is what is forwarded.

A JSON body may name a key twice (``model``, ``max_tokens``) or give both ``max_tokens`` and
``max_completion_tokens``; parsers disagree on which one counts (first or last). The gateway
decodes a body once, checks that reading, and sends the remote expert a body re-encoded from it,
so a checked value can never be swapped for an unchecked one upstream. A body nested too deeply
to decode is a 400, never a 500.
"""

from __future__ import annotations

import json

import pytest

from tests.security.conftest import Gateway

pytestmark = pytest.mark.asyncio(loop_scope="session")
JSON = {"content-type": "application/json"}
MESSAGES = '"messages": [{"role": "user", "content": "hi"}]'


def _sent(gw: Gateway, seen: int) -> bytes:
    assert len(gw.upstream.requests) == seen + 1, "exactly one request went upstream"
    return bytes(gw.upstream.requests[-1]["raw"])


async def test_a_duplicate_model_forwards_the_model_that_was_authorised(gw: Gateway) -> None:
    # The key may use only ``legal``; a parser that took the first ``model`` would see ``general``.
    seen = len(gw.upstream.requests)
    body = f'{{"model": "general", {MESSAGES}, "max_tokens": 4, "model": "legal"}}'.encode()
    resp = await gw.request("POST", "/v1/chat/completions", "legal_only", body=body, headers=JSON)
    assert resp.status == 200, resp.body
    assert resp.headers["x-forge-expert"] == "legal"
    sent = _sent(gw, seen)
    assert sent.count(b'"model"') == 1 and json.loads(sent)["model"] == "legal-7b"


async def test_a_duplicate_max_tokens_forwards_the_value_that_was_limited(gw: Gateway) -> None:
    # limits.max_tokens is 64: the last value (8) passed the check, so 8 is what goes upstream,
    # never the 1000 before it.
    seen = len(gw.upstream.requests)
    body = f'{{"model": "legal", {MESSAGES}, "max_tokens": 1000, "max_tokens": 8}}'.encode()
    resp = await gw.request("POST", "/v1/chat/completions", "user", body=body, headers=JSON)
    assert resp.status == 200, resp.body
    sent = _sent(gw, seen)
    assert sent.count(b'"max_tokens"') == 1 and json.loads(sent)["max_tokens"] == 8
    # And the other way round: the last value is the one checked (and refused).
    over = f'{{"model": "legal", {MESSAGES}, "max_tokens": 8, "max_tokens": 1000}}'.encode()
    refused = await gw.request("POST", "/v1/chat/completions", "user", body=over, headers=JSON)
    assert refused.status == 400 and refused.json()["error"]["param"] == "max_tokens"
    assert len(gw.upstream.requests) == seen + 1


async def test_max_completion_tokens_beside_max_tokens_forwards_only_the_one_that_counts(gw: Gateway) -> None:
    seen = len(gw.upstream.requests)
    body = f'{{"model": "legal", {MESSAGES}, "max_tokens": 1000, "max_completion_tokens": 8}}'.encode()
    resp = await gw.request("POST", "/v1/chat/completions", "user", body=body, headers=JSON)
    assert resp.status == 200, resp.body
    sent = json.loads(_sent(gw, seen))
    assert sent["max_completion_tokens"] == 8 and "max_tokens" not in sent


@pytest.mark.parametrize("model", ["legal", "general"])  # a remote expert and the local engine
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_a_body_nested_too_deeply_is_a_400(gw: Gateway, model: str, path: str) -> None:
    nested = '{"a": ' + "[" * 20_000 + "]" * 20_000 + "}"  # past the decoder's depth, within 64 KiB
    prompt = MESSAGES if path == "/v1/chat/completions" else '"prompt": "hi"'
    body = f'{{"model": "{model}", {prompt}, "max_tokens": 4, "guided_json": {nested}}}'
    seen = len(gw.upstream.requests)
    resp = await gw.request("POST", path, "user", body=body.encode(), headers=JSON)
    assert resp.status == 400, resp.body
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error" and "nested too deeply" in error["message"]
    assert len(gw.upstream.requests) == seen
