"""One real ``forge-gateway serve`` (vLLM, tiny model, float32) watching a registry file.

Shared by the train -> register -> serve and the deploy (merge -> quantize -> standalone) flows,
so CI pays the gateway's start-up once. float32 makes greedy tokens comparable with
transformers(+PEFT) references.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from forge_sdk.experts import create_default_registry
from tests.support import GatewayProcess

BIN = Path(sys.executable).parent
"""Where the venv's console scripts (forge-train, forge-gateway) live."""


@dataclass
class ServedGateway:
    """A running gateway, its registry file and its log."""

    process: GatewayProcess
    registry: Path
    log: Path

    @property
    def url(self) -> str:
        return self.process.base_url

    def client(self) -> openai.OpenAI:
        """The official OpenAI client pointed at the gateway (open mode: any key)."""
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=300)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=60)


def cli_env() -> dict[str, str]:
    """Environment for the CLIs run as subprocesses: one thread, offline, venv scripts first."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }


# Package scope: shared by this folder's modules, stopped before the rest of the suite runs.
@pytest.fixture(scope="package")
def vllm_gateway(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedGateway]:
    pytest.importorskip("vllm")
    root = tmp_path_factory.mktemp("e2e-gateway")
    registry = root / "experts.json"
    create_default_registry(registry)  # general / code / math / writing, as a fresh install has
    log = root / "gateway.log"
    env = {"FORGE_ENGINE_DTYPE": "float32", "FORGE_AUTH_DB_PATH": str(root / "auth.db")}
    args = ["--model", str(tiny_model_dir), "--served-model-name", "tiny", "--engine", "vllm"]
    # No --enable-lora: the first adapter registered while it runs swaps in a LoRA engine (the
    # default, enable_lora "auto"), which test_train_register_serve goes through.
    args += ["--max-model-len", "512", "--registry", str(registry)]
    with GatewayProcess(args, env=env, log_path=log) as process:
        yield ServedGateway(process, registry, log)
