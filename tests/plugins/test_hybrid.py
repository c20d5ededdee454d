"""The hybrid classifier: the neural router with keywords as a prior that never overrides a sure model."""

from __future__ import annotations

import pytest

from forge_plugins import HybridClassifier, NeuralClassifier
from forge_sdk import DEFAULT_EXPERTS, ExpertModel
from forge_sdk.errors import ConfigurationError

CODE_QUERY = "Write a Python function that reverses a linked list in place."

# "python" deliberately given to the writing expert: the keyword and the model then disagree.
MISLEADING = [
    ExpertModel(name="general"),
    ExpertModel(name="code", specialization="code"),
    ExpertModel(name="writing", specialization="writing", keywords=["python"]),
]


@pytest.fixture(scope="module")
def neural() -> NeuralClassifier:
    return NeuralClassifier(DEFAULT_EXPERTS, threshold=0.0)


def test_keyword_prior_cannot_override_a_confident_model(neural: NeuralClassifier) -> None:
    label, prob = neural.predict(CODE_QUERY)
    assert (label, prob > 0.9) == ("code", True)
    result = HybridClassifier(MISLEADING).classify_with_confidence(CODE_QUERY)
    assert result.expert == "code"
    assert result.reason.startswith("neural+keyword:python:code:")
    assert result.confidence <= round(prob, 4)  # the prior moved some mass to the keyword's label


def test_prior_settles_a_close_call(neural: NeuralClassifier) -> None:
    query = "a story about a python"  # the model leans to code, less than a hundredfold
    probs = neural.model.predict_proba(query)
    assert max(probs, key=probs.__getitem__) == "code"
    # A prior larger than the model's odds flips the decision (that is what a prior does); a
    # smaller one does not.
    odds = probs["code"] / probs["writing"]
    assert odds < 90
    flipped = HybridClassifier(MISLEADING, keyword_prior=1.1 * odds, threshold=0.0).classify_with_confidence(
        query
    )
    assert flipped.expert == "writing" and flipped.reason.startswith("neural+keyword:python:writing:")
    kept = HybridClassifier(MISLEADING, keyword_prior=0.9 * odds, threshold=0.0).classify(query)
    assert kept == "code"


def test_prior_of_one_is_the_neural_classifier(neural: NeuralClassifier) -> None:
    query = "Please solve this equation: 2x + 3 = 11"
    a = HybridClassifier(DEFAULT_EXPERTS, keyword_prior=1.0, threshold=0.0).classify_with_confidence(query)
    b = neural.classify_with_confidence(query)
    assert (a.expert, a.confidence) == (b.expert, b.confidence) == ("math", a.confidence)


def test_ambiguous_keywords_leave_the_model_alone(neural: NeuralClassifier) -> None:
    # "write" (writing) and "python" (code) both hit: no prior.
    clf = HybridClassifier(DEFAULT_EXPERTS, threshold=0.0)
    assert len(clf.keyword.matches(CODE_QUERY)) == 2
    result = clf.classify_with_confidence(CODE_QUERY)
    assert result.expert == "code" and result.reason.startswith("neural:code:")


def test_unsure_model_abstains_to_the_default_expert() -> None:
    experts = [*DEFAULT_EXPERTS[1:], ExpertModel(name="fallback")]
    clf = HybridClassifier(experts, default_expert="fallback", threshold=1.0)
    result = clf.classify_with_confidence("Who won the football world cup in 1998?")
    assert result.expert == "fallback"
    assert result.reason.startswith("abstain:general:")


@pytest.mark.parametrize(
    "options",
    [{"threshold": 1.5}, {"threshold": "high"}, {"keyword_prior": 0.5}, {"keyword_prior": True}, {"foo": 1}],
)
def test_bad_options_are_clear_errors(options: dict) -> None:
    with pytest.raises(ConfigurationError, match="hybrid classifier"):
        HybridClassifier(DEFAULT_EXPERTS, **options)


def test_plugin_expert_with_priority_takes_over_its_specialization() -> None:
    plugin = ExpertModel(name="mathexpert", specialization="math", priority=10, keywords=["integral"])
    result = HybridClassifier([*DEFAULT_EXPERTS, plugin], threshold=0.0).classify_with_confidence(
        "What is the integral of x^2 from 0 to 3?"
    )
    assert result.expert == "mathexpert"
    assert result.reason.startswith("neural+keyword:integral:math:")
