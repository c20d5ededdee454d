"""Remote-expert proxy overhead: what the gateway adds in front of an OpenAI-compatible upstream.

A fast mock upstream (raw asyncio + uvloop, canned chat completion and canned SSE stream) runs on
127.0.0.1; ``forge-gateway serve`` registers it as a remote expert and is pinned to one core with
``taskset``. ``wrk`` (Lua script for the POST body) drives both, on the other core:

* added p50 latency at concurrency 1 = p50 through the gateway - p50 calling the upstream directly;
* requests/s through the gateway at concurrency 1 and 32 (gateway on one core = per-core figure).

Non-streaming and streaming. Needs ``wrk`` (``apt-get install -y wrk``) and ``taskset``.

    python tests/performance/bench_proxy.py [--duration 5] [--gateway-core 0] [--load-core 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

_CHAT = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1,
    "model": "bench",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Hello there!"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
}
_REQUEST = {"model": "remote", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}

_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[%s]]
done = function(summary, latency, requests)
  io.write(string.format('{"p50_us": %%d, "p99_us": %%d, "requests": %%d, "duration_us": %%d, "errors": %%d}\\n',
    latency:percentile(50), latency:percentile(99), summary.requests, summary.duration,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.timeout))
end
"""


def _upstream_main(port: int) -> None:
    """The mock upstream: canned answers, HTTP/1.1 keep-alive, no framework."""
    import asyncio

    import uvloop

    body = json.dumps(_CHAT).encode()
    plain = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )
    events = []
    for i, word in enumerate(["Hello", " there", "!", ""]):
        delta = {"role": "assistant", "content": word} if i == 0 else ({"content": word} if word else {})
        chunk = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "bench",
            "choices": [{"index": 0, "delta": delta, "finish_reason": None if word else "stop"}],
        }
        events.append(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"
    stream = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n" + chunked
    )

    class Upstream(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            self.buf += data
            while (end := self.buf.find(b"\r\n\r\n")) >= 0:
                head = self.buf[:end].lower()
                at = head.find(b"content-length:")
                size = int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
                if len(self.buf) < end + 4 + size:
                    return
                payload = self.buf[end + 4 : end + 4 + size]
                self.buf = self.buf[end + 4 + size :]
                self.transport.write(stream if b'"stream":true' in payload else plain)  # type: ignore[attr-defined]

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(Upstream, "127.0.0.1", port, backlog=1024)
        await server.serve_forever()

    uvloop.run(serve())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 240) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: process exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise SystemExit(f"{url} did not come up in {timeout} s")


def _wrk(url: str, body: dict, conns: int, duration: int, core: int, workdir: Path) -> dict:
    script = workdir / f"post-{conns}-{int(body.get('stream', False))}.lua"
    script.write_text(_LUA % json.dumps(body, separators=(",", ":")))
    threads = 1 if conns == 1 else 2
    cmd = [
        "taskset",
        "-c",
        str(core),
        "wrk",
        f"-t{threads}",
        f"-c{conns}",
        f"-d{duration}s",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--gateway-core", type=int, default=0, help="CPU the gateway is pinned to")
    parser.add_argument("--load-core", type=int, default=1, help="CPU for wrk and the mock upstream")
    args = parser.parse_args()
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(
                f"{tool} not found (apt-get install -y {'wrk' if tool == 'wrk' else 'util-linux'})"
            )
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from forge_gateway.tiny_model import build_tiny_model
    from forge_sdk.experts import ExpertModel, ExpertRegistry

    workdir = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    model = build_tiny_model(workdir / "tiny")
    up_port, gw_port = _free_port(), _free_port()
    upstream_url = f"http://127.0.0.1:{up_port}"
    registry = ExpertRegistry(workdir / "experts.json")
    registry.register(ExpertModel(name="remote", endpoint=f"{upstream_url}/v1", timeout=30, max_retries=0))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FORGE_LOG_LEVEL": "warning"}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        up = subprocess.Popen(
            [
                "taskset",
                "-c",
                str(args.load_core),
                sys.executable,
                __file__,
                "--serve-upstream",
                str(up_port),
            ],
            env=env,
        )
        procs.append(up)
        gw_cmd = [
            "taskset", "-c", str(args.gateway_core), sys.executable, "-m", "forge_gateway.cli", "serve",
            "--model", str(model), "--served-model-name", "tiny", "--engine", "transformers",
            "--max-model-len", "256", "--registry", str(registry.config_path), "--host", "127.0.0.1",
            "--port", str(gw_port), "--log-level", "warning",
        ]  # fmt: skip
        gw = subprocess.Popen(gw_cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(gw)
        _wait_http(upstream_url, up, 30)
        _wait_http(f"http://127.0.0.1:{gw_port}/health", gw)
        rows = []
        for stream in (False, True):
            body = {**_REQUEST, "stream": True} if stream else _REQUEST
            direct_url = f"{upstream_url}/v1/chat/completions"
            gw_url = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
            _wrk(gw_url, body, 8, 2, args.load_core, workdir)  # warm-up: connections, caches
            direct = _wrk(direct_url, body, 1, args.duration, args.load_core, workdir)
            via1 = _wrk(gw_url, body, 1, args.duration, args.load_core, workdir)
            via32 = _wrk(gw_url, body, 32, args.duration, args.load_core, workdir)
            errors = direct["errors"] + via1["errors"] + via32["errors"]
            rows.append(("stream" if stream else "non-stream", direct, via1, via32, errors))
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nremote-expert proxy, gateway pinned to CPU {args.gateway_core}, wrk {args.duration} s per cell")
    print(
        f"{'mode':<12}{'direct p50':>12}{'gw p50 c1':>12}{'added p50':>12}{'gw p99 c1':>12}"
        f"{'gw rps c1':>11}{'gw rps c32':>12}{'gw p50 c32':>12}{'errors':>8}"
    )
    for mode, direct, via1, via32, errors in rows:
        added = (via1["p50_us"] - direct["p50_us"]) / 1e3
        print(
            f"{mode:<12}{direct['p50_us'] / 1e3:>10.3f}ms{via1['p50_us'] / 1e3:>10.3f}ms{added:>10.3f}ms"
            f"{via1['p99_us'] / 1e3:>10.3f}ms{via1['rps']:>11.0f}{via32['rps']:>12.0f}"
            f"{via32['p50_us'] / 1e3:>10.3f}ms{errors:>8}"
        )
    print("targets: added p50 <= 1 ms at c=1; >= 1,000 req/s per core (LiteLLM: ~11/17 ms, ~100 rps/core)")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-upstream":
        _upstream_main(int(sys.argv[2]))
    else:
        main()
