"""Gateway replicas sharing PostgreSQL (keys, usage) and Redis (rate limits): throughput and limit accuracy.

On 127.0.0.1: a PostgreSQL server (initdb as in the tests), a redis-server, the fast mock
OpenAI upstream of ``bench_proxy.py`` registered as the remote expert ``remote``, and one or two
``forge-gateway serve`` processes against the same database and Redis. ``wrk`` sends an authed
(``Authorization: Bearer``) non-streaming chat request for ``remote``:

* req/s and p99 with one replica, then with two (one wrk per replica at once; summed req/s, worst p99);
* shared-limit accuracy: a key with ``--rpm`` hammered through both replicas at once. GCRA lets a
  key burst its whole minute, then refill steadily, so over ``T`` seconds it may be admitted
  ``rpm + rpm * T / 60`` requests in total — across replicas, since the state lives in Redis.

Everything shares this machine's cores (the load generator, upstream, database and Redis too), so
two replicas show what they add on *this* box, not on two hosts; compare ratios within one run.
Needs ``wrk``, ``redis-server`` and PostgreSQL's server binaries.

    python tests/performance/bench_replicas.py [--duration 5] [--conns 32] [--rpm 600]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

_REQUEST = {"model": "remote", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}
_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
wrk.body = [[%s]]
done = function(summary, latency, requests)
  io.write(string.format('{"p50_us": %%d, "p99_us": %%d, "requests": %%d, "duration_us": %%d, "non2xx": %%d, "errors": %%d}\\n',
    latency:percentile(50), latency:percentile(99), summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.timeout))
end
"""


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 240) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: process exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{url} did not come up in {timeout} s")


