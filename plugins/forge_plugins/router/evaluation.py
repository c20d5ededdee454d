"""Scoring of a router: accuracy, macro-F1, per-class precision/recall/F1, confusion matrix."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from forge_plugins.router.data import LabelledQuery

__all__ = ["evaluate"]


def evaluate(predict: Any, records: Sequence[LabelledQuery]) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class precision/recall/F1 of ``predict(query) -> label``.

    Macro-F1 averages over the labels present in ``records``.
    """
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    correct = 0
    for query, gold in records:
        guess = predict(query)
        if guess == gold:
            correct += 1
            tp[gold] += 1
        else:
            fp[guess] += 1
            fn[gold] += 1
    per_class: dict[str, dict[str, float]] = {}
    for label in sorted({gold for _, gold in records}):
        p = tp[label] / (tp[label] + fp[label]) if tp[label] + fp[label] else 0.0
        r = tp[label] / (tp[label] + fn[label]) if tp[label] + fn[label] else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        per_class[label] = {
            "precision": round(p, 4),
            "recall": round(r, 4),
            "f1": round(f, 4),
            "support": tp[label] + fn[label],
        }
    n = len(records)
    macro = sum(c["f1"] for c in per_class.values()) / len(per_class) if per_class else 0.0
    return {
        "accuracy": round(correct / n, 4) if n else 0.0,
        "macro_f1": round(macro, 4),
        "per_class": per_class,
        "n": n,
    }
