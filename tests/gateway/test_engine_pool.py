"""EnginePool: standalone experts' own engines (real transformers engines on the tiny model).

The vLLM path end to end is in tests/e2e/test_deploy_serve.py; here the pool's own rules run
fast: lazy start shared by concurrent requests, failures remembered then retried, engines
stopped when their expert leaves or changes, and how quantization is resolved per checkpoint.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from forge_gateway.config import load_config
from forge_gateway.engine_pool import (
    EnginePool,
    checkpoint_quantization,
    engine_quantization,
    standalone_factory,
)
from forge_gateway.engines.base import Engine, EngineRequest, SamplingOptions
from forge_sdk.errors import EngineUnavailableError, ModelError
from forge_sdk.experts import ExpertModel

pytest.importorskip("transformers")
ASYNC = pytest.mark.asyncio(loop_scope="session")


class CountingFactory:
    """The gateway's real standalone factory, counting the engines it builds."""

    def __init__(self, model: Path) -> None:
        config = load_config(overrides={"model": str(model), "engine": {"max_model_len": 128}}, environ={})
        self._build = standalone_factory(config, "transformers")
        self.built: list[Engine] = []

    def __call__(self, expert: ExpertModel) -> Engine:
        engine = self._build(expert)
        self.built.append(engine)
        return engine


async def _greedy(engine: Engine) -> list[int]:
    ids = engine.tokenize("The river")
    out: list[int] = []
    async for delta in engine.generate(EngineRequest("r", ids, SamplingOptions(max_tokens=4, temperature=0))):
        out += delta.token_ids
    return out


@ASYNC
async def test_lazy_shared_start_then_retire_on_change(tiny_model_dir: Path, tmp_path: Path) -> None:
    factory = CountingFactory(tiny_model_dir)
    pool = EnginePool(factory)
    expert = ExpertModel(name="solo", model_path=str(tiny_model_dir))
    pool.sync({"solo": expert, "general": ExpertModel(name="general")})
    assert pool.status("solo") == {"state": "idle"} and pool.running("solo") is None
    assert factory.built == []  # lazy: nothing built before the first request

    first, second = await asyncio.gather(pool.get(expert), pool.get(expert))
    assert first is second and len(factory.built) == 1  # one start shared by both requests
    assert pool.status("solo")["state"] == "running" and pool.running("solo") is first
    assert len(await _greedy(first)) == 4
    assert (await pool.health())["solo"]["ok"] is True

    # A changed entry (another checkpoint) gets a fresh engine; the old one is stopped.
    moved = ExpertModel(name="solo", model_path=str(tiny_model_dir), description="v2")
    retired = pool.sync({"solo": moved})
    assert [slot.expert for slot in retired] == [expert]
    pool.retire_soon(retired)
    await pool.stop_all()
    assert (await first.health())["ok"] is False
    assert pool.status("solo") == {"state": "idle"}


@ASYNC
async def test_failed_start_is_remembered_then_retried(tiny_model_dir: Path, tmp_path: Path) -> None:
    factory = CountingFactory(tiny_model_dir)
    pool = EnginePool(factory, retry_after=3600)
    (tmp_path / "config.json").write_text("{}")  # a folder that looks like a model but is not one
    expert = ExpertModel(name="broken", model_path=str(tmp_path))
    pool.sync({"broken": expert})
    with pytest.raises(EngineUnavailableError, match="'broken' is unavailable"):
        await pool.get(expert)
    assert len(factory.built) == 1 and pool.status("broken")["state"] == "failed"
    with pytest.raises(EngineUnavailableError):  # within retry_after: no new attempt
        await pool.get(expert)
    assert len(factory.built) == 1
    assert (await pool.health())["broken"]["ok"] is False

    pool.retry_after = 0
    with pytest.raises(EngineUnavailableError):
        await pool.get(expert)
    assert len(factory.built) == 2

    missing = ExpertModel(name="missing", model_path=str(tmp_path / "nowhere"))
    with pytest.raises(EngineUnavailableError, match=r"no config\.json"):
        await pool.get(missing)  # refused before any engine is built
    assert len(factory.built) == 2
    await pool.stop_all()


def _model_dir(root: Path, quant: dict | None) -> Path:
    root.mkdir()
    config: dict = {"architectures": ["Qwen2ForCausalLM"]}
    if quant is not None:
        config["quantization_config"] = quant
    (root / "config.json").write_text(json.dumps(config))
    return root


def test_quantization_is_left_to_the_checkpoint_when_it_declares_one(tmp_path: Path) -> None:
    ct = _model_dir(tmp_path / "ct", {"quant_method": "compressed-tensors"})
    plain = _model_dir(tmp_path / "plain", None)
    assert checkpoint_quantization(str(ct)) == "compressed-tensors"
    assert checkpoint_quantization(str(plain)) is None
    assert checkpoint_quantization(str(tmp_path / "missing")) is None
    # The registry names the algorithm (gptq) while the checkpoint stores compressed-tensors.
    assert engine_quantization(ExpertModel(name="q", model_path=str(ct), quantization="gptq")) is None
    assert engine_quantization(ExpertModel(name="f", model_path=str(plain), quantization="fp8")) == "fp8"
    assert engine_quantization(ExpertModel(name="p", model_path=str(plain))) is None
    with pytest.raises(ModelError, match="holds no quantization_config"):
        engine_quantization(ExpertModel(name="a", model_path=str(plain), quantization="awq"))


def test_factory_options_per_engine_kind(tmp_path: Path) -> None:
    plain = _model_dir(tmp_path / "plain", None)
    config = load_config(overrides={"model": str(plain), "engine": {"dtype": "float32"}}, environ={})
    with pytest.raises(ModelError, match="cannot quantize on the fly"):
        standalone_factory(config, "transformers")(
            ExpertModel(name="b", model_path=str(plain), quantization="bitsandbytes")
        )
    engine = standalone_factory(config, "transformers")(ExpertModel(name="p", model_path=str(plain)))
    assert engine.name == "transformers" and not engine.supports_lora


def test_catalog_serves_standalone_experts_only_with_an_engine_for_them(tiny_model_dir: Path) -> None:
    from forge_gateway.routing import ExpertCatalog

    merged = ExpertModel(name="merged", model_path=str(tiny_model_dir), quantization="gptq")
    able = ExpertCatalog("tiny", [merged], None, lora_enabled=False, standalone_enabled=True)
    target = able.resolve("merged", lambda: "")
    assert target.expert == merged and target.lora is None and "merged" in able.model_names()
    unable = ExpertCatalog("tiny", [merged], None, lora_enabled=False)
    assert not unable.servable(merged) and "merged" not in unable.model_names()


@ASYNC
async def test_an_engine_that_died_is_replaced_after_retry_after(tiny_model_dir: Path) -> None:
    factory = CountingFactory(tiny_model_dir)
    pool = EnginePool(factory, retry_after=3600)
    expert = ExpertModel(name="solo", model_path=str(tiny_model_dir))
    pool.sync({"solo": expert})
    first = await pool.get(expert)
    await first.stop()  # what a crashed engine looks like to the pool: health no longer ok
    with pytest.raises(EngineUnavailableError, match="stopped working"):
        await pool.get(expert)
    assert pool.status("solo")["state"] == "failed"
    pool.retry_after = 0
    second = await pool.get(expert)
    assert second is not first and len(factory.built) == 2 and len(await _greedy(second)) == 4
    await pool.stop_all()
