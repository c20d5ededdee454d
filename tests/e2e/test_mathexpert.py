"""The third-party example plugin end to end: pip-installed, listed, served, and routed to.

``examples/forge-plugin-mathexpert`` is installed into the environment like any user's plugin
(scripts/setup.sh does ``pip install ./examples/forge-plugin-mathexpert``). A real
``forge-gateway serve`` subprocess must list its ``mathexpert`` expert and send ``model: "auto"``
math questions to it: it has specialization ``math`` and priority 10, so it wins over the
built-in ``math`` expert.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import httpx
import openai
import pytest

from tests.support import GatewayProcess

try:
    metadata.distribution("forge-plugin-mathexpert")
except metadata.PackageNotFoundError:
    pytest.skip("pip install ./examples/forge-plugin-mathexpert first", allow_module_level=True)

MATH = "What is the integral of x^2 from 0 to 3? Show each step."


def _plugins(env: dict[str, str] | None = None) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-m", "forge_gateway.cli", "plugins"],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout)


def test_plugin_list_shows_the_installed_plugin() -> None:
    plugins = {p["name"]: p for p in _plugins()}
    math = plugins["mathexpert"]
    assert math["package"] == "forge-plugin-mathexpert" and math["version"] == "0.1.0"
    assert math["hooks"] == ["register_experts", "register_training_methods"]
    # The deny list env var switches it off without uninstalling it.
    assert "mathexpert" not in {p["name"] for p in _plugins({"FORGE_DISABLE_PLUGINS": "mathexpert"})}


@pytest.fixture(scope="module")
def gateway(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    log = tmp_path_factory.mktemp("mathexpert") / "gateway.log"
    args = ["--model", str(tiny_model_dir), "--served-model-name", "tiny", "--engine", "transformers"]
    env = {"FORGE_MATHEXPERT_ADAPTER": "", "FORGE_MATHEXPERT_ENDPOINT": "", "FORGE_DISABLE_PLUGINS": ""}
    with GatewayProcess([*args, "--max-model-len", "256"], env=env, log_path=log) as gw:
        yield gw


def test_experts_lists_mathexpert(gateway: GatewayProcess) -> None:
    experts = {e["name"]: e for e in httpx.get(f"{gateway.base_url}/experts", timeout=10).json()["experts"]}
    assert {"mathexpert", "math", "general"} <= set(experts)
    mathexpert = experts["mathexpert"]
    assert mathexpert["specialization"] == "math" and mathexpert["priority"] == 10
    assert mathexpert["endpoint"] == "local" and "integral" in mathexpert["keywords"]
    assert mathexpert["trained_on"] == "forge_plugin_mathexpert/seed.jsonl"


def test_auto_routes_a_math_question_to_mathexpert(gateway: GatewayProcess) -> None:
    decision = httpx.post(f"{gateway.base_url}/route", params={"query": MATH}, timeout=10).json()
    assert decision["expert"] == "mathexpert" and decision["endpoint"] == "local"
    assert decision["classifier"] == "neural" and decision["confidence"] > 0.5  # the default classifier
    client = openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": MATH}], max_tokens=4, temperature=0
    )
    assert raw.headers["x-forge-expert"] == "mathexpert"
    # No trained math expert here: the plugin's alias wins over the built-in math by its priority.
    assert raw.headers["x-forge-route-reason"].startswith("router:neural:neural:math:")
    assert raw.headers["x-forge-route-reason"].endswith(":rank=priority")
    completion = raw.parse()
    assert completion.model == "mathexpert" and completion.usage is not None
    # An alias of the base model: it answers when named but /v1/models does not list it by default.
    assert "mathexpert" not in [m.id for m in client.models.list().data]
    # Other questions still go elsewhere.
    other = httpx.post(
        f"{gateway.base_url}/route", params={"query": "Write a haiku about autumn"}, timeout=10
    )
    assert other.json()["expert"] == "writing"
