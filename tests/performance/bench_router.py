"""Router benchmark: latency on one core, and quality measured so that it does not flatter the model.

Prints figures, asserts nothing.

* Latency: each classifier over 800 distinct queries (cache cold), pinned to one CPU core, wall and
  thread-CPU milliseconds (on a shared machine the wall-clock tail is other processes' time slices).
* Hand-written sets, shipped model (or ``--model DIR``): ``router_fresh.jsonl`` (200: Stack
  Overflow-style questions, homework, emails, trivia), ``router_fresh_plain.jsonl`` (200 written for
  this benchmark without looking at the training rows, mostly without domain keywords: prose code
  questions, writing requests, chat), ``router_fresh_practical.jsonl`` (120, 30 a class, written
  before any result of the keyword-free training recipe was seen: practical writing, software
  problems told by their symptoms, everyday quantities, everyday questions) and
  ``router_stress.jsonl`` (80: pasted code, shouting, multi-part, LaTeX).
* Leave-one-source-out over ``router_train.jsonl``: a model trained without one source (dataset) is
  scored on it. The tf-idf model runs all 13 folds; the fine-tuned encoder (minutes of CPU a fold)
  runs ``--encoder-folds`` (default: one source per class) with ``--encoder-examples`` and
  ``--epochs`` lighter than the shipped recipe, so its figure is, if anything, pessimistic.
  ``--tune`` prints the mixing weight and temperatures that these predictions give, and the
  abstain threshold that maximises the mean macro-F1 over the encoder folds and the four
  hand-written sets (what ``forge_plugins.router.train.recipe.CALIBRATION`` holds).

Run: ``OMP_NUM_THREADS=1 python tests/performance/bench_router.py [--quick]`` (``--quick``: latency and
hand-written sets only, ~1 minute; the full run is ~25 minutes of CPU).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from forge_plugins import HybridClassifier, KeywordClassifier, NeuralClassifier
from forge_plugins.router.combined import combine
from forge_plugins.router.train.evaluation import (
    evaluate,
    latency,
    leave_one_source_out,
    tune_calibration,
    tune_threshold,
)
from forge_plugins.router.train.recipe import Recipe
from forge_sdk import DEFAULT_EXPERTS

DATA = Path(os.environ.get("FORGE_SHARED_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data")
SETS = Path(__file__).resolve().parents[1] / "plugins" / "data"
HAND_WRITTEN = (
    "router_fresh.jsonl",
    "router_fresh_plain.jsonl",
    "router_fresh_practical.jsonl",
    "router_stress.jsonl",
)
ENCODER_FOLDS = (
    "shilliscmu/TranxConalaBaseline:conala-train.json",
    "Quehry/HelloBench:data/main_data/open_ended_qa.jsonl",
    "Quehry/HelloBench:data/main_data/heuristic_text_generation.jsonl",
    "aiwaves-cn/agents",
)


def _load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _classifiers(model_dir: str | None) -> dict[str, object]:
    where = {"model_dir": model_dir} if model_dir else {}
    return {
        "neural": NeuralClassifier(DEFAULT_EXPERTS, **where),
        "neural-no-abstain": NeuralClassifier(DEFAULT_EXPERTS, threshold=0.0, **where),
        "neural-tfidf": NeuralClassifier(DEFAULT_EXPERTS, encoder=False, **where),
        "hybrid": HybridClassifier(DEFAULT_EXPERTS, **where),
        "keyword": KeywordClassifier(DEFAULT_EXPERTS),
    }


def _table(title: str, reports: dict[str, dict]) -> None:
    print(f"\n{title}")
    labels = sorted(next(iter(reports.values()))["per_class"])
    print(f"{'classifier':20s} {'acc':>6s} {'macroF1':>8s} " + " ".join(f"{lab:>8s}" for lab in labels))
    for name, rep in reports.items():
        per = " ".join(f"{rep['per_class'][lab]['f1']:8.3f}" for lab in labels)
        print(f"{name:20s} {rep['accuracy']:6.3f} {rep['macro_f1']:8.3f} {per}")


def _pooled(folds: dict[str, dict], labels: list[str], probs_of: object) -> dict:
    gold = [g for f in folds.values() for g in f["gold"]]
    probs = probs_of(folds)  # type: ignore[operator]
    guesses = iter(labels[int(p.argmax())] for p in probs)
    return evaluate(lambda _q: next(guesses), [(str(i), g) for i, g in enumerate(gold)])


def _tune_abstain(clf: object, enc: dict, sets: dict, labels: list[str], w: float, cal: dict) -> float:
    """The abstain threshold from the encoder folds and the hand-written sets, counted alike.

    The sets' probabilities are the model's (``clf``), mixed and tempered as the folds say.
    """
    import numpy as np

    router = clf.model  # type: ignore[attr-defined]
    temp = cal["temperature"]["encoder"]
    stacked = {k: np.array([p for f in enc.values() for p in f[k]]) for k in ("tfidf", "logits")}
    gold = np.array([labels.index(g) for f in enc.values() for g in f["gold"]])
    proxies = {"LOSO folds": (combine(stacked["tfidf"], stacked["logits"], w, temp), gold)}
    for name, records in sets.items():
        queries = [q for q, _ in records]
        log_t = np.log(
            np.array([[router.tfidf.predict_proba(q)[lab] for lab in labels] for q in queries]) + 1e-12
        )
        logits = np.array([router.encoder.logits(q) for q in queries])
        proxies[name] = (combine(log_t, logits, w, temp), np.array([labels.index(g) for _, g in records]))
    best, table = tune_threshold(proxies, len(labels), labels.index("general"))
    shown = sorted({0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, best})
    print("\nabstain threshold: macro-F1 per proxy (below it the query goes to general)")
    print(f"{'set':30s} " + " ".join(f"{th:>6.2f}" for th in shown))
    for name, row in table.items():
        print(f"{name[:30]:30s} " + " ".join(f"{row[th]:6.3f}" for th in shown))
    means = " ".join(f"{sum(r[th] for r in table.values()) / len(table):6.3f}" for th in shown)
    print(f"{'mean':30s} {means}\nbest (largest mean, ties to the smaller): {best}")
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip leave-one-source-out")
    parser.add_argument("--tune", action="store_true", help="print the calibration the folds give")
    parser.add_argument("--encoder-folds", type=int, default=len(ENCODER_FOLDS), help="0 skips them")
    parser.add_argument("--encoder-examples", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--model", help="model folder to score (default: the shipped model)")
    parser.add_argument(
        "--folds",
        metavar="FILE",
        help="the encoder folds' predictions: read from FILE when it exists, else computed and saved "
        "there (to tune or score another model without retraining the folds)",
    )
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, as the target says
    import numpy as np

    classifiers = _classifiers(args.model)
    sets = {name: [(r["query"], r["label"]) for r in _load(SETS / name)] for name in HAND_WRITTEN}
    rows = _load(DATA / "router_train.jsonl")
    queries = list(dict.fromkeys([q for s in sets.values() for q, _ in s] + [r["query"] for r in rows[::6]]))
    print(f"latency, {len(queries)} distinct queries, one core, ms (wall | thread CPU)")
    print(f"{'classifier':20s} {'p50':>7s} {'p90':>7s} {'p99':>7s} | {'p50':>7s} {'p90':>7s} {'p99':>7s}")
    for name in ("neural", "neural-tfidf", "hybrid", "keyword"):
        clf = classifiers[name]
        model = getattr(clf, "model", None)
        if model is not None:
            model.clear_cache()
        t = latency(clf.classify_with_confidence, queries)  # type: ignore[attr-defined]
        print(
            f"{name:20s} {t['wall_p50_ms']:7.2f} {t['wall_p90_ms']:7.2f} {t['wall_p99_ms']:7.2f} | "
            f"{t['cpu_p50_ms']:7.2f} {t['cpu_p90_ms']:7.2f} {t['cpu_p99_ms']:7.2f}"
        )
    for name, records in sets.items():
        reports = {n: evaluate(c.classify, records) for n, c in classifiers.items()}  # type: ignore[attr-defined]
        _table(f"{name} ({len(records)} queries, {args.model or 'shipped model'})", reports)
    if args.quick:
        return
    labels = sorted({r["label"] for r in rows})
    folds = leave_one_source_out(rows, DATA / "router_train.jsonl", Recipe(encoder=False))
    tfidf = _pooled(
        folds, labels, lambda f: combine(np.array([p for x in f.values() for p in x["tfidf"]]), None, 1, 1)
    )
    _table("leave-one-source-out, tf-idf model, all 13 folds (pooled)", {"neural-tfidf": tfidf})
    tuned = tune_calibration(folds, labels)
    if args.encoder_folds:
        recipe = Recipe(encoder_examples=args.encoder_examples, epochs=args.epochs)
        groups = list(ENCODER_FOLDS[: args.encoder_folds])
        saved = Path(args.folds) if args.folds else None
        if saved is not None and saved.exists():
            enc = {g: f for g, f in json.loads(saved.read_text()).items() if g in groups}
        else:
            enc = leave_one_source_out(rows, DATA / "router_train.jsonl", recipe, groups, log=print)
            if saved is not None:
                saved.write_text(json.dumps(enc))
        cal = tune_calibration(enc, labels)
        tuned = {**tuned, "tfidf_weight": cal["tfidf_weight"]}
        tuned["temperature"]["encoder"] = cal["temperature"]["encoder"]
        tuned["abstain"]["encoder"] = cal["abstain"]["encoder"]
        tuned["scores"]["encoder"] = cal["scores"]["encoder"]
        w = cal["tfidf_weight"]
        reports = {
            "tfidf": _pooled(
                enc,
                labels,
                lambda f: combine(np.array([p for x in f.values() for p in x["tfidf"]]), None, 1, 1),
            ),
            "encoder": _pooled(
                enc,
                labels,
                lambda f: combine(
                    np.zeros((sum(len(x["gold"]) for x in f.values()), len(labels))),
                    np.array([p for x in f.values() for p in x["logits"]]),
                    0,
                    1,
                ),
            ),
            f"mix w={w}": _pooled(
                enc,
                labels,
                lambda f: combine(
                    np.array([p for x in f.values() for p in x["tfidf"]]),
                    np.array([p for x in f.values() for p in x["logits"]]),
                    w,
                    1,
                ),
            ),
        }
        _table(
            f"leave-one-source-out, {len(groups)} folds with the encoder ({args.encoder_examples} examples, "
            f"{args.epochs} epoch(s)), pooled",
            reports,
        )
        for group, fold in enc.items():
            right = sum(
                labels[int(np.argmax(z))] == g for z, g in zip(fold["logits"], fold["gold"], strict=True)
            )
            print(f"  {group[:70]:70s} n={len(fold['gold']):4d} encoder acc={right / len(fold['gold']):.3f}")
        if args.tune:
            tuned["abstain"]["encoder"] = _tune_abstain(classifiers["neural"], enc, sets, labels, w, cal)
    if args.tune:
        print("\ncalibration from these folds:\n" + json.dumps(tuned, indent=2))


if __name__ == "__main__":
    main()
