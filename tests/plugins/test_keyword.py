"""The keyword classifier: whole words, any case, multi-word keywords, ambiguity and defaults."""

from __future__ import annotations

import pytest

from forge_plugins import KeywordClassifier
from forge_sdk import DEFAULT_EXPERTS, ExpertModel
from forge_sdk.errors import ConfigurationError


@pytest.fixture(scope="module")
def clf() -> KeywordClassifier:
    return KeywordClassifier(DEFAULT_EXPERTS)


def test_whole_word_only(clf: KeywordClassifier) -> None:
    assert clf.matches("In the aftermath of the storm, mathematics classes resumed") == {}
    assert clf.classify("In the aftermath of the storm") == "general"
    assert clf.classify("I need help with math") == "math"


def test_case_insensitive(clf: KeywordClassifier) -> None:
    result = clf.classify_with_confidence("HELP ME WITH THIS INTEGRAL")
    assert (result.expert, result.reason) == ("math", "keyword:integral")


def test_no_match_is_default_with_low_confidence(clf: KeywordClassifier) -> None:
    result = clf.classify_with_confidence("Who painted the Mona Lisa?")
    assert result.expert == "general"
    assert result.confidence <= 0.2
    assert result.reason.startswith("default")


def test_unambiguous_beats_ambiguous_confidence(clf: KeywordClassifier) -> None:
    one = clf.classify_with_confidence("write a poem about the sea")
    mixed = clf.classify_with_confidence("write a python script")  # write -> writing, python/script -> code
    assert one.expert == "writing"
    assert mixed.expert == "code"
    assert "ambiguous" in mixed.reason
    assert one.confidence > mixed.confidence


def test_multi_word_and_symbol_keywords() -> None:
    experts = [
        ExpertModel(name="general"),
        ExpertModel(name="ml", keywords=["Machine Learning", "C++", ".net"]),
        ExpertModel(name="shop", keywords=["machine"]),
    ]
    clf = KeywordClassifier(experts)
    assert clf.matches("I study machine\n  learning") == {"ml": ["machine learning"]}
    assert clf.matches("fast c++ code") == {"ml": ["c++"]}
    assert clf.matches("a c+ grade and asp.net") == {}
    assert clf.classify("buy a washing machine") == "shop"


def test_shared_keyword_goes_to_the_highest_priority() -> None:
    plugin = ExpertModel(name="mathexpert", specialization="math", priority=10, keywords=["integral"])
    clf = KeywordClassifier([*DEFAULT_EXPERTS, plugin])
    assert clf.classify("what is the integral of x^2") == "mathexpert"
    assert clf.classify("solve this equation") == "math"  # keywords only math claims stay with it


def test_update_experts_recompiles(clf: KeywordClassifier) -> None:
    local = KeywordClassifier(DEFAULT_EXPERTS)
    assert local.classify("tell me about cooking pasta") == "general"
    local.update_experts([*DEFAULT_EXPERTS, ExpertModel(name="chef", keywords=["pasta"])])
    assert local.classify("tell me about cooking pasta") == "chef"
    assert clf.classify("tell me about cooking pasta") == "general"


def test_unknown_option_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="unknown option"):
        KeywordClassifier(DEFAULT_EXPERTS, threshold=0.5)
