"""Remote experts through a live gateway: proxying, streaming, retries, timeouts, cooldown, fallback.

A small real HTTP server on 127.0.0.1 stands in for an external OpenAI-compatible server (e.g. a
vLLM deployment). Its behaviour is picked by the first path segment of the expert's endpoint:
``/ok/v1``, ``/flaky/v1`` (503 while ``fail_next`` > 0), ``/slow/v1``, ``/reject/v1`` (400),
``/cut/v1`` (stream dies after one chunk). The gateway runs in-process on uvicorn with the
transformers engine on the tiny model, which serves the ``general`` fallback for real.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio

from forge_gateway.app import create_app
from forge_gateway.config import load_config
from forge_sdk.experts import ExpertModel, ExpertRegistry
from forge_sdk.plugins import get_plugin_manager

routing = pytest.importorskip("forge_plugins.routing")
default_experts = pytest.importorskip("forge_plugins.default_experts")
pytestmark = pytest.mark.asyncio(loop_scope="session")

UPSTREAM_KEY = "sk-upstream-secret"
SLOW_UPSTREAM_S = 10.0
"""How long the ``slow`` upstream takes: far above any timeout here, so a generous bound on a
test's elapsed time (which includes a local fallback generation on a loaded machine) still proves
that the gateway did not wait for the upstream."""


class MockUpstream:
    """A minimal OpenAI-compatible HTTP/1.1 server with scripted failure modes."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.fail_next: dict[str, int] = {}
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.connections = 0
        self.dropped: list[str] = []
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in list(self.writers):
                writer.transport.abort()
            await self.server.wait_closed()

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.port}/{mode}/v1"

    def seen(self, mode: str, method: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["mode"] == mode and method in (None, r["method"])]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {
                    k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if line)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if not await self._respond(method, path, headers, body, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    async def _respond(
        self, method: str, path: str, headers: dict[str, str], raw: bytes, writer: asyncio.StreamWriter
    ) -> bool:
        mode = path.split("/")[1]
        body = json.loads(raw) if raw else {}
        self.requests.append(
            {
                "mode": mode,
                "method": method,
                "path": path,
                "headers": headers,
                "body": body,
                "t": time.monotonic(),
            }
        )
        if self.fail_next.get(mode, 0) > 0:
            self.fail_next[mode] -= 1
            await self._send(writer, 503, {"error": {"message": "overloaded", "type": "server_error"}})
            return True
        if mode.startswith("slow"):
            await asyncio.sleep(SLOW_UPSTREAM_S)
        if mode == "reject":
            error = {"error": {"message": "bad temperature", "type": "invalid_request_error", "param": None}}
            await self._send(writer, 400, error)
            return True
        prompt = body.get("messages", [{}])[-1].get("content") if "messages" in body else body.get("prompt")
        text = f"echo from {body.get('model')}: {prompt}"
        if mode == "idleclose":
            # Answer, then drop the connection as an idle timeout would, without telling.
            await self._send(writer, 200, {"choices": [{"message": {"content": "ok"}}]})
            await asyncio.sleep(0.05)
            return False
        if not body.get("stream"):
            if path.endswith("/completions") and "messages" not in body:
                choice = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
                obj = "text_completion"
            else:
                choice = {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
                obj = "chat.completion"
            usage = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
            await self._send(
                writer,
                200,
                {
                    "id": "up-1",
                    "object": obj,
                    "created": 1,
                    "model": body.get("model"),
                    "choices": [choice],
                    "usage": usage,
                },
            )
            return True
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        words = text.split(" ") * (40 if mode == "drip" else 1)
        for i, word in enumerate(words):
            delta = {"role": "assistant", "content": word} if i == 0 else {"content": " " + word}
            chunk = {
                "id": "up-1",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": body.get("model"),
                "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
            }
            _chunk(writer, b"data: " + json.dumps(chunk).encode() + b"\n\n")
            try:
                await writer.drain()
            except ConnectionError:
                self.dropped.append(mode)  # the gateway hung up on us
                return False
            if mode == "drip":
                await asyncio.sleep(0.05)
            if mode == "cut":
                writer.transport.abort()  # the upstream dies mid-stream
                return False
            await asyncio.sleep(0.01)
        done = {
            "id": "up-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": body.get("model"),
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        }
        _chunk(writer, b"data: " + json.dumps(done).encode() + b"\n\n")
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
            final = {
                "id": "up-1",
                "object": "chat.completion.chunk",
                "created": 1,
                "choices": [],
                "usage": usage,
            }
            _chunk(writer, b"data: " + json.dumps(final).encode() + b"\n\n")
        _chunk(writer, b"data: [DONE]\n\n")
        _chunk(writer, b"")
        await writer.drain()
        return True

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        reason = {200: "OK", 400: "Bad Request", 503: "Service Unavailable"}[status]
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n".encode()
            + data
        )
        await writer.drain()


def _chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Live:
    def __init__(self, base_url: str, upstream: MockUpstream, app: Any, keys: dict[str, str]) -> None:
        self.base_url = base_url
        self.upstream = upstream
        self.app = app
        self.keys = keys
        auth = {"authorization": f"Bearer {keys['all']}"}
        self.http = httpx.AsyncClient(base_url=base_url, timeout=30, headers=auth)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def live(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Live]:
    import uvicorn

    from forge_gateway.engines import create_engine

    upstream = MockUpstream()
    await upstream.start()
    registry = tmp_path_factory.mktemp("remote") / "experts.json"
    reg = ExpertRegistry(registry)
    remote = dict(timeout=5.0, max_retries=2)
    reg.register(
        ExpertModel(
            name="legal",
            endpoint=upstream.url("ok"),
            upstream_model="legal-7b",
            api_key_env="FORGE_TEST_UPSTREAM_KEY",
            specialization="legal",
            keywords=["contract", "lawsuit"],
            **remote,
        )
    )
    reg.register(ExpertModel(name="flaky", endpoint=upstream.url("flaky"), **remote))
    reg.register(ExpertModel(name="flakystream", endpoint=upstream.url("flakystream"), **remote))
    reg.register(ExpertModel(name="slow", endpoint=upstream.url("slow"), timeout=0.3, max_retries=0))
    reg.register(ExpertModel(name="reject", endpoint=upstream.url("reject"), **remote))
    reg.register(ExpertModel(name="cut", endpoint=upstream.url("cut"), **remote))
    reg.register(ExpertModel(name="idleclose", endpoint=upstream.url("idleclose"), **remote))
    reg.register(ExpertModel(name="drip", endpoint=upstream.url("drip"), **remote))
    # Its own path: "slow" cools down in other tests and is then probed (GET .../models) in the
    # background, which must not be counted as this expert's POSTs.
    reg.register(
        ExpertModel(name="slowretry", endpoint=upstream.url("slowretry"), timeout=0.3, max_retries=1)
    )
    reg.register(ExpertModel(name="down", endpoint=f"http://127.0.0.1:{_closed_port()}/v1", **remote))
    # Real API keys, so the tests also show that proxied requests pass the security layer.
    from forge_gateway.security import KeyStore

    store = KeyStore(registry.parent / "keys.db")
    keys = {
        "all": store.create("tests", admin=True)[0],  # admin: these tests read /experts details
        "legal_only": store.create("legal-only", models=["legal"])[0],
        "small_tpm": store.create("small", tpm=20)[0],
    }
    store.close()
    config = load_config(
        overrides={
            "model": str(tiny_model_dir),
            "served_model_name": "tiny",
            "registry": str(registry),
            "auth": {"db_path": str(registry.parent / "keys.db")},
            "limits": {"max_body_bytes": 65536},
            "engine": {"kind": "transformers", "max_model_len": 256},
            "router": {
                "classifier": "keyword",
                "retry_base_delay": 0.05,
                "failure_threshold": 2,
                "cooldown_s": 60,
            },
        },
        environ={},
    )
    os.environ["FORGE_TEST_UPSTREAM_KEY"] = UPSTREAM_KEY
    engine = create_engine("transformers", str(tiny_model_dir), max_model_len=256)
    # Only the built-in plugins: third-party ones installed here must not change these routes.
    pm = get_plugin_manager(load_entrypoints=False, plugins=[default_experts, routing])
    app = create_app(config, engine=engine, pm=pm)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    live = Live(f"http://127.0.0.1:{port}", upstream, app, keys)
    yield live
    await live.http.aclose()
    server.should_exit = True
    await task
    await upstream.stop()


def _chat(model: str, content: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 4, **extra}


async def test_non_streaming_proxy_rewrites_model_and_sends_key(live: Live) -> None:
    resp = await live.http.post("/v1/chat/completions", json=_chat("legal", "review my contract"))
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-forge-expert"] == "legal" and resp.headers["x-forge-route-reason"] == "requested"
    body = resp.json()
    assert body["choices"][0]["message"]["content"] == "echo from legal-7b: review my contract"
    assert body["usage"]["total_tokens"] == 8
    sent = live.upstream.seen("ok")[-1]
    assert sent["path"] == "/ok/v1/chat/completions" and sent["body"]["model"] == "legal-7b"
    assert sent["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert sent["body"]["max_tokens"] == 4


async def test_remote_usage_is_recorded(live: Live) -> None:
    seen: list[tuple[str, int, int, str]] = []
    gateway = live.app.state.gateway
    listener = lambda target, p, c, engine: seen.append((target.expert_name, p, c, engine))  # noqa: E731
    gateway.usage_listeners.append(listener)
    try:
        assert (await live.http.post("/v1/chat/completions", json=_chat("legal"))).status_code == 200
        body = _chat("legal", stream=True, stream_options={"include_usage": True})
        async with live.http.stream("POST", "/v1/chat/completions", json=body) as resp:
            events = [line async for line in resp.aiter_lines() if line.startswith("data: ")]
        assert json.loads(events[-2][6:])["usage"]["total_tokens"] == 8 and events[-1] == "data: [DONE]"
    finally:
        gateway.usage_listeners.remove(listener)
    assert seen == [("legal", 3, 5, "remote")] * 2  # non-stream, then the stream's usage chunk


async def test_text_completions_proxy(live: Live) -> None:
    resp = await live.http.post(
        "/v1/completions", json={"model": "legal", "prompt": "sue them", "max_tokens": 3}
    )
    assert resp.status_code == 200 and resp.json()["choices"][0]["text"] == "echo from legal-7b: sue them"
    assert live.upstream.seen("ok")[-1]["path"] == "/ok/v1/completions"


async def test_streaming_proxy_with_official_client(live: Live) -> None:
    client = openai.AsyncOpenAI(base_url=f"{live.base_url}/v1", api_key=live.keys["all"], max_retries=0)
    raw = await client.chat.completions.with_raw_response.create(
        **_chat("legal", "draft a contract"), stream=True
    )
    assert raw.headers["x-forge-expert"] == "legal"
    chunks = [chunk async for chunk in raw.parse()]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo from legal-7b: draft a contract"
    assert chunks[-1].choices[0].finish_reason == "stop"
    await client.close()


async def test_model_auto_routes_to_a_remote_expert(live: Live) -> None:
    resp = await live.http.post("/v1/chat/completions", json=_chat("auto", "my landlord broke the contract"))
    assert resp.status_code == 200
    assert resp.headers["x-forge-expert"] == "legal"
    assert resp.headers["x-forge-route-reason"].startswith("router:keyword")
    assert float(resp.headers["x-forge-route-confidence"]) > 0


async def test_retries_503_with_exponential_backoff(live: Live) -> None:
    live.upstream.fail_next["flaky"] = 2
    before = len(live.upstream.seen("flaky"))
    resp = await live.http.post("/v1/chat/completions", json=_chat("flaky"))
    assert resp.status_code == 200 and resp.headers["x-forge-expert"] == "flaky"
    attempts = live.upstream.seen("flaky")[before:]
    assert len(attempts) == 3
    assert all(a["body"] == _chat("flaky") for a in attempts)  # the client's body as sent, no defaults added
    gaps = [b["t"] - a["t"] for a, b in itertools.pairwise(attempts)]
    # base 0.05 s, doubling: ~0.05 then ~0.10 (plus up to 10% jitter). Lower bounds show the
    # backoff; the upper bound only catches a hang (a loaded machine stretches every gap).
    assert 0.045 <= gaps[0] and 0.095 <= gaps[1] and max(gaps) < 2.0, gaps
    status = {e["name"]: e for e in (await live.http.get("/experts")).json()["experts"]}["flaky"]["status"]
    assert status["state"] == "ok" and status["consecutive_failures"] == 0


async def test_per_expert_timeout_falls_back_to_general(live: Live) -> None:
    start = time.monotonic()
    resp = await live.http.post("/v1/chat/completions", json=_chat("slow", max_tokens=2))
    elapsed = time.monotonic() - start
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-forge-expert"] == "general"
    assert resp.headers["x-forge-route-reason"] == "fallback:slow-timeout"
    assert resp.json()["model"] == "general" and resp.json()["usage"]["completion_tokens"] >= 1
    assert elapsed < SLOW_UPSTREAM_S - 2  # did not wait for the upstream (generous: machine load)


async def test_connect_errors_retry_then_cooldown_shows_in_experts(live: Live) -> None:
    for _ in range(2):  # failure_threshold = 2
        resp = await live.http.post("/v1/chat/completions", json=_chat("down"))
        assert resp.status_code == 200 and resp.headers["x-forge-route-reason"] == "fallback:down-error"
    experts = {e["name"]: e for e in (await live.http.get("/experts")).json()["experts"]}
    status = experts["down"]["status"]
    assert status["state"] == "cooldown" and status["consecutive_failures"] == 2
    assert 50 < status["cooldown_remaining_s"] <= 60 and "UpstreamConnectError" in status["last_error"]
    start = time.monotonic()
    resp = await live.http.post("/v1/chat/completions", json=_chat("down", max_tokens=1))
    assert resp.headers["x-forge-route-reason"] == "fallback:down-cooldown"
    # The reason already shows no attempt was made; the bound (generous: a loaded machine) shows no
    # connect timeout or backoff was waited for either.
    assert time.monotonic() - start < 5.0


async def test_stream_falls_back_before_the_first_byte(live: Live) -> None:
    # Its own expert and upstream path: the failed request counts towards "flakystream"'s circuit,
    # not towards the one test_retries_503_with_exponential_backoff needs closed.
    live.upstream.fail_next["flakystream"] = 3  # every attempt (1 + 2 retries) fails
    body = _chat("flakystream", stream=True)
    async with live.http.stream("POST", "/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200
        assert resp.headers["x-forge-expert"] == "general"
        assert resp.headers["x-forge-route-reason"] == "fallback:flakystream-error"
        lines = [line async for line in resp.aiter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and json.loads(lines[0][6:])["model"] == "general"


async def test_stream_failing_after_first_byte_reports_in_band(live: Live) -> None:
    async with live.http.stream("POST", "/v1/chat/completions", json=_chat("cut", stream=True)) as resp:
        assert resp.status_code == 200 and resp.headers["x-forge-expert"] == "cut"
        events = [line[6:] async for line in resp.aiter_lines() if line.startswith("data: ")]
    assert json.loads(events[0])["choices"][0]["delta"]["content"] == "echo"
    error = json.loads(events[-1])["error"]
    assert error["type"] == "upstream_error" and "mid-stream" in error["message"]


async def test_upstream_client_errors_pass_through_unretried(live: Live) -> None:
    before = len(live.upstream.seen("reject"))
    resp = await live.http.post("/v1/chat/completions", json=_chat("reject"))
    assert resp.status_code == 400 and resp.json()["error"]["message"] == "bad temperature"
    assert resp.headers["x-forge-expert"] == "reject"
    assert len(live.upstream.seen("reject")) == before + 1


async def test_route_generate_and_models_cover_remote_experts(live: Live) -> None:
    route = await live.http.post("/route", params={"query": "is this contract valid?"})
    assert route.status_code == 200
    decision = route.json()
    assert decision["expert"] == "legal" and decision["endpoint"] == live.upstream.url("ok")
    assert decision["classifier"] == "keyword" and 0 < decision["confidence"] <= 1
    gen = await live.http.post("/generate", json={"prompt": "explain this lawsuit", "max_tokens": 4})
    assert gen.status_code == 200
    assert gen.json() == {
        "text": "echo from legal-7b: explain this lawsuit",
        "expert": "legal",
        "tokens_used": 8,
    }
    assert gen.headers["x-forge-expert"] == "legal"
    forced = await live.http.post("/generate", json={"prompt": "hi", "expert": "slow", "max_tokens": 2})
    assert forced.status_code == 200 and forced.json()["expert"] == "general"
    assert forced.headers["x-forge-route-reason"] == "fallback:slow-timeout"
    ids = [m["id"] for m in (await live.http.get("/v1/models")).json()["data"]]
    assert ids[0] == "tiny" and {"legal", "flaky", "auto"} <= set(ids)


async def test_bad_requests_get_openai_errors(live: Live) -> None:
    missing = await live.http.post("/v1/chat/completions", json=_chat("no-such-expert"))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    empty = await live.http.post("/route", params={"query": "  "})
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "query"
    absent = await live.http.post("/route")
    assert absent.status_code == 400 and "error" in absent.json()


async def test_connections_are_kept_alive_and_stale_ones_replaced(live: Live) -> None:
    await live.http.post("/v1/chat/completions", json=_chat("legal"))
    before = live.upstream.connections
    for _ in range(5):
        assert (await live.http.post("/v1/chat/completions", json=_chat("legal"))).status_code == 200
    assert live.upstream.connections == before  # all five reused one pooled connection
    # The upstream silently closes after each answer: the pooled connection is stale next time,
    # and the request goes out again on a fresh one without counting as a failure.
    for _ in range(3):
        resp = await live.http.post("/v1/chat/completions", json=_chat("idleclose"))
        assert resp.status_code == 200 and resp.headers["x-forge-expert"] == "idleclose"
        await asyncio.sleep(0.1)
    assert len(live.upstream.seen("idleclose")) == 3
    status = {e["name"]: e for e in (await live.http.get("/experts")).json()["experts"]}["idleclose"][
        "status"
    ]
    assert status["failures"] == 0


async def test_client_leaving_a_stream_closes_the_upstream_stream(live: Live) -> None:
    async with live.http.stream("POST", "/v1/chat/completions", json=_chat("drip", stream=True)) as resp:
        assert resp.headers["x-forge-expert"] == "drip"
        async for line in resp.aiter_lines():
            if line.startswith("data: "):
                break  # one event, then the client goes away
    for _ in range(60):
        if "drip" in live.upstream.dropped:
            break
        await asyncio.sleep(0.05)
    assert live.upstream.dropped == ["drip"]  # the upstream saw the gateway hang up
    assert len(live.upstream.seen("drip")) == 1


async def test_timed_out_posts_are_not_resent_before_falling_back(live: Live) -> None:
    # The upstream got the request and may be generating: resending it would run it twice.
    # Only POSTs count: a cooling expert's health probes are GETs of .../models.
    before = len(live.upstream.seen("slowretry", "POST"))
    start = time.monotonic()
    resp = await live.http.post("/v1/chat/completions", json=_chat("slowretry", max_tokens=1))
    elapsed = time.monotonic() - start
    assert resp.headers["x-forge-route-reason"] == "fallback:slowretry-timeout"
    await asyncio.sleep(0.5)  # a resend would arrive well within the upstream's 3 s answer time
    assert len(live.upstream.seen("slowretry", "POST")) == before + 1  # max_retries=1, yet one attempt
    assert 0.3 <= elapsed < SLOW_UPSTREAM_S - 2  # the 0.3 s timeout fired, not the upstream's answer


async def test_cooldown_ends_and_a_success_closes_the_circuit(live: Live) -> None:
    from forge_gateway.routing import Target
    from forge_gateway.upstream import UpstreamPool
    from forge_sdk.errors import ExpertUnavailableError, UpstreamError

    pool = UpstreamPool(failure_threshold=1, cooldown_s=0.3, retry_base_delay=0.01)
    await pool.start()
    # Its own upstream path: a failure scripted here never reaches the gateway's "flaky" expert.
    expert = ExpertModel(name="flaky", endpoint=live.upstream.url("flakypool"), max_retries=0)
    target = Target("flaky", expert, "requested")
    body = json.dumps(_chat("flaky")).encode()
    try:
        live.upstream.fail_next["flakypool"] = 1
        with pytest.raises(UpstreamError):
            await pool.call(target, body, "chat/completions", stream=False)
        assert pool.status("flaky")["state"] == "cooldown"
        with pytest.raises(ExpertUnavailableError):  # skipped without contacting the upstream
            await pool.call(target, body, "chat/completions", stream=False)
        await asyncio.sleep(0.35)
        reply = await pool.call(target, body, "chat/completions", stream=False)
        assert reply.status == 200 and json.loads(reply.body)["choices"][0]["message"]["content"]
        status = pool.status("flaky")
        assert status["state"] == "ok" and status["consecutive_failures"] == 0
        assert status["failures"] == 1 and status["requests"] == 3
    finally:
        await pool.stop()


async def test_proxied_requests_pass_key_checks_and_token_limits(live: Live) -> None:
    async with httpx.AsyncClient(base_url=live.base_url) as no_key:
        anonymous = await no_key.post("/v1/chat/completions", json=_chat("legal"))
    assert anonymous.status_code == 401
    before = len(live.upstream.requests)

    def as_key(name: str) -> dict[str, str]:
        return {"authorization": f"Bearer {live.keys[name]}"}

    allowed = await live.http.post("/v1/chat/completions", json=_chat("legal"), headers=as_key("legal_only"))
    assert allowed.status_code == 200 and allowed.headers["x-forge-expert"] == "legal"
    denied = await live.http.post("/v1/chat/completions", json=_chat("flaky"), headers=as_key("legal_only"))
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "permission_denied"
    too_big = await live.http.post("/v1/chat/completions", json=_chat("legal"), headers=as_key("small_tpm"))
    assert too_big.status_code == 429 and too_big.json()["error"]["type"] == "rate_limit_error"
    assert len(live.upstream.requests) == before + 1  # refused requests never reached an upstream


async def test_bad_bodies_for_remote_experts_get_the_usual_errors(live: Live) -> None:
    before = len(live.upstream.requests)
    huge = await live.http.post("/v1/chat/completions", json=_chat("legal", "x" * 100_000))
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "payload_too_large"

    async def chunked() -> AsyncIterator[bytes]:  # no content-length: the size shows only while reading
        yield b'{"model": "legal", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 10_000
        yield b'"}]}'

    streamed = await live.http.post("/v1/chat/completions", content=chunked())
    assert streamed.status_code == 413
    typo = await live.http.post("/v1/chat/completions", json={**_chat("legal"), "max_tokenz": 3})
    assert typo.status_code == 400 and "max_tokenz" in typo.json()["error"]["message"]
    broken = await live.http.post(
        "/v1/chat/completions",
        content=b'{"model": "legal", "messages": [',
        headers={"content-type": "application/json"},
    )
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_json"
    assert len(live.upstream.requests) == before  # none of them was proxied


async def test_remote_experts_get_tools_and_response_format_unchanged(live: Live) -> None:
    """Only local engines implement tools, structured outputs and log-probs: a remote expert gets
    every field the client sent, as sent (only ``model`` renamed, and usage asked for on streams)."""
    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup_case",
                "description": "Find a court case",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
                "strict": True,
            },
        }
    ]
    fmt = {"type": "json_schema", "json_schema": {"name": "v", "schema": {"type": "object"}, "strict": True}}
    for stream in (False, True):
        body = _chat(
            "legal",
            "review my contract",
            tools=tools,
            tool_choice={"type": "function", "function": {"name": "lookup_case"}},
            parallel_tool_calls=False,
            response_format=fmt,
            logprobs=True,
            top_logprobs=2,
            logit_bias={"11": -5},
            metadata={"tenant": "t1"},
            store=False,
            top_k=7,
            guided_json=None,
            stream=stream,
        )
        before = len(live.upstream.seen("ok"))
        resp = await live.http.post("/v1/chat/completions", json=body)
        assert resp.status_code == 200, resp.text
        sent = live.upstream.seen("ok")[before:]
        assert len(sent) == 1
        expected = {**body, "model": "legal-7b"}
        if stream:  # the gateway asks for usage to meter the stream (and strips it from the reply)
            expected["stream_options"] = {"include_usage": True}
        assert sent[0]["body"] == expected
