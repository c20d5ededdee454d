"""vLLM parallelism settings: config -> engine options, refusal of impossible layouts, options reaching vLLM."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from forge_gateway.config import load_config
from forge_gateway.engine_pool import engine_options
from forge_gateway.engines import create_engine, vllm_available
from forge_gateway.engines.vllm_parallel import check_parallelism, vllm_parallel_options
from forge_sdk.errors import ConfigurationError

needs_vllm = pytest.mark.skipif(not vllm_available(), reason="vllm not installed")


def _config(tmp_path: Path, engine: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(f'model = "some-model"\n[engine]\n{engine}\n')
    return path


def _serve(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "forge_gateway.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_parallel_settings_map_onto_vllm_args(tmp_path: Path) -> None:
    config = load_config(
        _config(
            tmp_path,
            'kind = "vllm"\ntensor_parallel_size = 4\npipeline_parallel_size = 2\n'
            'data_parallel_size = 2\ndistributed_executor_backend = "ray"\n'
            "enable_prefix_caching = false\nmax_batch_size = 64\ngpu_memory_utilization = 0.8\n",
        ),
        environ={},
    )
    options = engine_options(config)
    assert options["tensor_parallel_size"] == 4
    assert options["pipeline_parallel_size"] == 2
    assert options["data_parallel_size"] == 2
    assert options["distributed_executor_backend"] == "ray"
    assert options["enable_prefix_caching"] is False
    assert options["max_num_seqs"] == 64
    assert options["gpu_memory_utilization"] == 0.8
    # Defaults stay out, so vLLM's own defaults apply.
    defaults = vllm_parallel_options(load_config(environ={}, overrides={"model": "m"}).engine)
    assert defaults == {"max_num_seqs": 32}


def test_env_sets_parallelism() -> None:
    config = load_config(
        environ={"FORGE_MODEL": "m", "FORGE_ENGINE_TENSOR_PARALLEL_SIZE": "2"},
    )
    assert config.engine.tensor_parallel_size == 2


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("tensor_parallel_size = 0", "tensor_parallel_size"),
        ('distributed_executor_backend = "threads"', "distributed_executor_backend"),
        ("pipeline_parallel_size = -1", "pipeline_parallel_size"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, line: str, needle: str) -> None:
    with pytest.raises(ConfigurationError, match=needle):
        load_config(_config(tmp_path, line), environ={})


def test_check_rejects_bad_sizes_and_backends() -> None:
    with pytest.raises(ConfigurationError, match="tensor_parallel_size"):
        check_parallelism({"tensor_parallel_size": 0})
    with pytest.raises(ConfigurationError, match="distributed_executor_backend"):
        check_parallelism({"distributed_executor_backend": "threads"})
    check_parallelism({"max_num_seqs": 8})  # world size 1: nothing to check, no vLLM import


@needs_vllm
def test_cpu_machine_refuses_tensor_parallel() -> None:
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        pytest.skip("this machine has GPUs")
    with pytest.raises(ConfigurationError, match=r"tensor_parallel_size=2 needs 2 GPUs.*CPU"):
        check_parallelism({"tensor_parallel_size": 2, "distributed_executor_backend": "mp"})


def test_ray_backend_without_ray_is_refused() -> None:
    import importlib.util

    if importlib.util.find_spec("ray") is not None:
        pytest.skip("ray is installed here")
    with pytest.raises(ConfigurationError, match="needs Ray"):
        check_parallelism({"pipeline_parallel_size": 2, "distributed_executor_backend": "ray"})


@needs_vllm
def test_serve_with_tp2_on_cpu_is_one_line(tmp_path: Path) -> None:
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        pytest.skip("this machine has GPUs")
    proc = _serve(_config(tmp_path, 'kind = "vllm"\ntensor_parallel_size = 2\n'))
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("forge-gateway: error")]
    assert len(lines) == 1 and "needs 2 GPUs" in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_parallelism_needs_the_vllm_engine(tmp_path: Path) -> None:
    proc = _serve(_config(tmp_path, 'kind = "transformers"\ndata_parallel_size = 2\n'))
    assert proc.returncode == 2
    assert "need the vLLM engine" in proc.stderr


@needs_vllm
@pytest.mark.vllm
async def test_settings_reach_the_vllm_engine(tiny_model_dir: Path) -> None:
    """max_num_seqs and prefix caching from [engine] are what vLLM's scheduler and cache run with."""
    config = load_config(
        environ={},
        overrides={
            "model": str(tiny_model_dir),
            "engine": {
                "kind": "vllm",
                "max_batch_size": 3,
                "enable_prefix_caching": False,
                "max_model_len": 256,
                "enable_lora": False,
                "enforce_eager": True,
            },
        },
    )
    engine = create_engine("vllm", str(tiny_model_dir), **engine_options(config))
    await engine.start()
    try:
        vllm_config = engine._llm.vllm_config  # type: ignore[attr-defined]
        assert vllm_config.scheduler_config.max_num_seqs == 3
        assert vllm_config.cache_config.enable_prefix_caching is False
        assert vllm_config.parallel_config.tensor_parallel_size == 1
        assert vllm_config.model_config.enforce_eager is True
    finally:
        await engine.stop()


@needs_vllm
def test_standalone_experts_get_the_same_layout(tiny_model_dir: Path) -> None:
    """A standalone (merged / quantized) expert's engine is built with the [engine] parallelism too."""
    from forge_gateway.engine_pool import standalone_factory
    from forge_sdk.experts import ExpertModel

    config = load_config(
        environ={},
        overrides={
            "model": str(tiny_model_dir),
            "engine": {"kind": "vllm", "tensor_parallel_size": 2, "enable_prefix_caching": True},
        },
    )
    engine = standalone_factory(config, "vllm")(ExpertModel(name="merged", model_path=str(tiny_model_dir)))
    options = engine._engine_kwargs  # type: ignore[attr-defined]  # unstarted: nothing loads here
    assert options["tensor_parallel_size"] == 2 and options["enable_prefix_caching"] is True
    assert engine._gpu_mem == config.engine.standalone_gpu_memory_utilization  # type: ignore[attr-defined]
