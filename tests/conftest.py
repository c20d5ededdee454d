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

REPO = Path(__file__).resolve().parent.parent
# FORGE_SHARED_DATA points a worktree elsewhere at the shared data (default: beside the repository).
SHARED_DATA = Path(os.environ.get("FORGE_SHARED_DATA") or REPO.parent / "shared" / "data")


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
