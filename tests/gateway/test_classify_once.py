"""``model: "auto"`` is classified once per request, off the event loop for heavy classifiers."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from litestar.testing import AsyncTestClient

from forge_gateway.app import create_app
from forge_gateway.config import load_config
from forge_gateway.engines import create_engine
from forge_sdk import Classification, Classifier, ExpertModel, get_plugin_manager, hookimpl


class CountingClassifier(Classifier):
    """Sends everything to ``code`` and records how often, and on which thread, it ran."""

    name = "counting"
    heavy = True
    calls: ClassVar[list[str]] = []

    def __init__(self, experts: Sequence[ExpertModel], **options: Any) -> None:
        super().__init__(experts, **options)

    def classify_with_confidence(self, query: str) -> Classification:
        CountingClassifier.calls.append(threading.current_thread().name)
        return Classification("code", 0.9, "counted")


class Plugin:
    @hookimpl
    def register_classifiers(self, register):  # type: ignore[no-untyped-def]
        register(CountingClassifier)

    @hookimpl
    def register_experts(self, register):  # type: ignore[no-untyped-def]
        register(ExpertModel(name="general"))
        register(ExpertModel(name="code", specialization="code"))


async def test_auto_is_classified_once_and_off_the_loop(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = load_config(
        None,
        environ={},
        overrides={
            "model": str(tiny_model_dir),
            "served_model_name": "tiny",
            "router": {"classifier": "counting"},
            "auth": {"db_path": str(tmp_path / "keys.db")},
        },
    )
    engine = create_engine("transformers", str(tiny_model_dir), max_model_len=256)
    app = create_app(config, engine=engine, pm=get_plugin_manager(load_entrypoints=False, plugins=[Plugin()]))
    CountingClassifier.calls.clear()
    async with AsyncTestClient(app) as client:
        loop_thread = threading.current_thread().name
        resp = await client.post(
            "/v1/chat/completions",
            json={"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        )
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-forge-expert"] == "code"
    assert len(CountingClassifier.calls) == 1
    assert CountingClassifier.calls[0] != loop_thread
