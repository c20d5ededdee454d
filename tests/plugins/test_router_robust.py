"""No input text makes the router raise: any Unicode (lone surrogates too), empty, 1 MB."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forge_plugins import HybridClassifier, KeywordClassifier, NeuralClassifier
from forge_sdk import DEFAULT_EXPERTS


@pytest.fixture(scope="module")
def classifiers() -> list:
    return [
        KeywordClassifier(DEFAULT_EXPERTS),
        NeuralClassifier(DEFAULT_EXPERTS),
        NeuralClassifier(DEFAULT_EXPERTS, encoder=False),
        HybridClassifier(DEFAULT_EXPERTS),
    ]


def _check(classifiers: list, text: str) -> None:
    names = {e.name for e in DEFAULT_EXPERTS}
    for clf in classifiers:
        decision = clf.classify_with_confidence(text)
        assert decision.expert in names
        assert 0.0 <= decision.confidence <= 1.0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(codec=None, categories=None), max_size=300))
def test_any_unicode_text(classifiers: list, text: str) -> None:
    _check(classifiers, text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " \t\n",
        "\x00\x01\x02",
        "\ud800 lone surrogate \udfff",
        "\u200b\u200d\ufeff",
        "😀" * 10_000,
        "x" * 1_000_000,
        ("def f():\n    return 1\n" * 50_000)[:1_000_000],
        "\u0645\u0631\u062d\u0628\u0627 " * 200_000,
    ],
)
def test_edge_texts(classifiers: list, text: str) -> None:
    _check(classifiers, text)
