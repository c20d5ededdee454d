"""Scoring of a router: accuracy, macro-F1, per-class precision/recall/F1, confusion matrix."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from forge_plugins.router.train.data import LabelledQuery

__all__ = [
    "evaluate",
    "latency",
    "leave_one_source_out",
    "macro_f1",
    "percentile",
    "source_group",
    "tune_calibration",
    "tune_threshold",
]

THRESHOLDS = tuple(round(0.02 * i, 2) for i in range(46))
"""Abstain thresholds tried (0.0 to 0.9)."""


def source_group(source: str) -> str:
    """The dataset a ``router_train.jsonl`` source belongs to (leave-one-source-out's unit).

    MATH's per-problem files and WritingPrompts' splits are one dataset each.
    """
    for prefix in ("aiwaves-cn/agents", "AlvinJ404/writingprompts_creativity"):
        if source.startswith(prefix):
            return prefix
    return source


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values`` by the nearest-rank method (0.0 when empty)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def latency(predict: Any, queries: Sequence[str], *, warmup: int = 10) -> dict[str, float]:
    """Per-call wall and thread-CPU milliseconds of ``predict(query)`` over ``queries`` (p50/p90/p99).

    CPU time of the calling thread is given beside wall time: on a shared machine the wall-clock
    tail is mostly other processes' time slices, not the classifier's.
    """
    for query in queries[:warmup]:
        predict(query)
    wall: list[float] = []
    cpu: list[float] = []
    for query in queries:
        t0, c0 = time.perf_counter(), time.thread_time()
        predict(query)
        cpu.append((time.thread_time() - c0) * 1e3)
        wall.append((time.perf_counter() - t0) * 1e3)
    return {
        f"{kind}_{name}_ms": round(percentile(values, q), 3)
        for kind, values in (("wall", wall), ("cpu", cpu))
        for name, q in (("p50", 50), ("p90", 90), ("p99", 99))
    } | {"n": len(queries)}


def evaluate(predict: Any, records: Sequence[LabelledQuery]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix of ``predict``.

    ``predict(query) -> label``; ``confusion[gold][guess]`` counts the queries.

    Macro-F1 averages over the labels present in ``records``.
    """
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    pairs: Counter[tuple[str, str]] = Counter()
    correct = 0
    for query, gold in records:
        guess = predict(query)
        pairs[gold, guess] += 1
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
    labels = sorted({gold for _, gold in records} | set(fp))
    confusion = {gold: {guess: pairs[gold, guess] for guess in labels} for gold in labels}
    n = len(records)
    macro = sum(c["f1"] for c in per_class.values()) / len(per_class) if per_class else 0.0
    return {
        "accuracy": round(correct / n, 4) if n else 0.0,
        "macro_f1": round(macro, 4),
        "per_class": per_class,
        "confusion": confusion,
        "n": n,
    }


def leave_one_source_out(
    rows: Sequence[dict[str, str]],
    data_path: Any,
    recipe: Any,
    groups: Sequence[str] | None = None,
    *,
    log: Any = None,
) -> dict[str, dict[str, Any]]:
    """Train without each source group in turn and predict that group (the honest proxy).

    Args:
        rows: ``router_train.jsonl`` rows (``query``, ``label``, ``source``).
        data_path: where the rows came from (the recipe finds its other files beside it).
        recipe: a :class:`forge_plugins.router.train.recipe.Recipe`; ``recipe.encoder`` says whether
            an encoder is fine-tuned per fold (minutes each) or only the tf-idf model (seconds).
        groups: the groups to hold out (default: all of them).

    Returns:
        Per group: ``gold`` labels, ``tfidf`` log-probabilities and (with an encoder) ``logits``,
        as lists in ``labels`` order.
    """
    import dataclasses

    import numpy as np

    from forge_plugins.router.train.recipe import build_training_set
    from forge_plugins.router.train.training import train_router

    records = [(r["query"], r["label"]) for r in rows]
    full = build_training_set(records, data_path, recipe)
    labels = sorted({label for _, label in records})
    chosen = list(groups) if groups else sorted({source_group(r["source"]) for r in rows})
    out: dict[str, dict[str, Any]] = {}
    for group in chosen:
        keep = [source_group(r["source"]) != group for r in rows]
        train = [rec for rec, k in zip(records, keep, strict=True) if k]
        held = [rec for rec, k in zip(records, keep, strict=True) if not k]
        # The code chat pairs are Code Alpaca's: they leave with that source.
        pairs = [] if "codealpaca" in group else full.code_pairs
        fold = dataclasses.replace(full, records=train, code_pairs=pairs)
        tfidf = train_router(
            train,
            filler=fold.filler,
            code_pairs=pairs,
            extra=fold.tfidf_extra,
            augment=recipe.augment,
            c=recipe.c,
        )
        log_t = np.log(np.array([[tfidf.predict_proba(q)[lab] for lab in labels] for q, _ in held]) + 1e-12)
        result: dict[str, Any] = {"gold": [label for _, label in held], "tfidf": log_t.tolist()}
        if recipe.encoder:
            from forge_plugins.router.train.finetune import finetune

            tuned = finetune(
                fold.encoder_examples(recipe),
                labels,
                epochs=recipe.epochs,
                max_len=recipe.max_len,
                seed=recipe.seed,
            )
            result["logits"] = tuned.logits([q for q, _ in held]).tolist()
        out[group] = result
        if log is not None:
            log(f"held out {group}: {len(held)} rows")
    return out


def macro_f1(pred: Any, gold: Any, n_labels: int) -> float:
    """Macro-F1 of label indices ``pred`` against ``gold`` (numpy arrays), over the gold labels."""
    scores = []
    for k in range(n_labels):
        tp = float(((pred == k) & (gold == k)).sum())
        fp = float(((pred == k) & (gold != k)).sum())
        fn = float(((pred != k) & (gold == k)).sum())
        if tp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores) if scores else 0.0


