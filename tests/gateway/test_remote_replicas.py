"""Remote experts with several replicas: balancing, failover, per-replica cooldown and health probes.

Real HTTP servers on 127.0.0.1 (the scripted ``MockUpstream`` of test_remote) stand in for the
replicas of one vLLM deployment. Under concurrent load one replica is killed: no request is lost
(each fails over to another replica) and its traffic moves to the others; brought back on the
same port, a health probe ends its cooldown and traffic returns well before ``cooldown_s``. A real
``forge-gateway serve`` shows per-replica state in ``/experts`` and ``/metrics`` and refuses a
forbidden address in ``endpoints``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from forge_gateway.routing import Target
from forge_gateway.upstream.pool import UpstreamPool
from forge_sdk.experts import ExpertModel, ExpertRegistry
from tests.gateway.test_remote import MockUpstream
from tests.support import GatewayProcess

pytestmark = pytest.mark.asyncio(loop_scope="session")


class Replica(MockUpstream):
    """A mock upstream that can stop and start again on the same port."""

    async def start(self, port: int = 0) -> None:  # type: ignore[override]
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", port, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]

    def served(self) -> int:
        return sum(1 for r in self.requests if r["path"].endswith("/chat/completions"))


@pytest_asyncio.fixture(loop_scope="session")
async def replicas() -> AsyncIterator[list[Replica]]:
    servers = [Replica() for _ in range(3)]
    for server in servers:
        await server.start()
    yield servers
    for server in servers:
        await server.stop()


def _body() -> bytes:
    return json.dumps({"model": "rep", "messages": [{"role": "user", "content": "hi"}]}).encode()


async def test_kill_one_replica_under_load_then_bring_it_back(replicas: list[Replica]) -> None:
    a, b, c = replicas
    expert = ExpertModel(
        name="rep", endpoint=a.url("ok"), endpoints=[b.url("ok"), c.url("ok")], max_retries=0, timeout=5
    )
    target = Target("rep", expert, "requested")
    # cooldown_s is long: traffic can only come back to b through a health probe.
    pool = UpstreamPool(failure_threshold=1, cooldown_s=60, retry_base_delay=0.01, health_check_interval=0.1)
    await pool.start()
    statuses: list[int] = []
    done = 0

    async def client(n: int) -> None:
        nonlocal done
        for _ in range(n):
            reply = await pool.call(target, _body(), "chat/completions", stream=False)
            statuses.append(reply.status)
            done += 1

    try:
        load = [asyncio.create_task(client(40)) for _ in range(8)]  # 320 requests, 8 at a time
        while done < 80:
            await asyncio.sleep(0.005)
        before_kill = [r.served() for r in replicas]
        assert all(n > 5 for n in before_kill), before_kill  # all three shared the load
        await b.stop()  # killed mid-load: its open connections are cut
        b_at_kill = b.served()
        await asyncio.gather(*load)
        # Nothing lost: every request got the upstream's answer, none fell back or failed.
        assert statuses == [200] * 320
        assert b.served() <= b_at_kill + 8  # at most the requests in flight when it died
        assert a.served() + c.served() >= 320 - b_at_kill
        status = pool.status(expert)
        states = {r["endpoint"]: r for r in status["replicas"]}
        assert states[b.url("ok")]["state"] == "cooldown" and states[b.url("ok")]["last_error"]
        assert states[a.url("ok")]["state"] == "ok" and status["state"] == "ok"
        assert all(r["outstanding"] == 0 for r in status["replicas"])

        await b.start(b.port)  # back on the same port
        deadline = time.monotonic() + 10
        while pool.status(expert)["replicas"][1]["state"] != "ok":
            assert time.monotonic() < deadline, "the health probe did not end b's cooldown"
            await asyncio.sleep(0.05)
        b_back = b.served()
        await asyncio.gather(*(client(20) for _ in range(6)))
        assert b.served() - b_back >= 15, "traffic did not return to the recovered replica"
        assert statuses.count(200) == len(statuses) == 440
    finally:
        await pool.stop()
        if b.server is None or not b.server.is_serving():
            await b.start(b.port)


async def test_all_replicas_down_falls_back_after_trying_each(replicas: list[Replica]) -> None:
    from forge_sdk.errors import ExpertUnavailableError, UpstreamError

    a, b, _ = replicas
    a.fail_next["ok"] = b.fail_next["ok"] = 1  # each answers 503 once
    expert = ExpertModel(name="two", endpoint=a.url("ok"), endpoints=[b.url("ok")], max_retries=0)
    pool = UpstreamPool(failure_threshold=1, cooldown_s=60, retry_base_delay=0.01, health_check_interval=0)
    await pool.start()
    try:
        seen = a.served() + b.served()
        with pytest.raises(UpstreamError, match="HTTP 503"):
            await pool.call(Target("two", expert, "requested"), _body(), "chat/completions", stream=False)
        assert a.served() + b.served() == seen + 2  # one try on each replica before giving up
        with pytest.raises(ExpertUnavailableError):  # both cooling: straight to the fallback
            await pool.call(Target("two", expert, "requested"), _body(), "chat/completions", stream=False)
        assert pool.status(expert)["state"] == "cooldown"
    finally:
        await pool.stop()


def test_endpoints_without_endpoint_is_refused() -> None:
    from forge_sdk.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="give the first one as endpoint"):
        ExpertModel.from_dict({"name": "x", "endpoints": ["http://127.0.0.1:9/v1"]})


async def test_gateway_shows_replicas_in_experts_and_metrics(
    replicas: list[Replica], tiny_model_dir: Path, tmp_path: Path
) -> None:
    a, b, _ = replicas
    registry = ExpertRegistry(tmp_path / "experts.json")
    registry.register(ExpertModel(name="rep", endpoint=a.url("ok"), endpoints=[b.url("ok")], max_retries=0))
    args = ["--model", str(tiny_model_dir), "--served-model-name", "tiny", "--engine", "transformers"]
    args += ["--classifier", "keyword", "--registry", str(registry.config_path)]
    gw = await asyncio.to_thread(GatewayProcess(args, log_path=tmp_path / "gw.log").start)
    try:
        async with httpx.AsyncClient(base_url=gw.base_url, timeout=30) as http:
            body = {"model": "rep", "messages": [{"role": "user", "content": "hi"}]}
            results = await asyncio.gather(*(http.post("/v1/chat/completions", json=body) for _ in range(20)))
            assert all(r.status_code == 200 for r in results)
            experts = {e["name"]: e for e in (await http.get("/experts")).json()["experts"]}
            reps = experts["rep"]["status"]["replicas"]
            assert [r["endpoint"] for r in reps] == [a.url("ok"), b.url("ok")]
            assert sum(r["requests"] for r in reps) == 20 and all(r["requests"] > 0 for r in reps)
            metrics = (await http.get("/metrics")).text
            for url in (a.url("ok"), b.url("ok")):
                assert f'forge_upstream_replica_up{{endpoint="{url}",expert="rep"}} 1.0' in metrics
            assert "forge_upstream_replica_requests_total" in metrics
            # Every replica is an address the gateway posts prompts to: each one is checked.
            bad = {"name": "evil", "endpoint": a.url("ok"), "endpoints": ["http://169.254.169.254/v1"]}
            refused = await http.post("/admin/experts", json=bad)
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"]["type"] == "invalid_request_error"
    finally:
        await asyncio.to_thread(gw.stop)
