"""Routing quality on a CI budget: the shipped model on the hand-written sets, and
leave-one-source-out on a few folds. The full run is ``tests/performance/bench_router.py``.

The floors sit below the measured figures (docs/benchmarks.md, *Routing quality*) by a margin for noise; they
catch a broken model or recipe, not a point of F1.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forge_plugins import NeuralClassifier
from forge_plugins.router.evaluation import evaluate, leave_one_source_out, tune_calibration, tune_threshold
from forge_plugins.router.recipe import Recipe
from forge_sdk import DEFAULT_EXPERTS

DATA = Path(__file__).parent / "data"


def _records(name: str) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]
    return [(r["query"], r["label"]) for r in rows]


@pytest.fixture(scope="module")
def shipped() -> NeuralClassifier:
    return NeuralClassifier(DEFAULT_EXPERTS)


@pytest.mark.parametrize(
    ("name", "floor"),
    [
        ("router_fresh.jsonl", 0.95),
        ("router_fresh_plain.jsonl", 0.92),
        ("router_fresh_practical.jsonl", 0.92),
        ("router_stress.jsonl", 0.92),
    ],
)
def test_shipped_model_on_hand_written_sets(shipped: NeuralClassifier, name: str, floor: float) -> None:
    report = evaluate(shipped.classify, _records(name))
    assert report["macro_f1"] >= floor, report


def _rows(shared_data: Path) -> list[dict]:
    return [json.loads(line) for line in (shared_data / "router_train.jsonl").read_text().splitlines()]


def test_leave_one_source_out_tfidf(shared_data: Path) -> None:
    # Two folds, tf-idf only, a lighter recipe: seconds. Each fold's source is unseen in training.
    recipe = Recipe(encoder=False, domain_docs=0, generated=100)
    groups = [
        "Quehry/HelloBench:data/main_data/open_ended_qa.jsonl",
        "ZubinGou/math-evaluation-harness:data/svamp/test.jsonl",
    ]
    folds = leave_one_source_out(_rows(shared_data), shared_data / "router_train.jsonl", recipe, groups)
    labels = ["code", "general", "math", "writing"]
    for group, fold in folds.items():
        right = sum(
            labels[max(range(4), key=p.__getitem__)] == g
            for p, g in zip(fold["tfidf"], fold["gold"], strict=True)
        )
        assert right / len(fold["gold"]) >= 0.6, (group, right, len(fold["gold"]))
    tuned = tune_calibration(folds, labels)
    assert tuned["temperature"]["tfidf"] > 0 and 0 <= tuned["abstain"]["tfidf"] <= 0.9


@pytest.mark.slow
def test_leave_one_source_out_encoder_fold(shared_data: Path) -> None:
    # One fold with a fine-tuned encoder on its ~1,800 rows + 200 practical requests, one epoch.
    recipe = Recipe(domain_docs=0, generated=100, practical=50, encoder_examples=400, epochs=1)
    group = "shilliscmu/TranxConalaBaseline:conala-train.json"
    fold = leave_one_source_out(_rows(shared_data), shared_data / "router_train.jsonl", recipe, [group])[
        group
    ]
    right = sum(max(range(4), key=z.__getitem__) == 0 for z in fold["logits"])  # 0: "code"
    assert right / len(fold["gold"]) >= 0.8, right


def test_abstain_threshold_maximises_the_mean_over_proxies() -> None:
    import numpy as np

    # Set "a": the unsure answers (0.55) are wrong, so abstaining to label 1 fixes them.
    # Set "b": the unsure answers are right, so abstaining breaks them. Each set counts the same.
    sure, unsure = [0.9, 0.1 / 3, 0.1 / 3, 0.1 / 3], [0.55, 0.15, 0.15, 0.15]
    a = (np.array([sure, unsure, unsure, [0.1, 0.9, 0, 0]]), np.array([0, 1, 1, 1]))
    b = (np.array([sure, unsure, [0, 0, 0.9, 0.1], [0.1, 0.9, 0, 0]]), np.array([0, 0, 2, 1]))
    best, table = tune_threshold({"a": a}, 4, 1)
    assert 0.55 < best <= 0.9 and table["a"][best] == 1.0
    assert table["a"][0.0] < 1.0
    best, _ = tune_threshold({"a": a, "b": b}, 4, 1)
    assert best > 0.55  # "a" gains 0.5, "b" loses 0.22
    best, _ = tune_threshold({"a": a, "b": b, "b2": b, "b3": b}, 4, 1)
    assert best == 0.0  # three sets lose more than one gains; ties go to the smaller threshold
