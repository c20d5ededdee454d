"""Load on a real `forge-gateway serve` with auth + rate limiting on vs off (wrk on 127.0.0.1).

Two figures per mode:

* ``models``: ``GET /v1/models``, the cheapest authenticated route, so the gateway's own cost
  (auth, GCRA, metrics, access log, framework) dominates; run until at least ``--requests``
  (default 20k) requests, with the server's RSS read before and after.
* ``chat``: ``POST /v1/chat/completions`` with ``max_tokens=1`` on the tiny model (transformers
  engine), where the engine dominates.

Plus an in-process microbenchmark of the security middleware alone around a no-op ASGI app
(the per-request cost it adds, without network or engine).

    python tests/performance/bench_gateway_load.py [--requests 20000] [--connections 16] [--chat-seconds 8]

Needs ``wrk`` (``apt-get install -y wrk``). Prints tables; asserts nothing about speed, but
exits non-zero if any request failed or was rate limited.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from forge_gateway.security import KeyStore
from forge_gateway.tiny_model import build_tiny_model
from tests.support import GatewayProcess

_CHAT_LUA = """
wrk.method = "POST"
wrk.body = '{"model": "tiny", "messages": [{"role": "user", "content": "Say one word."}], "max_tokens": 1}'
wrk.headers["Content-Type"] = "application/json"
"""


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _ms(value: str) -> float:
    number, unit = re.match(r"([\d.]+)(\w+)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def run_wrk(url: str, seconds: float, connections: int, headers: dict[str, str], lua: str | None) -> dict:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    for name, value in headers.items():
        cmd += ["-H", f"{name}: {value}"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(lua or "")
    if lua:
        cmd += ["-s", script.name]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    os.unlink(script.name)
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(bad.group(1)) if bad else 0) + (
        sum(map(int, socket_errors.groups())) if socket_errors else 0
    )
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return {
        "requests": requests,
        "rps": rps,
        "p50": _ms(latency["50"]),
        "p99": _ms(latency["99"]),
        "errors": errors,
    }


def bench_mode(model: Path, tmp: Path, auth: bool, args: argparse.Namespace) -> list[dict]:
    db = tmp / f"keys-{auth}.db"
    headers: dict[str, str] = {}
    if auth:
        key, _ = KeyStore(db).create("bench", rpm=10**9, tpm=10**12)  # limits enforced, never hit
        headers["Authorization"] = f"Bearer {key}"
    env = {"FORGE_AUTH_DB_PATH": str(db), "FORGE_LOG_LEVEL": "warning"}
    serve = ["--model", str(model), "--served-model-name", "tiny", "--engine", "transformers"]
    serve += ["--classifier", "keyword"]
    rows = []
    with GatewayProcess(serve, env=env, log_path=tmp / f"gw-{auth}.log") as gw:
        assert gw.proc is not None
        pid = gw.proc.pid
        run_wrk(f"{gw.base_url}/v1/models", 2, args.connections, headers, None)  # warm-up
        before = rss_mib(pid)
        done, totals = 0, {"requests": 0, "errors": 0, "seconds": 0.0, "p50": [], "p99": []}
        while done < args.requests:
            started = time.monotonic()
            r = run_wrk(f"{gw.base_url}/v1/models", args.models_seconds, args.connections, headers, None)
            totals["seconds"] += time.monotonic() - started
            done += r["requests"]
            totals["requests"] += r["requests"]
            totals["errors"] += r["errors"]
            totals["p50"].append(r["p50"])
            totals["p99"].append(r["p99"])
        after = rss_mib(pid)
        rows.append(
            {
                "mode": "on" if auth else "off",
                "endpoint": "GET /v1/models",
                "requests": totals["requests"],
                "rps": totals["requests"] / totals["seconds"],
                "p50": max(totals["p50"]),
                "p99": max(totals["p99"]),
                "errors": totals["errors"],
                "rss": f"{before:.0f} -> {after:.0f}",
            }
        )
        chat = run_wrk(
            f"{gw.base_url}/v1/chat/completions", args.chat_seconds, args.connections, headers, _CHAT_LUA
        )
        rows.append(
            {
                "mode": "on" if auth else "off",
                "endpoint": "POST chat max_tokens=1",
                **chat,
                "rss": f"{rss_mib(pid):.0f}",
            }
        )
    return rows


async def middleware_overhead(n: int) -> list[tuple[str, float]]:
    """Microseconds per request the security middleware adds around a no-op ASGI app."""
    from forge_gateway.config import load_config
    from forge_gateway.security.auth import Authenticator
    from forge_gateway.security.layer import SecurityLayer
    from forge_gateway.security.middleware import SecurityMiddleware

    class _Engine:
        def stats(self):
            return type("S", (), {"running": 0, "waiting": 0})()

    class _Gateway:
        def __init__(self, config) -> None:
            self.config = config
            self.engine = _Engine()
            self.usage_listeners: list = []

    async def app(scope, receive, send) -> None:
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        return None

    from forge_gateway.observability.logs import configure_logging

    # The production log pipeline (JSON lines), written to /dev/null instead of the terminal.
    real_stderr, sys.stderr = sys.stderr, open(os.devnull, "w")
    configure_logging("info", json=True)
    sys.stderr = real_stderr
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, with_key in (("no key (open mode)", False), ("key + RPM + metrics", True)):
            db = Path(tmp) / f"{with_key}.db"
            headers = [(b"host", b"bench")]
            if with_key:
                key, _ = KeyStore(db).create("bench", rpm=10**9)
                headers.append((b"authorization", f"Bearer {key}".encode()))
            config = load_config(overrides={"model": "x", "auth": {"db_path": str(db)}}, environ={})
            layer = SecurityLayer(config, _Gateway(config))  # type: ignore[arg-type]
            await layer.store.open()
            layer.authenticator = Authenticator(layer.store, open_allowed=True)
            await layer.authenticator.reload()
            mw = SecurityMiddleware(app, layer)
            scope = {"type": "http", "method": "GET", "path": "/v1/models", "headers": headers}
            for _ in range(500):
                await mw(dict(scope), receive, send)
            started = time.perf_counter()
            for _ in range(n):
                await mw(dict(scope), receive, send)
            per_request = (time.perf_counter() - started) / n * 1e6
            started = time.perf_counter()
            for _ in range(n):
                await app(dict(scope), receive, send)
            bare = (time.perf_counter() - started) / n * 1e6
            results.append((label, per_request - bare))
            await layer.store.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20000, help="GET /v1/models requests per mode (min)")
    parser.add_argument("--models-seconds", type=float, default=10, help="wrk run length for /v1/models")
    parser.add_argument("--chat-seconds", type=float, default=8, help="wrk run length for chat")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("--micro", type=int, default=20000, help="middleware microbenchmark iterations")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2
    micro = asyncio.run(middleware_overhead(args.micro))
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        model = build_tiny_model(tmp / "tiny")
        rows = bench_mode(model, tmp, False, args) + bench_mode(model, tmp, True, args)
    print(f"\nsecurity middleware alone (in-process, {args.micro} requests, no-op inner app):")
    for label, us in micro:
        print(f"  {label:<24} {us:7.1f} us/request added")
    print(f"\nwrk -t1 -c{args.connections} on 127.0.0.1, transformers engine, tiny model; auth+RL on vs off:")
    header = f"{'auth+RL':<8} {'endpoint':<24} {'requests':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}  RSS MiB"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['mode']:<8} {r['endpoint']:<24} {r['requests']:>9} {r['rps']:>8.0f} {r['p50']:>8.2f} "
            f"{r['p99']:>8.2f} {r['errors']:>7}  {r['rss']}"
        )
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
