"""The hybrid classifier's decision paths: keyword, keyword+neural, neural override, neural, default."""

from __future__ import annotations

import pytest

from forge_plugins import HybridClassifier, NeuralClassifier
from forge_sdk import DEFAULT_EXPERTS, ExpertModel
from forge_sdk.errors import ConfigurationError

CODE_QUERY = "Write a Python function that reverses a linked list in place."


@pytest.fixture(scope="module")
def neural() -> NeuralClassifier:
    return NeuralClassifier(DEFAULT_EXPERTS)


# "python" deliberately given to the writing expert: the keyword and the model then disagree.
MISLEADING = [
    ExpertModel(name="general"),
    ExpertModel(name="code", specialization="code"),
    ExpertModel(name="writing", specialization="writing", keywords=["python"]),
]


def test_keyword_and_neural_agree() -> None:
    result = HybridClassifier(DEFAULT_EXPERTS).classify_with_confidence(
        "Please solve this equation: 2x + 3 = 11"
    )
    assert result.expert == "math"
    assert result.reason.startswith("keyword+neural:")
    assert result.confidence >= 0.9


def test_unambiguous_keyword_wins_over_unsure_or_disabled_override(neural: NeuralClassifier) -> None:
    assert neural.predict(CODE_QUERY)[0] == "code"
    result = HybridClassifier(MISLEADING, override=1.0).classify_with_confidence(CODE_QUERY)
    assert (result.expert, result.reason) == ("writing", "keyword:python")


def test_confident_neural_overrides_keyword(neural: NeuralClassifier) -> None:
    _, prob = neural.predict(CODE_QUERY)
    result = HybridClassifier(MISLEADING, override=prob - 0.01).classify_with_confidence(CODE_QUERY)
    assert result.expert == "code"
    assert result.reason.startswith("neural-override:code:")


def test_no_keyword_confident_neural_decides() -> None:
    query = "Who won the football world cup in 1998?"
    clf = HybridClassifier(DEFAULT_EXPERTS, threshold=0.0)
    assert clf.keyword.matches(query) == {}
    result = clf.classify_with_confidence(query)
    assert result.reason.startswith("neural:")


def test_unsure_neural_falls_back_to_default() -> None:
    experts = [*DEFAULT_EXPERTS[1:], ExpertModel(name="fallback")]
    clf = HybridClassifier(experts, default_expert="fallback", threshold=1.0)
    result = clf.classify_with_confidence("Who won the football world cup in 1998?")
    assert result.expert == "fallback"
    assert result.reason.startswith("default:neural-unsure:")


def test_ambiguous_keywords_defer_to_neural() -> None:
    # "write" (writing) and "python" (code) both hit: the model decides.
    result = HybridClassifier(DEFAULT_EXPERTS).classify_with_confidence(CODE_QUERY)
    assert result.expert == "code"
    assert result.reason.startswith("neural:code:")


@pytest.mark.parametrize("options", [{"threshold": 1.5}, {"threshold": "high"}, {"override": -1}, {"foo": 1}])
def test_bad_options_are_clear_errors(options: dict) -> None:
    with pytest.raises(ConfigurationError, match="hybrid classifier"):
        HybridClassifier(DEFAULT_EXPERTS, **options)


def test_plugin_expert_with_priority_takes_over_its_specialization() -> None:
    plugin = ExpertModel(name="mathexpert", specialization="math", priority=10, keywords=["integral"])
    result = HybridClassifier([*DEFAULT_EXPERTS, plugin]).classify_with_confidence(
        "What is the integral of x^2 from 0 to 3?"
    )
    assert result.expert == "mathexpert"
    assert result.reason.startswith("keyword+neural:integral")


def test_stress_set_quality(stress_set: list[tuple[str, str]]) -> None:
    from forge_plugins.router.evaluation import evaluate

    report = evaluate(HybridClassifier(DEFAULT_EXPERTS).classify, stress_set)
    assert report["macro_f1"] >= 0.85, report
