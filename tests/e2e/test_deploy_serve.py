"""Adapter -> merge -> quantize (GPTQ, AWQ) -> standalone experts served by a running gateway.

The flow of trainers/README.md ("From adapter to standalone expert") with the deploy code's own
functions: a LoRA adapter is merged into its base, the merged model is quantized with GPTQ and
AWQ (llm-compressor in its isolated venv), and each result is registered as a standalone expert
(``model_path``, ``quantization``) of the gateway that is already running. Each gets its own vLLM
engine on first use, answers through the ``openai`` client, falls back (or 503s) when it cannot
start, and is stopped when unregistered. A quantized folder also serves as a gateway's base model
(``forge-gateway serve --model <quantized dir>``), with ``standalone_start = "startup"``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from forge_sdk.experts import DEFAULT_EXPERTS, ExpertModel, ExpertRegistry
from tests.e2e.conftest import ServedGateway
from tests.gateway.test_lora_experts_support import MESSAGES, make_adapter, reference_text
from tests.support import GatewayProcess

pytest.importorskip("vllm")
pytest.importorskip("peft")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

MAX_TOKENS = 10
FFFD = chr(0xFFFD)


@pytest.fixture(scope="module")
def checkpoints(
    tiny_model_dir: Path, shared_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """adapter, merged, gptq and awq folders, built once (~1 min; the quant venv is reused)."""
    from forge_train.deploy import merge_lora_weights, quantize_awq, quantize_gptq

    root = tmp_path_factory.mktemp("deploy")
    adapter = make_adapter(tiny_model_dir, root / "adapter", seed=21)
    merged = merge_lora_weights(tiny_model_dir, adapter, root / "merged")
    rows = [json.loads(line) for line in (shared_data / "sft_alpaca_2k.jsonl").read_text().splitlines()[:16]]
    calibration = ["\n".join(m["content"] for m in r["messages"]) for r in rows]
    small = {"calibration": calibration, "max_seq_length": 128, "num_samples": 16}
    gptq = quantize_gptq(merged, root / "gptq", group_size=32, **small)
    awq = quantize_awq(merged, root / "awq", group_size=64, **small)
    return {"adapter": str(adapter), "merged": merged, "gptq": gptq, "awq": awq}


def _chat(client: openai.OpenAI, model: str) -> tuple[str, httpx.Headers]:
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0
    )
    completion = raw.parse()
    assert completion.model == raw.headers["x-forge-expert"]
    text = (completion.choices[0].message.content or "").rstrip(FFFD)
    return f"{text}#{completion.usage.completion_tokens}", raw.headers


def _experts(gw: ServedGateway) -> dict[str, dict]:
    return {e["name"]: e for e in gw.get("/experts").json()["experts"]}


# Each test sets up what it needs through these fixtures (never through another test's leftovers),
# so any test runs alone or in any order. Registrations are cached per module and redone when a
# test (test_unregistered_...) removed them: engines start only when they are needed.
_MERGED: dict[str, dict] = {}
_ANSWERS: dict[str, str] = {}


@pytest.fixture(scope="module")
def base_answer(vllm_gateway: ServedGateway) -> str:
    """The base model's greedy answer (``general``, a base-model alias, answers the same)."""
    return _chat(vllm_gateway.client(), "tiny")[0]


@pytest.fixture
def merged(vllm_gateway: ServedGateway, checkpoints: dict[str, str]) -> dict:
    """``merged`` registered through the admin API: its answer and its state right after."""
    if "merged" not in _experts(vllm_gateway):
        resp = httpx.post(
            f"{vllm_gateway.url}/admin/experts",
            json={"name": "merged", "model_path": checkpoints["merged"], "specialization": "writing"},
            timeout=30,
        )
        assert resp.status_code == 201, resp.text
        state = _experts(vllm_gateway)["merged"]["status"]["state"]
        _MERGED["merged"] = {"status": resp.status_code, "body": resp.json(), "state_after": state}
    return _MERGED["merged"]


