"""The neural classifier with the shipped model: clear queries, label mapping, model errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from forge_plugins import NeuralClassifier, RouterModel
from forge_plugins.router.model import DEFAULT_MODEL_DIR
from forge_plugins.router.train.evaluation import evaluate
from forge_sdk import DEFAULT_EXPERTS, ExpertModel
from forge_sdk.errors import ModelError


@pytest.fixture(scope="module")
def clf() -> NeuralClassifier:
    return NeuralClassifier(DEFAULT_EXPERTS, threshold=0.0)


@pytest.mark.parametrize(
    ("query", "label"),
    [
        ("Write a Python function that returns the n-th Fibonacci number.", "code"),
        ("def add(a, b):\n    return a - b\n\nwhy does this return the wrong result?", "code"),
        ("How do I sort a dictionary by value in JavaScript?", "code"),
        ("Solve for x: 3x + 7 = 22", "math"),
        (
            "A shop sells pens at $3 each. Tom buys 4 pens and pays with $20. How much change does he get?",
            "math",
        ),
        ("Find the area of a circle with radius 5 cm.", "math"),
        ("Write a short story about a dragon who is afraid of fire.", "writing"),
        ("Write a poem about the ocean at night.", "writing"),
        ("Who was the first president of the United States?", "general"),
        ("What is the capital of Japan?", "general"),
    ],
)
def test_clear_queries(clf: NeuralClassifier, query: str, label: str) -> None:
    result = clf.classify_with_confidence(query)
    assert result.expert == label, result
    assert result.reason.startswith(f"neural:{label}:")


def test_probabilities_are_a_distribution(clf: NeuralClassifier) -> None:
    probs = clf.model.predict_proba("Integrate x squared from 0 to 1")
    assert set(probs) == {"code", "general", "math", "writing"}
    assert sum(probs.values()) == pytest.approx(1.0)
    assert max(probs, key=probs.__getitem__) == "math"


def test_label_maps_to_expert_by_specialization() -> None:
    experts = [ExpertModel(name="general"), ExpertModel(name="mathexpert", specialization="math")]
    clf = NeuralClassifier(experts)
    assert clf.classify("Solve for x: 3x + 7 = 22") == "mathexpert"
    # No expert for code: the default serves it.
    assert clf.classify("Write a Python function that reverses a list.") == "general"


def test_empty_query_goes_to_default(clf: NeuralClassifier) -> None:
    assert clf.classify_with_confidence("   ").reason == "default:empty"


def test_long_pasted_input_is_bounded_and_routed(clf: NeuralClassifier) -> None:
    body = "\n\n".join(
        f"def get_{name}(session, key):\n"
        f'    """Fetch one {name} row by key."""\n'
        f"    row = session.query({name.title()}).filter_by(id=key).first()\n"
        "    if row is None:\n"
        "        raise KeyError(key)\n"
        "    return row"
        for name in ("user", "order", "invoice", "product", "customer", "shipment", "payment", "review") * 8
    )
    query = (
        f"Here is our data access module:\n\n{body}\n\nWhy does every call open a new database connection?"
    )
    assert len(query) > 10_000
    assert clf.classify(query) == "code"


def test_shipped_model_is_small_safe_and_says_how_it_was_built() -> None:
    files = {p.name: p.stat().st_size for p in DEFAULT_MODEL_DIR.iterdir()}
    assert set(files) == {"router.npz", "router.json", "encoder.onnx", "tokenizer.json"}
    assert sum(files.values()) < 30 * 1024 * 1024
    model = RouterModel.load(DEFAULT_MODEL_DIR)  # loads with allow_pickle=False
    assert model.meta["command"] == "forge-train router --data router_train.jsonl --output shipped"
    assert model.meta["sources"] == {
        "filler": "pretrain_gutenberg_5mb.txt",
        "code_chat": "sft_alpaca_2k.jsonl",
        "chat_prompts": "dpo_hh_1k.jsonl",
        "extra": [],
    }


def test_repeated_queries_come_from_the_cache(clf: NeuralClassifier) -> None:
    query = "How do I read a CSV file with pandas and skip the first two rows?"
    first = clf.model.probabilities(query)
    assert clf.model.probabilities(query) is first  # the same array: no model ran
    clf.model.clear_cache()
    assert clf.model.probabilities(query) is not first


def test_stress_set_quality(clf: NeuralClassifier, stress_set: list[tuple[str, str]]) -> None:
    # A regression guard on hand-written queries in styles the training data lacks.
    report = evaluate(clf.classify, stress_set)
    assert report["macro_f1"] >= 0.8, report


def test_missing_or_corrupt_model_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        NeuralClassifier(DEFAULT_EXPERTS, model_dir=str(tmp_path))
    (tmp_path / "router.json").write_text('{"format": "forge-router-linear/1", "labels": ["a", "b"]}')
    (tmp_path / "router.npz").write_bytes(b"not a zip file")
    with pytest.raises(ModelError, match="unreadable"):
        NeuralClassifier(DEFAULT_EXPERTS, model_dir=str(tmp_path))


def test_lexicon_tokens_name_the_field_of_unseen_words() -> None:
    from forge_plugins.router.features import extract

    feats = extract(
        "My Flutter app and the kubectl rollout both fail; also write a villanelle about eigenvalues"
    )
    assert feats["s:lex_code"] == 2
    assert feats["s:lex_writing"] == 1
    assert feats["s:lex_math"] == 1
    assert not any(k.startswith("s:lex_") for k in extract("What is the capital of Peru?"))
