"""Attacks on capacity and budgets: slow uploads, unmetered streams, uncapped remote requests,
and engines started for keys that may not use them.

The live gateway here allows 2 generations at once (8 queued), ``max_tokens`` 64, 8 messages,
a 1 s body deadline, and one standalone engine at a time.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.security.conftest import Gateway

pytestmark = pytest.mark.asyncio(loop_scope="session")
JSON = {"content-type": "application/json"}


def _chat(model: str, **extra: object) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}).encode()


async def _slow_upload(gw: Gateway) -> int:
    """Send the headers and a tenth of the body, then stall; the status the gateway answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        f"authorization: Bearer {gw.keys['user']}\r\ncontent-length: 1000\r\n\r\n"
    )
    writer.write(head.encode() + b'{"model": "')
    await writer.drain()
    try:
        return int((await asyncio.wait_for(reader.read(), 10)).split(b" ", 2)[1])
    finally:
        writer.close()


async def test_slow_uploads_get_408_and_never_hold_the_slots(gw: Gateway) -> None:
    stalled = [asyncio.create_task(_slow_upload(gw)) for _ in range(6)]  # 3x max_concurrent
    await asyncio.sleep(0.3)
    ok = await gw.request("POST", "/v1/chat/completions", "user", body=_chat("legal"), headers=JSON)
    assert ok.status == 200, ok.body  # served while six uploads crawl
    assert sorted(await asyncio.gather(*stalled)) == [408] * 6
    assert gw.app.state.security.admission.running == 0


async def test_remote_stream_is_metered_without_the_client_asking(gw: Gateway) -> None:
    before = await _used_tokens(gw)
    body = _chat("legal", stream=True)
    resp = await gw.request("POST", "/v1/chat/completions", "metered", body=body, headers=JSON)
    assert resp.status == 200, resp.body
    sent = gw.upstream.requests[-1]["body"]
    assert sent["stream_options"] == {"include_usage": True}  # injected upstream...
    assert b'"usage"' not in resp.body and resp.body.endswith(b"data: [DONE]\n\n")  # ...and stripped
    assert await _used_tokens(gw) - before == 9  # the upstream's real usage was charged


async def test_remote_stream_keeps_usage_when_the_client_asks(gw: Gateway) -> None:
    body = _chat("legal", stream=True, stream_options={"include_usage": True})
    resp = await gw.request("POST", "/v1/chat/completions", "metered", body=body, headers=JSON)
    assert resp.status == 200 and b'"usage"' in resp.body


async def _used_tokens(gw: Gateway) -> int:
    key_id = gw.keys["metered"].split("-")[1]
    usage = await gw.request("GET", f"/admin/usage?key_id={key_id}", "admin")
    return sum(row["total_tokens"] for row in usage.json()["data"])


async def test_missing_max_tokens_is_capped_upstream(gw: Gateway) -> None:
    resp = await gw.request("POST", "/v1/chat/completions", "user", body=_chat("legal"), headers=JSON)
    assert resp.status == 200
    assert gw.upstream.requests[-1]["body"]["max_tokens"] == 16  # limits.default_max_tokens


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/chat/completions/"])
async def test_remote_experts_obey_max_tokens_and_max_messages(gw: Gateway, path: str) -> None:
    seen = len(gw.upstream.requests)
    big = await gw.request("POST", path, "user", body=_chat("legal", max_tokens=65), headers=JSON)
    assert big.status == 400 and big.json()["error"]["param"] == "max_tokens"
    many = json.dumps({"model": "legal", "messages": [{"role": "user", "content": "x"}] * 9}).encode()
    chatty = await gw.request("POST", path, "user", body=many, headers=JSON)
    assert chatty.status == 400 and chatty.json()["error"]["param"] == "messages"
    completion = json.dumps({"model": "legal", "prompt": "x", "max_tokens": 1000}).encode()
    assert (await gw.request("POST", "/v1/completions", "user", body=completion, headers=JSON)).status == 400
    assert len(gw.upstream.requests) == seen  # none reached the upstream


async def test_generate_obeys_the_limits_for_remote_experts(gw: Gateway) -> None:
    seen = len(gw.upstream.requests)
    body = json.dumps({"prompt": "review my contract", "expert": "legal", "max_tokens": 500}).encode()
    assert (await gw.request("POST", "/generate", "user", body=body, headers=JSON)).status == 400
    many = json.dumps(
        {"messages": [{"role": "user", "content": "x"}] * 9, "expert": "legal", "max_tokens": 4}
    )
    assert (await gw.request("POST", "/generate", "user", body=many.encode(), headers=JSON)).status == 400
    assert len(gw.upstream.requests) == seen
    fine = json.dumps({"prompt": "review my contract", "expert": "legal", "max_tokens": 4}).encode()
    assert (await gw.request("POST", "/generate", "user", body=fine, headers=JSON)).status == 200


async def _state(gw: Gateway, name: str) -> str:
    experts = (await gw.request("GET", "/experts", "admin")).json()["experts"]
    return str(next(e for e in experts if e["name"] == name)["status"]["state"])


async def test_no_engine_starts_for_a_key_that_may_not_use_it_and_engines_are_capped(
    gw: Gateway, tiny_model_dir: Path
) -> None:
    for name in ("solo1", "solo2"):
        expert = json.dumps({"name": name, "model_path": str(tiny_model_dir)}).encode()
        assert (await gw.request("POST", "/admin/experts", "admin", body=expert, headers=JSON)).status == 201
    small = {"max_tokens": 2}
    refused = await gw.request(
        "POST", "/v1/chat/completions", "general_only", body=_chat("solo1", **small), headers=JSON
    )
    assert refused.status == 403
    assert await _state(gw, "solo1") == "idle"  # nothing was loaded for the refused key
    first = await gw.request(
        "POST", "/v1/chat/completions", "user", body=_chat("solo1", **small), headers=JSON
    )
    assert first.status == 200 and await _state(gw, "solo1") == "running"
    second = await gw.request(
        "POST", "/v1/chat/completions", "user", body=_chat("solo2", **small), headers=JSON
    )
    assert second.status == 200 and await _state(gw, "solo2") == "running"
    for _ in range(50):  # the least recently used engine was stopped to make room
        if await _state(gw, "solo1") == "idle":
            break
        await asyncio.sleep(0.1)
    assert await _state(gw, "solo1") == "idle"


async def test_generate_on_a_remote_expert_is_metered(gw: Gateway) -> None:
    before = await _used_tokens(gw)
    body = json.dumps({"prompt": "review my contract", "expert": "legal", "max_tokens": 4}).encode()
    resp = await gw.request("POST", "/generate", "metered", body=body, headers=JSON)
    assert resp.status == 200 and resp.json()["expert"] == "legal", resp.body
    assert await _used_tokens(gw) - before == 9  # the upstream's usage, as for /v1


@pytest.mark.parametrize("stream", [False, True])
async def test_every_remote_path_fills_max_tokens_and_meters(gw: Gateway, stream: bool) -> None:
    # Text completions take the same path as chat: a missing max_tokens is capped (the TPM
    # reservation assumed it) and a stream asks the upstream for its usage.
    before = await _used_tokens(gw)
    body = json.dumps({"model": "legal", "prompt": "x", "stream": stream}).encode()
    resp = await gw.request("POST", "/v1/completions", "metered", body=body, headers=JSON)
    assert resp.status == 200, resp.body
    sent = gw.upstream.requests[-1]["body"]
    assert sent["max_tokens"] == 16 and (sent.get("stream_options") == {"include_usage": True}) is stream
    assert await _used_tokens(gw) - before == 9
