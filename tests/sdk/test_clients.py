"""The SDK clients (SDD §7.2) against a real ``forge-gateway serve`` subprocess.

RouterClient lists experts, asks for routing decisions and generates; errors come back as the
SDK's error classes; connect errors are retried with backoff before they surface.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from forge_sdk import errors
from forge_sdk.clients import AsyncInferenceClient, InferenceClient, RouterClient
from forge_sdk.retry import RetryPolicy
from tests.support import GatewayProcess, free_port

pytest.importorskip("forge_plugins.routing")


@pytest.fixture(scope="module")
def gateway(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    log = tmp_path_factory.mktemp("clients") / "gateway.log"
    args = ["--model", str(tiny_model_dir), "--served-model-name", "tiny", "--engine", "transformers"]
    with GatewayProcess(
        [*args, "--max-model-len", "256", "--classifier", "keyword"],
        env={"FORGE_PLUGINS": "default_experts,routing"},  # only the built-ins: fixed expert set
        log_path=log,
    ) as gw:
        yield gw


@pytest.fixture
def router(gateway: GatewayProcess) -> Iterator[RouterClient]:
    with RouterClient(gateway.base_url, timeout=30) as client:
        yield client


def test_list_experts(router: RouterClient) -> None:
    experts = {e["name"]: e for e in router.list_experts()}
    assert set(experts) == {"general", "code", "math", "writing"}
    assert experts["code"]["endpoint"] == "local" and experts["code"]["description"]


def test_route(router: RouterClient) -> None:
    decision = router.route("Fix this python function, it raises a KeyError")
    assert decision["expert"] == "code" and decision["endpoint"] == "local"
    assert 0 < decision["confidence"] <= 1 and decision["classifier"] == "keyword"
    assert router.route("Write a short poem about snow")["expert"] == "writing"


def test_generate_and_chat(router: RouterClient) -> None:
    answer = router.generate(prompt="Solve the equation 2x = 10", max_tokens=4, temperature=0)
    assert answer["expert"] == "math" and isinstance(answer["text"], str) and answer["tokens_used"] > 0
    forced = router.generate(messages=[{"role": "user", "content": "hi"}], expert="writing", max_tokens=2)
    assert forced["expert"] == "writing"
    chat = router.chat("Write a story about a dragon", system="Be brief.", max_tokens=3, temperature=0)
    assert chat["object"] == "chat.completion" and chat["model"] == "writing"
    assert router.health()["status"] == "healthy"


def test_errors_are_sdk_error_classes(router: RouterClient) -> None:
    with pytest.raises(errors.NotFoundError) as missing:
        router.generate(prompt="hi", expert="nobody")
    assert missing.value.status_code == 404 and missing.value.code == "model_not_found"
    assert "nobody" in missing.value.message
    with pytest.raises(errors.InvalidRequestError) as bad:
        router.route("   ")
    assert bad.value.status_code == 400 and bad.value.param == "query"
    with pytest.raises(errors.InvalidRequestError):
        router.generate(max_tokens=3)  # neither prompt nor messages


def test_connect_errors_are_retried_with_backoff_then_raised() -> None:
    policy = RetryPolicy(max_retries=2, base_delay=0.05, jitter=0.0)
    with RouterClient(f"http://127.0.0.1:{free_port()}", timeout=2, retry=policy) as client:
        start = time.monotonic()
        with pytest.raises(httpx.ConnectError):
            client.list_experts()
        assert time.monotonic() - start >= 0.05 + 0.1  # two backoff sleeps happened


async def test_async_client(gateway: GatewayProcess) -> None:
    async with AsyncInferenceClient(gateway.base_url, timeout=30) as client:
        answer = await client.generate(prompt="Write a python script that prints 1", max_tokens=2)
        assert answer["expert"] == "code"
        chat = await client.chat("calculate 15 percent of 80", max_tokens=2, model="auto")
        assert chat["model"] == "math"
        with pytest.raises(errors.NotFoundError):
            await client.chat("hi", model="nobody")


def test_inference_client_against_the_base_model(gateway: GatewayProcess) -> None:
    with InferenceClient(gateway.base_url) as client:
        chat = client.chat("hello", model="tiny", max_tokens=2)
        assert chat["model"] == "tiny" and chat["usage"]["completion_tokens"] >= 1
