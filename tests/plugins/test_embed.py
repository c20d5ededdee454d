"""The optional MiniLM embedding head: option handling, model errors, training, fresh-set quality."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from forge_plugins import HybridClassifier, NeuralClassifier, RouterModel
from forge_plugins.router.classifiers import load_router
from forge_plugins.router.embed import HEAD_FILE, EnsembleRouter, embeddings_available
from forge_plugins.router.evaluation import evaluate
from forge_plugins.router.methods import RouterTrainMethod
from forge_plugins.router.model import DEFAULT_MODEL_DIR
from forge_sdk import DEFAULT_EXPERTS
from forge_sdk.errors import ConfigurationError, ModelError

needs_embed = pytest.mark.skipif(not embeddings_available(), reason="forge-plugins[embed] not installed")


@pytest.fixture(scope="session")
def fresh_set() -> list[tuple[str, str]]:
    """The second hand-written set (50 queries a class), never used to choose the recipe's settings."""
    path = Path(__file__).parent / "data" / "router_fresh.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(r["query"], r["label"]) for r in rows]


@pytest.fixture
def tfidf_only(tmp_path: Path) -> Path:
    for name in ("router.npz", "router.json"):
        shutil.copy(DEFAULT_MODEL_DIR / name, tmp_path / name)
    return tmp_path


def test_bad_embeddings_option_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="embeddings must be"):
        NeuralClassifier(DEFAULT_EXPERTS, embeddings="sometimes")


def test_disabled_or_headless_model_is_tfidf_only(tfidf_only: Path) -> None:
    assert isinstance(load_router(None, False), RouterModel)
    assert isinstance(load_router(tfidf_only, "auto"), RouterModel)


@needs_embed
def test_required_head_missing_is_a_model_error(tfidf_only: Path) -> None:
    with pytest.raises(ModelError, match="no embedding head"):
        NeuralClassifier(DEFAULT_EXPERTS, model_dir=str(tfidf_only), embeddings=True)
    (tfidf_only / HEAD_FILE).write_bytes(b"not a zip file")
    with pytest.raises(ModelError, match="unreadable"):
        HybridClassifier(DEFAULT_EXPERTS, model_dir=str(tfidf_only), embeddings=True)


@needs_embed
def test_auto_uses_the_shipped_head() -> None:
    clf = NeuralClassifier(DEFAULT_EXPERTS)
    assert isinstance(clf.model, EnsembleRouter)
    probs = clf.model.predict_proba("My Django view raises KeyError on request.POST['email'], why?")
    assert sum(probs.values()) == pytest.approx(1.0)
    assert max(probs, key=probs.__getitem__) == "code"
    assert clf.classify("Write a eulogy for my grandfather, a fisherman.") == "writing"


@needs_embed
def test_fresh_set_quality(fresh_set: list[tuple[str, str]]) -> None:
    # Regression guards; the figures with and without the head are in bench_router.py.
    with_head = evaluate(NeuralClassifier(DEFAULT_EXPERTS, embeddings=True).classify, fresh_set)
    without = evaluate(NeuralClassifier(DEFAULT_EXPERTS, embeddings=False).classify, fresh_set)
    hybrid = evaluate(HybridClassifier(DEFAULT_EXPERTS, embeddings=True).classify, fresh_set)
    assert with_head["macro_f1"] >= 0.82, with_head
    assert hybrid["macro_f1"] >= 0.84, hybrid
    assert with_head["macro_f1"] > without["macro_f1"]


@needs_embed
def test_train_with_and_without_embeddings(train_sample: Path, tmp_path: Path) -> None:
    def train(*extra: str) -> None:
        parser = argparse.ArgumentParser()
        RouterTrainMethod.add_arguments(parser)
        args = parser.parse_args(["--data", str(train_sample), "--output", str(tmp_path), *extra])
        RouterTrainMethod().run(args)

    train("--embeddings")
    assert (tmp_path / HEAD_FILE).exists()
    clf = NeuralClassifier(DEFAULT_EXPERTS, model_dir=str(tmp_path), embeddings=True)
    assert clf.classify("Write a Python function that merges two sorted lists.") == "code"
    train()  # a stale head must not be paired with the new tf-idf model
    assert not (tmp_path / HEAD_FILE).exists()


def test_without_the_extra_auto_falls_back_and_true_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from forge_plugins.router import embed as router_embed

    real = importlib.util.find_spec
    monkeypatch.setattr(
        router_embed.importlib.util,
        "find_spec",
        lambda name, *a: None if name == router_embed.ENCODER_PACKAGE else real(name, *a),
    )
    assert not embeddings_available()
    assert isinstance(NeuralClassifier(DEFAULT_EXPERTS).model, RouterModel)
    with pytest.raises(ConfigurationError, match=r"forge-plugins\[embed\]"):
        router_embed.SentenceEncoder()
