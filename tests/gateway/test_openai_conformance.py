"""The official ``openai`` client against a real ``forge-gateway serve`` subprocess (vLLM engine)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support import GatewayProcess

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def gateway(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    log = tmp_path_factory.mktemp("gw") / "gateway.log"
    with GatewayProcess(
        ["--model", str(tiny_model_dir), "--served-model-name", "tiny", "--max-model-len", "1024"],
        log_path=log,
    ) as gw:
        yield gw


@pytest.fixture(scope="module")
def client(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key="unused", max_retries=0)


def test_models_list(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == "tiny" and "auto" in ids


def test_chat_non_streaming(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello there"}], max_tokens=8, temperature=0
    )
    choice = resp.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("length", "stop")
    assert resp.usage is not None and resp.usage.completion_tokens <= 8
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    if choice.finish_reason == "length":
        assert resp.usage.completion_tokens == 8
    # Greedy is deterministic.
    again = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello there"}], max_tokens=8, temperature=0
    )
    assert again.choices[0].message.content == choice.message.content


def test_chat_streaming_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "hello there"}],
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishes) == 1
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None and last.usage.completion_tokens >= 1
    full = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello there"}], max_tokens=8, temperature=0
    )
    assert text == full.choices[0].message.content


def test_n_and_max_completion_tokens_and_seed(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "hi"}],
        max_completion_tokens=5,
        n=3,
        temperature=1.0,
        seed=7,
    )
    assert sorted(c.index for c in resp.choices) == [0, 1, 2]
    again = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "hi"}],
        max_completion_tokens=5,
        n=3,
        temperature=1.0,
        seed=7,
    )
    assert [c.message.content for c in again.choices] == [c.message.content for c in resp.choices]
    assert resp.usage.completion_tokens <= 15


def test_stop_sequence_is_honoured(client: openai.OpenAI) -> None:
    base = client.completions.create(model="tiny", prompt="The quick brown", max_tokens=12, temperature=0)
    text = base.choices[0].text
    if len(text) < 4:
        pytest.skip("tiny model produced too little text to pick a stop string")
    stop = text[2:4]
    cut = client.completions.create(
        model="tiny", prompt="The quick brown", max_tokens=12, temperature=0, stop=[stop]
    )
    assert cut.choices[0].finish_reason == "stop"
    assert stop not in cut.choices[0].text and text.startswith(cut.choices[0].text)


def test_completions(client: openai.OpenAI) -> None:
    resp = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=6, temperature=0)
    assert resp.object == "text_completion" and resp.usage.completion_tokens <= 6
    chunks = list(
        client.completions.create(
            model="tiny", prompt="Once upon a time", max_tokens=6, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == resp.choices[0].text


def test_errors_in_openai_shape(client: openai.OpenAI, gateway: GatewayProcess) -> None:
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert nf.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="tiny", messages=[{"role": "wizard", "content": "x"}])
    assert bad.value.body["param"] == "messages[0].role"
    with pytest.raises(openai.BadRequestError) as ctx:
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "word " * 1500}], max_tokens=10
        )
    assert ctx.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "x"}], temperature=5
        )
    raw = httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert raw.status_code == 400 and raw.json()["error"]["code"] == "invalid_json"
    missing = httpx.get(f"{gateway.base_url}/v1/nothing-here")
    assert missing.status_code == 404 and set(missing.json()["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in gateway.log_text()


def test_openapi_schema_served(gateway: GatewayProcess) -> None:
    schema = httpx.get(f"{gateway.base_url}/openapi/openapi.json").json()
    assert "/v1/chat/completions" in schema["paths"] and "/generate" in schema["paths"]


def test_health_and_sdd_generate(gateway: GatewayProcess) -> None:
    health = httpx.get(f"{gateway.base_url}/health").json()
    assert health["status"] == "healthy" and health["engine"]["name"] == "vllm"
    resp = httpx.post(
        f"{gateway.base_url}/generate", json={"prompt": "hi", "max_tokens": 4, "expert": "tiny"}
    )
    body = resp.json()
    assert resp.status_code == 200 and body["expert"] == "tiny" and body["tokens_used"] > 0


def test_client_disconnect_mid_stream_aborts_generation(gateway: GatewayProcess) -> None:
    import time

    body = {
        "model": "tiny",
        "prompt": "Once",
        "max_tokens": 1000,
        "ignore_eos": True,  # so only the disconnect can end it early
        "temperature": 1.0,
        "seed": 1,
        "stream": True,
    }
    with httpx.Client(base_url=gateway.base_url, timeout=60) as http:
        with http.stream("POST", "/v1/completions", json=body) as resp:
            lines = resp.iter_lines()
            seen = [next(lines) for _ in range(6)]
            assert all(line.startswith("data: ") or line == "" for line in seen)
            running_during = http.get("/health").json()["engine"]["running"]
        # Leaving the block closed the connection mid-stream.
    deadline = time.monotonic() + 20
    running_after = None
    with httpx.Client(base_url=gateway.base_url, timeout=10) as http:
        while time.monotonic() < deadline:
            running_after = http.get("/health").json()["engine"]["running"]
            if running_after == 0:
                break
            time.sleep(0.2)
    assert running_during == 1
    assert running_after == 0
