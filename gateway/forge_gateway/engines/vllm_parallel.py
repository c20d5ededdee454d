"""vLLM's parallelism settings: which engine options they become, and whether this machine can run them.

The gateway does no distribution of its own: tensor, pipeline and data parallelism are vLLM's
(``AsyncEngineArgs``), launched by vLLM's ``mp`` or ``ray`` executor. This module only maps the
``[engine]`` config onto those options and refuses, in one line and before any weights load, a
layout the machine cannot hold (more GPUs than it has, any parallelism on vLLM's CPU backend, Ray
not installed) instead of letting vLLM fail deep inside a worker process.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from forge_sdk.errors import ConfigurationError

if TYPE_CHECKING:
    from forge_gateway.config import EngineConfig

__all__ = ["check_parallelism", "vllm_parallel_options"]

_SIZES = ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size")


def vllm_parallel_options(e: EngineConfig) -> dict[str, Any]:
    """The ``AsyncEngineArgs`` keywords for ``[engine]``'s parallelism, scheduling and execution settings.

    Settings left at their default are omitted, so vLLM's own defaults apply.
    """
    options: dict[str, Any] = {"max_num_seqs": e.max_batch_size}
    for name in _SIZES:
        if getattr(e, name) != 1:
            options[name] = getattr(e, name)
    if e.distributed_executor_backend is not None:
        options["distributed_executor_backend"] = e.distributed_executor_backend
    if e.enable_prefix_caching is not None:
        options["enable_prefix_caching"] = e.enable_prefix_caching
    if e.enforce_eager is not None:
        options["enforce_eager"] = e.enforce_eager
    return options


def _gpu_count() -> tuple[bool, int]:
    """(vLLM runs on CPU here, GPUs visible to this process)."""
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        return True, 0
    import torch

    return False, torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_parallelism(options: Mapping[str, Any]) -> None:
    """Refuse a parallel layout this machine cannot run, with a one-line reason.

    Args:
        options: vLLM engine keywords (``tensor_parallel_size`` and friends; missing means 1).

    Raises:
        ConfigurationError: a size below 1, parallelism on vLLM's CPU backend, more GPUs asked
            for than visible (``mp`` or no backend: one machine), or ``ray`` without Ray installed.
    """
    sizes = {name: options.get(name, 1) for name in _SIZES}
    for name, size in sizes.items():
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ConfigurationError(f"engine.{name} must be a whole number >= 1, got {size!r}")
    backend = options.get("distributed_executor_backend")
    if backend not in (None, "mp", "ray"):
        raise ConfigurationError(f"engine.distributed_executor_backend must be mp or ray, got {backend!r}")
    world = sizes["tensor_parallel_size"] * sizes["pipeline_parallel_size"] * sizes["data_parallel_size"]
    if world == 1:
        return
    layout = " x ".join(f"{name}={size}" for name, size in sizes.items() if size > 1)
    if backend == "ray" and importlib.util.find_spec("ray") is None:
        raise ConfigurationError(
            f"engine.distributed_executor_backend = 'ray' needs Ray: pip install 'ray[default]' ({layout})"
        )
    on_cpu, gpus = _gpu_count()
    if on_cpu:
        raise ConfigurationError(
            f"{layout} needs {world} GPUs, but vLLM runs on CPU here (no GPU found); "
            "set engine.tensor_parallel_size, pipeline_parallel_size and data_parallel_size to 1"
        )
    if backend != "ray" and world > gpus:
        # A Ray cluster may hold GPUs on other nodes; mp workers live on this machine only.
        raise ConfigurationError(
            f"{layout} needs {world} GPUs but {gpus} are visible here; lower the sizes, "
            "or use distributed_executor_backend = 'ray' across several nodes"
        )
