"""Prometheus /metrics: request, latency, token, rate-limit and engine figures match what happened."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from forge_gateway.security import KeyStore
from tests.gateway.test_limits import chat, gateway_client


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_follow_traffic(tiny_model_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "k.db"
    store = KeyStore(db)
    user, _ = store.create("user", rpm=5)
    admin, _ = store.create("ops", admin=True)
    u = {"Authorization": f"Bearer {user}"}
    a = {"Authorization": f"Bearer {admin}"}
    async with gateway_client(tiny_model_dir, db) as client:
        assert (await client.get("/metrics", headers=u)).status_code == 403
        totals = [0, 0]
        for _ in range(2):
            resp = await client.post("/v1/chat/completions", json=chat(max_tokens=3), headers=u)
            assert resp.status_code == 200
            totals[0] += resp.json()["usage"]["prompt_tokens"]
            totals[1] += resp.json()["usage"]["completion_tokens"]
        statuses = [(await client.get("/v1/models", headers=u)).status_code for _ in range(5)]
        # 5 per minute: 2 chats + 3 model lists; the refused /metrics call (403) cost nothing.
        assert statuses == [200, 200, 200, 429, 429]
        assert (await client.get("/v1/models")).status_code == 401
        assert (await client.get("/no/such/route", headers=a)).status_code == 404
        resp = await client.get("/metrics", headers=a)
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
        m = samples(resp.text)
    assert value(m, "forge_requests_total", route="/v1/chat/completions", status="200", expert="tiny") == 2
    assert value(m, "forge_requests_total", route="/v1/models", status="429", expert="") == 2
    assert value(m, "forge_requests_total", route="/v1/models", status="401", expert="") == 1
    assert value(m, "forge_requests_total", route="unmatched", status="404", expert="") == 1
    assert value(m, "forge_rate_limited_total", kind="requests") == 2
    assert value(m, "forge_auth_failures_total", status="401") == 1
    assert value(m, "forge_auth_failures_total", status="403") == 1
    assert value(m, "forge_tokens_total", direction="in", expert="tiny") == totals[0]
    assert value(m, "forge_tokens_total", direction="out", expert="tiny") == totals[1]
    assert value(m, "forge_request_duration_seconds_count", route="/v1/chat/completions") == 2
    assert value(m, "forge_request_duration_seconds_sum", route="/v1/chat/completions") > 0
    # Gauges read the engine and the admission queue at scrape time (all idle now).
    for gauge in (
        "forge_engine_running_requests",
        "forge_engine_queue_depth",
        "forge_gateway_inflight_requests",
        "forge_gateway_queued_requests",
    ):
        assert (gauge, ()) in m and m[(gauge, ())] == 0


async def test_public_metrics_option(tiny_model_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "k.db"
    KeyStore(db).create("someone")
    async with gateway_client(tiny_model_dir, db, auth={"public_metrics": True}) as client:
        resp = await client.get("/metrics")
        assert resp.status_code == 200 and "forge_requests_total" in resp.text
        assert (await client.get("/v1/models")).status_code == 401


@pytest.mark.parametrize("given", ["req-1", "a" * 128])
async def test_request_id_on_every_response(tiny_model_dir: Path, tmp_path: Path, given: str) -> None:
    async with gateway_client(tiny_model_dir, tmp_path / "none.db", host="127.0.0.1") as client:
        for resp in (
            await client.get("/health", headers={"x-request-id": given}),
            await client.post("/v1/chat/completions", content=b"{", headers={"x-request-id": given}),
        ):
            assert resp.headers["x-request-id"] == given
        too_long = await client.get("/health", headers={"x-request-id": "a" * 129})
        assert too_long.headers["x-request-id"] != "a" * 129
        assert isinstance(httpx.Headers(too_long.headers)["x-request-id"], str)
