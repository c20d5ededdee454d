"""Training of the router's tf-idf model (sklearn at training time only)."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

from forge_plugins.router.features import extract
from forge_plugins.router.model import RouterModel
from forge_plugins.router.train.augment import augment as augment_examples
from forge_plugins.router.train.data import LabelledQuery
from forge_sdk.errors import DataError

__all__ = ["train_router"]


def _matrix(feats: Sequence[Counter[str]], vocab: dict[str, int], idf: Any) -> Any:
    import numpy as np
    import scipy.sparse as sp

    indices: list[int] = []
    values: list[float] = []
    indptr = [0]
    for counts in feats:
        row_idx = [vocab[k] for k in counts if k in vocab]
        row_val = [(1.0 + math.log(counts[k])) * idf[vocab[k]] for k in counts if k in vocab]
        norm = math.sqrt(sum(v * v for v in row_val)) or 1.0
        indices.extend(row_idx)
        values.extend(v / norm for v in row_val)
        indptr.append(len(indices))
    return sp.csr_matrix(
        (np.asarray(values), np.asarray(indices), np.asarray(indptr)), shape=(len(feats), len(vocab))
    )


def train_router(
    records: Sequence[LabelledQuery],
    *,
    filler: Sequence[str] = (),
    code_pairs: Sequence[tuple[str, str]] = (),
    code_label: str = "code",
    extra: Sequence[LabelledQuery] = (),
    augment: bool = True,
    c: float = 10.0,
    min_df: int = 2,
    seed: int = 20240917,
) -> RouterModel:
    """Fit a router on labelled queries (deterministic for a given seed and input).

    Args:
        records: ``(query, label)`` pairs; at least two labels.
        filler: prose paragraphs to embed queries in (pasted-context augmentation).
        code_pairs: ``(request, code answer)`` pairs added as ``code_label`` examples.
        code_label: label given to ``code_pairs``.
        extra: more ``(text, label)`` examples, added as they are (e.g. domain text).
        augment: apply the augmentations at all.
        c: inverse L2 regularisation strength of the logistic regression.
        min_df: drop features seen in fewer training texts than this.
        seed: random seed of the augmentation.

    Raises:
        DataError: fewer than two labels.
    """
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    labels = sorted({label for _, label in records})
    if len(labels) < 2:
        raise DataError(f"router training needs at least two labels, got {labels}")
    examples = list(records)
    if augment:
        examples += augment_examples(records, random.Random(seed), filler, code_pairs, code_label)
    examples += extra
    feats = [extract(q) for q, _ in examples]
    df: Counter[str] = Counter()
    for counts in feats:
        df.update(counts.keys())
    names = sorted(k for k, v in df.items() if v >= min_df)
    vocab = {k: i for i, k in enumerate(names)}
    n = len(feats)
    idf = np.array([math.log((1 + n) / (1 + df[k])) + 1.0 for k in names])
    x = _matrix(feats, vocab, idf)
    y = [label for _, label in examples]
    clf = LogisticRegression(C=c, max_iter=3000, class_weight="balanced").fit(x, y)
    order = [list(clf.classes_).index(label) for label in labels]
    coef = clf.coef_.T[:, order] if len(labels) > 2 else np.hstack([-clf.coef_.T, clf.coef_.T]) / 2
    intercept = clf.intercept_[order] if len(labels) > 2 else np.array([-1, 1]) * clf.intercept_[0] / 2
    meta = {
        "n_records": len(records),
        "n_examples": len(examples),
        "n_features": len(names),
        "params": {
            "c": c,
            "min_df": min_df,
            "seed": seed,
            "augment": augment,
            "code_pairs": len(code_pairs),
            "extra": len(extra),
        },
        "class_counts": dict(sorted(Counter(label for _, label in records).items())),
    }
    return RouterModel(labels, vocab, idf, coef, intercept, meta)