@pytest.fixture
def quantized(vllm_gateway: ServedGateway, checkpoints: dict[str, str]) -> dict[str, str]:
    """``merged-gptq`` and ``merged-awq`` in the registry file (what a deploy script does: an
    atomic rewrite), with their greedy answers."""
    names = {f"merged-{method}": method for method in ("gptq", "awq")}
    if set(names) - set(_experts(vllm_gateway)):
        registry = ExpertRegistry(vllm_gateway.registry)
        for name, method in names.items():
            registry.register(
                ExpertModel(name=name, model_path=checkpoints[method], quantization=method)  # type: ignore[arg-type]
            )
        time.sleep(0.6)  # the gateway stats the registry file at most every 0.5 s
    client = vllm_gateway.client()
    for name in names:
        if name not in _ANSWERS:
            _ANSWERS[name] = _chat(client, name)[0]
    return {name: _ANSWERS[name] for name in names}


def test_merged_expert_registered_through_the_admin_api_answers_like_its_adapter(
    vllm_gateway: ServedGateway,
    checkpoints: dict[str, str],
    tiny_model_dir: Path,
    merged: dict,
    base_answer: str,
) -> None:
    bad = httpx.post(
        f"{vllm_gateway.url}/admin/experts",
        json={"name": "nowhere", "model_path": "/no/such/model"},
        timeout=30,
    )
    assert bad.status_code == 400 and "config.json" in bad.json()["error"]["message"]
    assert merged["status"] == 201
    assert merged["body"]["kind"] == "standalone" and merged["body"]["servable"] is True
    assert merged["state_after"] == "idle"  # lazy: nothing loaded at registration

    client = vllm_gateway.client()
    text, headers = _chat(client, "merged")
    assert headers["x-forge-expert"] == "merged"
    expected = reference_text(tiny_model_dir, Path(checkpoints["adapter"]), MESSAGES, MAX_TOKENS)
    assert text == expected
    assert base_answer != expected  # the merged weights really differ from the base's
    assert _experts(vllm_gateway)["merged"]["status"]["state"] == "running"
    health = vllm_gateway.get("/health").json()
    assert health["standalone_engines"]["merged"]["ok"] is True
    assert health["standalone_engines"]["merged"]["engine"] == "vllm"


def test_gptq_and_awq_experts_from_the_registry_file_are_served(
    vllm_gateway: ServedGateway, quantized: dict[str, str], base_answer: str
) -> None:
    client = vllm_gateway.client()
    models = [m.id for m in client.models.list().data]
    assert set(quantized) <= set(models)
    for name, first in quantized.items():
        text, headers = _chat(client, name)
        assert headers["x-forge-expert"] == name and headers["x-forge-route-reason"] == "requested"
        assert int(text.rsplit("#", 1)[1]) > 0
        assert text != base_answer  # its own engine, not the base model's
        assert text == first  # greedy: stable
        entry = _experts(vllm_gateway)[name]
        assert entry["kind"] == "standalone" and entry["quantization"] == name.rsplit("-", 1)[1]
        assert entry["status"]["state"] == "running"


def test_a_standalone_expert_that_cannot_start_falls_back_or_503s(
    vllm_gateway: ServedGateway, tmp_path: Path, base_answer: str
) -> None:
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    registry = ExpertRegistry(vllm_gateway.registry)
    registry.register(ExpertModel(name="broken", model_path=str(empty)))
    time.sleep(0.6)
    client = vllm_gateway.client()
    text, headers = _chat(client, "broken")  # SDD §9.2: expert unavailable -> general
    assert headers["x-forge-expert"] == "general"
    assert headers["x-forge-route-reason"] == "fallback:broken-engine"
    assert text == base_answer  # general is the base model under another name
    status = _experts(vllm_gateway)["broken"]["status"]
    assert status["state"] == "failed" and "config.json" in status["error"]
    health = vllm_gateway.get("/health")
    assert health.status_code == 200 and health.json()["standalone_engines"]["broken"]["ok"] is False

    # When the failing expert is the fallback itself, nothing is left: a clear 503.
    registry.register(ExpertModel(name="general", model_path=str(empty)))
    time.sleep(0.6)
    try:
        with pytest.raises(openai.APIStatusError) as err:
            _chat(client, "general")
        assert err.value.status_code == 503
        assert "'general' is unavailable" in err.value.message
    finally:
        registry.register(DEFAULT_EXPERTS[0])
        registry.unregister("broken")
        time.sleep(0.6)


