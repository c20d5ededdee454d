"""The neural router inside the gateway's routing: abstention in the route reason, off the event loop."""

from __future__ import annotations

import threading

import pytest

from forge_plugins import NeuralClassifier
from forge_sdk import DEFAULT_EXPERTS

routing = pytest.importorskip("forge_gateway.routing")


def _catalog(**options: object) -> object:
    catalog = routing.ExpertCatalog("tiny", list(DEFAULT_EXPERTS), None, lora_enabled=False)
    catalog.classifier = NeuralClassifier(list(catalog.experts.values()), **options)
    return catalog


def test_unsure_router_abstains_to_the_default_expert_and_says_so() -> None:
    target = _catalog(threshold=1.0).route("Write a Python function that reverses a list.")
    assert target.expert_name == "general"
    assert target.reason.startswith("router:neural:abstain:code:")
    sure = _catalog().route("Write a Python function that reverses a list.")
    assert sure.expert_name == "code" and sure.reason.startswith("router:neural:neural:code:")
    assert 0.9 < sure.confidence <= 1.0


async def test_heavy_router_runs_in_a_worker_thread() -> None:
    catalog = _catalog()
    assert catalog.classifier.heavy  # the encoder is loaded
    seen: list[str] = []
    original = catalog.classifier.classify_with_confidence

    def spy(query: str) -> object:
        seen.append(threading.current_thread().name)
        return original(query)

    catalog.classifier.classify_with_confidence = spy
    loop_thread = threading.current_thread().name
    target = await catalog.aroute("Solve for x: 3x + 7 = 22")
    assert target.expert_name == "math"
    assert seen and seen[0] != loop_thread