def _wrk_start(url: str, key: str, conns: int, duration: float, workdir: Path) -> subprocess.Popen[str]:
    # One script per run and target: a shared file rewritten while another wrk reads it is empty.
    script = Path(tempfile.mkstemp(suffix=".lua", dir=workdir)[1])
    script.write_text(_LUA % (key, json.dumps(_REQUEST, separators=(",", ":"))))
    cmd = [
        "wrk",
        "-t1",
        f"-c{conns}",
        f"-d{max(1, round(duration))}s",
        "-s",
        str(script),
        url + "/v1/chat/completions",
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wrk_result(proc: subprocess.Popen[str]) -> dict:
    out, err = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"wrk failed ({proc.returncode}): {out} {err}")
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        raise SystemExit(f"wrk printed no summary: {out} {err}")
    result = json.loads(lines[-1])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def _run_load(urls: list[str], key: str, conns: int, duration: float, workdir: Path) -> dict:
    """wrk against every url at once (conns split between them); summed req/s, worst p99."""
    procs = [_wrk_start(url, key, max(1, conns // len(urls)), duration, workdir) for url in urls]
    results = [_wrk_result(p) for p in procs]
    return {
        "rps": sum(r["rps"] for r in results),
        "ok_rps": sum((r["requests"] - r["non2xx"]) / (r["duration_us"] / 1e6) for r in results),
        "p50_ms": max(r["p50_us"] for r in results) / 1e3,
        "p99_ms": max(r["p99_us"] for r in results) / 1e3,
        "requests": sum(r["requests"] for r in results),
        "admitted": sum(r["requests"] - r["non2xx"] for r in results),
        "seconds": max(r["duration_us"] for r in results) / 1e6,
        "errors": sum(r["errors"] for r in results),
    }


def _revocation_under_load(
    urls: list[str], key: str, admin_key: str, workdir: Path
) -> tuple[float, float, float]:
    """A revoke through replica 1 while wrk loads both replicas with that key, in milliseconds:
    the DELETE's own time, then from its answer until replica 2 refuses the key as
    ``(lower, upper)``: the start of the last poll it accepted, the end of the first it refused."""
    import httpx

    from forge_gateway.security.keys import parse_key

    key_id = parse_key(key)[0]  # type: ignore[index]
    chat = {"json": _REQUEST, "headers": {"Authorization": f"Bearer {key}"}}
    deadline = time.monotonic() + 10
    while httpx.post(urls[1] + "/v1/chat/completions", timeout=30, **chat).status_code != 200:  # type: ignore[arg-type]
        if time.monotonic() > deadline:
            raise SystemExit("replica 2 never accepted the new key")
        time.sleep(0.1)
    procs = [_wrk_start(url, key, 8, 4, workdir) for url in urls]
    time.sleep(1)
    admin = {"Authorization": f"Bearer {admin_key}"}
    started = time.monotonic()
    if httpx.delete(f"{urls[0]}/admin/keys/{key_id}", headers=admin, timeout=30).status_code != 200:
        raise SystemExit("revoke failed")
    revoked_at = time.monotonic()  # the DELETE's answer: committed, version bumped
    accepted_at = revoked_at
    with httpx.Client(timeout=30) as client:  # one connection: no connect per poll
        while True:
            poll = time.monotonic()
            if client.post(urls[1] + "/v1/chat/completions", **chat).status_code == 401:  # type: ignore[arg-type]
                break
            accepted_at = poll
            if poll - started > 30:
                raise SystemExit("replica 2 still accepts a key revoked 30 s ago")
            time.sleep(0.01)
    refused_at = time.monotonic()
    for proc in procs:
        _wrk_result(proc)
    return (revoked_at - started) * 1e3, (accepted_at - revoked_at) * 1e3, (refused_at - revoked_at) * 1e3


def _ledger(urls: list[str], admin_key: str, keys: dict[str, str]) -> dict[str, int]:
    """Requests per named key in the shared usage table, after every replica flushed."""
    import httpx

    from forge_gateway.security.keys import parse_key

    admin = {"Authorization": f"Bearer {admin_key}"}
    time.sleep(1)  # requests wrk abandoned at the end of a run finish and are counted
    rows: list[dict] = []
    for url in urls:  # /admin/usage flushes that replica's pending counts before reading
        rows = httpx.get(url + "/admin/usage", headers=admin, timeout=30).json()["data"]
    ids = {parse_key(key)[0]: name for name, key in keys.items()}  # type: ignore[index]
    return {name: sum(r["requests"] for r in rows if ids.get(r["key_id"]) == name) for name in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--conns", type=int, default=32, help="connections in total (split across replicas)")
    parser.add_argument("--rpm", type=int, default=600, help="requests per minute of the limited key")
    parser.add_argument("--repeat", type=int, default=2, help="throughput runs per setup; the best is kept")
    args = parser.parse_args()
    for tool in ("wrk", "redis-server"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found (apt-get install -y {tool})")
    from forge_gateway.tiny_model import build_tiny_model
    from forge_sdk.experts import ExpertModel, ExpertRegistry
    from tests.gateway.test_ratelimit import start_redis
    from tests.services import PostgresServer, postgres_bin
    from tests.support import free_port

    bindir = postgres_bin()
    if bindir is None:
        raise SystemExit("PostgreSQL server binaries not found (apt-get install -y postgresql)")
    workdir = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    procs: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FORGE_LOG_LEVEL": "warning"}
    try:
        with PostgresServer(bindir) as pg:
            redis_proc, redis_url = start_redis(workdir)
            procs.append(redis_proc)
            model = build_tiny_model(workdir / "tiny")
            up_port = free_port()
            upstream = subprocess.Popen(
                [
                    sys.executable,
                    str(Path(__file__).with_name("bench_proxy.py")),
                    "--serve-upstream",
                    str(up_port),
                ],
                env=env,
            )
            procs.append(upstream)
            registry = ExpertRegistry(workdir / "experts.json")
            registry.register(
                ExpertModel(
                    name="remote", endpoint=f"http://127.0.0.1:{up_port}/v1", timeout=30, max_retries=0
                )
            )
            fast_key = pg.create_key(pg.url, "bench")
            admin_key = pg.create_key(pg.url, "ops", admin=True)
            gw_env = {
                **env,
                "FORGE_AUTH_DATABASE_URL": pg.url,
                "FORGE_RATE_LIMIT_BACKEND": "redis",
                "FORGE_RATE_LIMIT_REDIS_URL": redis_url,
            }
            urls = []
            for _ in range(2):
                port = free_port()
                cmd = [
                    sys.executable, "-m", "forge_gateway.cli", "serve", "--model", str(model),
                    "--served-model-name", "tiny", "--engine", "transformers", "--max-model-len", "256",
                    "--registry", str(registry.config_path), "--host", "127.0.0.1", "--port", str(port),
                    "--log-level", "warning",
                ]  # fmt: skip
                gw = subprocess.Popen(cmd, env=gw_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                procs.append(gw)
                urls.append(f"http://127.0.0.1:{port}")
                _wait_http(urls[-1] + "/health", gw)
            import httpx

            for url in urls:  # one real answer from each replica before measuring anything
                check = httpx.post(
                    url + "/v1/chat/completions",
                    json=_REQUEST,
                    headers={"Authorization": f"Bearer {fast_key}"},
                    timeout=30,
                )
                if check.status_code != 200:
                    raise SystemExit(f"{url}: {check.status_code} {check.text}")
            fast_served = len(urls) + _run_load(urls, fast_key, 8, 1, workdir)["admitted"]  # warm-up
            best: dict[str, dict] = {}
            for _ in range(args.repeat):
                for name, targets in (("1 replica", urls[:1]), ("2 replicas", urls)):
                    result = _run_load(targets, fast_key, args.conns, args.duration, workdir)
                    fast_served += result["admitted"]
                    if name not in best or result["ok_rps"] > best[name]["ok_rps"]:
                        best[name] = result
            # Shared limit: a fresh key with --rpm, hammered through both replicas at once.
            limited = pg.create_key(pg.url, "limited", rpm=args.rpm)
            time.sleep(1.5)  # both replicas' refresh loops pick the new key up
            limit_run = _run_load(urls, limited, args.conns, args.duration, workdir)
            revoke_ms = sorted(  # by the DELETE's time
                _revocation_under_load(urls, pg.create_key(pg.url, f"doomed-{i}"), admin_key, workdir)
                for i in range(3)
            )
            ledger = _ledger(urls, admin_key, {"bench": fast_key, "limited": limited})
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)

    load = os.getloadavg()
    print(
        f"\nreplicas behind one PostgreSQL + Redis, authed remote-expert chat, {args.conns} connections, "
        f"best of {args.repeat} x {args.duration:g} s; {os.cpu_count()} cores shared by everything; "
        f"load average {load[0]:.1f}"
    )
    print(f"{'setup':<12}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for name, r in best.items():
        print(f"{name:<12}{r['ok_rps']:>9.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['errors']:>8}")
    ratio = best["2 replicas"]["ok_rps"] / best["1 replica"]["ok_rps"]
    print(f"2 replicas / 1 replica throughput: {ratio:.2f}x")
    print(
        f"usage ledger (PostgreSQL, both replicas' flushes summed): bench key {ledger['bench']} requests "
        f"recorded vs {fast_served} answered 2xx to wrk (+{ledger['bench'] - fast_served}: wrk drops what is "
        f"in flight when a run ends, up to {args.conns} a run); limited key {ledger['limited']} vs {limit_run['admitted']}"
    )
    print(
        "revocation through replica 1 refused by replica 2 after "
        f"{', '.join(f'{lo:.0f}-{hi:.0f}' for _, lo, hi in revoke_ms)} ms after the DELETE answered "
        f"(which took {', '.join(f'{d:.0f}' for d, _, _ in revoke_ms)} ms; 3 tries, both replicas under wrk load; "
        "auth.refresh_interval 1 s)"
    )
    allowed = args.rpm + args.rpm * limit_run["seconds"] / 60
    print(
        f"shared limit: rpm {args.rpm}, {limit_run['seconds']:.1f} s through both replicas: "
        f"{limit_run['requests']} sent, {limit_run['admitted']} admitted, GCRA allowance {allowed:.0f} "
        f"(admitted/allowance {limit_run['admitted'] / allowed:.3f}; per-replica limits would admit ~{2 * allowed:.0f})"
    )


if __name__ == "__main__":
    main()