@pytest.fixture(scope="module")
def quantized_base(
    checkpoints: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """``forge-gateway serve --model <awq dir>`` whose registry holds the GPTQ expert, started
    with the gateway (``standalone_start = "startup"``)."""
    root = tmp_path_factory.mktemp("quantized-base")
    registry = ExpertRegistry(root / "experts.json")
    registry.register(ExpertModel(name="merged-gptq", model_path=checkpoints["gptq"], quantization="gptq"))
    env = {"FORGE_AUTH_DB_PATH": str(root / "auth.db"), "FORGE_ENGINE_STANDALONE_START": "startup"}
    args = ["--model", checkpoints["awq"], "--engine", "vllm", "--max-model-len", "512", "--no-lora"]
    args += ["--registry", str(registry.config_path)]
    with GatewayProcess(args, env=env, log_path=root / "gateway.log") as gw:
        yield gw
    # Shutdown (SIGTERM) stops the standalone engine too, and exits cleanly.
    assert gw.proc is not None and gw.proc.returncode == 0
    assert any(
        '"standalone_engine_stopped"' in line and '"merged-gptq"' in line
        for line in gw.log_text().splitlines()
    )


def test_serve_a_quantized_checkpoint_as_the_base_model(
    quantized_base: GatewayProcess, checkpoints: dict[str, str], quantized: dict[str, str]
) -> None:
    engines = httpx.get(f"{quantized_base.base_url}/health", timeout=30).json()["standalone_engines"]
    assert engines["merged-gptq"]["state"] == "running"  # started with the gateway, before any request
    client = openai.OpenAI(base_url=f"{quantized_base.base_url}/v1", api_key="unused", max_retries=0)
    base_name = Path(checkpoints["awq"]).name
    text, headers = _chat(client, base_name)
    assert headers["x-forge-expert"] == base_name
    # Same checkpoint, same engine kind: the base of this gateway and the standalone expert of the
    # other one give the same greedy tokens; likewise the GPTQ expert on both gateways.
    assert text == quantized["merged-awq"]
    assert _chat(client, "merged-gptq")[0] == quantized["merged-gptq"]


def test_unregistered_standalone_experts_stop_their_engines(
    vllm_gateway: ServedGateway, merged: dict, quantized: dict[str, str]
) -> None:
    client = vllm_gateway.client()
    for name in ("merged", *quantized):  # running engines, whatever ran before
        _chat(client, name)
    resp = httpx.delete(f"{vllm_gateway.url}/admin/experts/merged", timeout=60)
    assert resp.status_code == 200 and resp.json()["kind"] == "standalone"
    registry = ExpertRegistry(vllm_gateway.registry)
    registry.unregister("merged-gptq")
    registry.unregister("merged-awq")
    time.sleep(0.6)
    deadline = time.monotonic() + 60
    while True:
        names = _experts(vllm_gateway)  # /experts re-reads the registry file
        engines = vllm_gateway.get("/health").json()["standalone_engines"]
        if not {"merged", *quantized} & set(engines) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not {"merged", "merged-gptq", "merged-awq"} & set(names)
    assert not {"merged", *quantized} & set(engines)
    with pytest.raises(openai.NotFoundError):
        _chat(vllm_gateway.client(), "merged-gptq")
    log = vllm_gateway.log.read_text()
    stopped = {
        json.loads(line).get("expert") for line in log.splitlines() if "standalone_engine_stopped" in line
    }
    assert {"merged", "merged-gptq", "merged-awq"} <= stopped
    _ANSWERS.clear()  # a later test re-registers them (answers are recomputed then)
