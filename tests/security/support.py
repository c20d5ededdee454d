"""What the attack suite needs: a live gateway on uvicorn (in-process), a raw HTTP client that
sends request targets byte for byte (httpx would normalise ``/./`` and ``..`` away), and a small
OpenAI-compatible upstream for remote experts."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forge_gateway.app import create_app
from forge_gateway.config import load_config
from forge_sdk.plugins import get_plugin_manager

__all__ = ["RawResponse", "Upstream", "raw_request", "serve_app"]


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def raw_request(
    port: int,
    method: str,
    target: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    host: str = "127.0.0.1",
) -> RawResponse:
    """One HTTP/1.1 request with ``target`` sent exactly as given; the connection closes after."""
    return await asyncio.wait_for(_raw(port, method, target, headers or {}, body, host), 30)


async def _raw(
    port: int, method: str, target: str, headers: dict[str, str], body: bytes, host: str
) -> RawResponse:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"{method} {target} HTTP/1.1", f"host: {host}", "connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"content-length: {len(body)}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines if ":" in h)}
    if parsed.get("transfer-encoding") == "chunked":
        out = b""
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            out += rest[:size]
            rest = rest[size + 2 :]
        rest = out
    return RawResponse(int(status_line.split(" ")[1]), parsed, rest)


@dataclass
class Upstream:
    """A well-behaved OpenAI-compatible server on 127.0.0.1 (the remote expert's far end)."""

    port: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                _, path, _ = lines[0].split(" ", 2)
                hdrs = {k.lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:] if x)}
                raw = await reader.readexactly(int(hdrs.get("content-length", "0")))
                body = json.loads(raw or b"{}")
                self.requests.append({"path": path, "headers": hdrs, "body": body, "raw": raw})
                if body.get("stream"):
                    events = [
                        {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]},
                        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                    ]
                    if (body.get("stream_options") or {}).get("include_usage"):
                        events.append(
                            {
                                "choices": [],
                                "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9},
                            }
                        )
                    payload = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
                    payload += b"data: [DONE]\n\n"
                    ctype = b"text/event-stream"
                else:
                    answer = {
                        "id": "up-1",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body.get("model"),
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": "hi"},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9},
                    }
                    payload = json.dumps(answer).encode()
                    ctype = b"application/json"
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n"
                    % (ctype, len(payload))
                    + payload
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def serve_app(
    model_dir: Path, overrides: dict[str, Any], *, root_path_too: str | None = None
) -> AsyncIterator[tuple[Any, int, int | None]]:
    """Serve a real gateway app on uvicorn: ``(app, port, root_path_port)``.

    With ``root_path_too``, the same app is also served on a second port under that uvicorn
    ``--root-path`` (lifespan off there: the first server runs the app's start-up).
    """
    import uvicorn

    from forge_gateway.engines import create_engine

    plugins_routing = __import__("forge_plugins.routing", fromlist=["x"])
    plugins_experts = __import__("forge_plugins.default_experts", fromlist=["x"])
    config = load_config(
        overrides={
            "model": str(model_dir),
            "served_model_name": "tiny",
            "router": {"classifier": "keyword", "retry_base_delay": 0.01},
            **overrides,
            "engine": {"kind": "transformers", "max_model_len": 256, **overrides.get("engine", {})},
        },
        environ={},
    )
    engine = create_engine("transformers", str(model_dir), max_model_len=256)
    pm = get_plugin_manager(load_entrypoints=False, plugins=[plugins_experts, plugins_routing])
    app = create_app(config, engine=engine, pm=pm)
    servers = [
        uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    ]
    if root_path_too:
        cfg = uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", root_path=root_path_too
        )
        servers.append(uvicorn.Server(cfg))
    tasks = []
    for server in servers:
        tasks.append(asyncio.create_task(server.serve()))
        while not server.started:
            if tasks[-1].done():
                tasks[-1].result()
            await asyncio.sleep(0.02)
    ports = [s.servers[0].sockets[0].getsockname()[1] for s in servers]
    try:
        yield app, ports[0], ports[1] if root_path_too else None
    finally:
        for server in reversed(servers):
            server.should_exit = True
        for task in reversed(tasks):
            await task