def tune_threshold(
    sets: dict[str, tuple[Any, Any]], n_labels: int, fallback: int
) -> tuple[float, dict[str, dict[float, float]]]:
    """The abstain threshold that maximises the mean macro-F1 over several proxy sets.

    Each set (``name -> (probabilities, gold label indices)``) counts the same, whatever its size,
    so a large held-out-source pool does not drown a small hand-written set. A query below the
    threshold counts as a guess of ``fallback`` (the default expert's label). Ties go to the
    smaller threshold: abstaining must earn its place.

    Returns:
        The threshold and, per set, macro-F1 at every threshold of :data:`THRESHOLDS`.
    """
    import numpy as np

    table: dict[str, dict[float, float]] = {}
    for name, (probs, gold) in sets.items():
        p = np.asarray(probs)
        pred, conf = p.argmax(1), p.max(1)
        table[name] = {
            th: round(macro_f1(np.where(conf < th, fallback, pred), np.asarray(gold), n_labels), 4)
            for th in THRESHOLDS
        }
    best = max(THRESHOLDS, key=lambda th: (sum(t[th] for t in table.values()), -th))
    return best, table


def tune_calibration(
    folds: dict[str, dict[str, Any]],
    labels: Sequence[str],
    *,
    abstain_label: str = "general",
    weight: float | None = None,
) -> dict[str, Any]:
    """Mixing weight, temperature and abstain threshold from leave-one-source-out predictions.

    The weight maximises pooled macro-F1; the temperature minimises the negative log-likelihood
    (temperature scaling, Guo et al. 2017); the threshold maximises macro-F1 when a query below it
    is sent to ``abstain_label``'s expert. Folds without encoder logits tune the tf-idf entries only.
    A given ``weight`` is used as it is (chosen on more than these folds).

    Returns:
        ``{"tfidf_weight", "temperature": {"encoder", "tfidf"}, "abstain": {...}, "scores": {...}}``.
    """
    import numpy as np

    from forge_plugins.router.combined import combine

    gold = np.array([labels.index(g) for f in folds.values() for g in f["gold"]])
    log_t = np.array([p for f in folds.values() for p in f["tfidf"]])
    with_encoder = all("logits" in f for f in folds.values())
    logits = np.array([p for f in folds.values() for p in f["logits"]]) if with_encoder else None
    fallback = labels.index(abstain_label) if abstain_label in labels else 0

    def macro(pred: np.ndarray) -> float:
        return macro_f1(pred, gold, len(labels))

    result: dict[str, Any] = {"temperature": {}, "abstain": {}, "scores": {}}
    weights = (
        [round(w, 2) for w in np.linspace(0.0, 1.0, 11)]
        if with_encoder and weight is None
        else [0.3 if weight is None else weight]
    )
    best_w = max(weights, key=lambda w: (macro(combine(log_t, logits, w, 1.0).argmax(1)), -abs(w - 0.3)))
    result["tfidf_weight"] = best_w if with_encoder else 0.3
    for kind, lg, w in (("tfidf", None, 1.0), ("encoder", logits, best_w)):
        if kind == "encoder" and not with_encoder:
            continue
        temps = np.exp(np.linspace(np.log(0.2), np.log(5.0), 61))
        nll = [-np.log(combine(log_t, lg, w, t)[np.arange(len(gold)), gold] + 1e-12).mean() for t in temps]
        temp = float(temps[int(np.argmin(nll))])
        probs = combine(log_t, lg, w, temp)
        pred, conf = probs.argmax(1), probs.max(1)
        threshold = max(THRESHOLDS, key=lambda th: (macro(np.where(conf < th, fallback, pred)), -th))
        # Expected calibration error over 10 confidence bins: how far confidence is from accuracy.
        bins = np.minimum((conf * 10).astype(int), 9)
        ece = sum(
            abs(float(conf[bins == b].mean()) - float((pred == gold)[bins == b].mean()))
            * float((bins == b).mean())
            for b in range(10)
            if (bins == b).any()
        )
        result["temperature"][kind] = round(temp, 3)
        result["abstain"][kind] = threshold
        result["scores"][kind] = {
            "macro_f1": round(macro(pred), 4),
            "macro_f1_abstaining": round(macro(np.where(conf < threshold, fallback, pred)), 4),
            "abstained": round(float((conf < threshold).mean()), 4),
            "ece": round(ece, 4),
            "n": len(gold),
        }
    return result
