"""Training and evaluation of the neural router (sklearn at training time only).

The training set's styles are narrow (short factoid questions, templated writing prompts, tidy
word problems), so training augments it towards real traffic: a query inside unrelated pasted
prose, two queries of one class run together (multi-part requests), shouted or capitalised
variants, and, when a code chat set is given, code requests followed or preceded by their code.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from forge_plugins.router_features import extract
from forge_plugins.router_model import RouterModel
from forge_sdk.errors import DataError

__all__ = [
    "LabelledQuery",
    "evaluate",
    "load_chat_prompts",
    "load_code_chat",
    "load_filler",
    "load_labelled",
    "train_router",
]

LabelledQuery = tuple[str, str]
"""A ``(query, label)`` pair."""

_NORM = re.compile(r"\W+")


def _read_lines(path: Path) -> Iterable[tuple[int, str]]:
    try:
        with path.open(encoding="utf-8") as fh:
            yield from enumerate(fh, start=1)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: file not found") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror}") from exc


def load_labelled(path: str | Path) -> list[LabelledQuery]:
    """Read ``{"query", "label"}`` JSON lines (other keys are ignored).

    Raises:
        DataError: the file is missing or empty, or a line is not such an object; the message
            names the file and line.
    """
    source = Path(path)
    out: list[LabelledQuery] = []
    for lineno, line in _read_lines(source):
        if not line.strip():
            continue
        where = f"{source}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: invalid JSON ({exc.msg})") from exc
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object with 'query' and 'label'")
        query, label = record.get("query"), record.get("label")
        if not isinstance(query, str) or not query.strip():
            raise DataError(f"{where}: 'query' must be a non-empty string")
        if not isinstance(label, str) or not label.strip():
            raise DataError(f"{where}: 'label' must be a non-empty string")
        out.append((query, label.strip()))
    if not out:
        raise DataError(f"{source}: no records")
    return out


def load_filler(path: str | Path, *, min_chars: int = 200, max_chars: int = 1500) -> list[str]:
    """Paragraphs (blank-line separated) of a plain-text file, for pasted-context augmentation.

    Raises:
        DataError: the file is unreadable or has no paragraph of a usable size.
    """
    source = Path(path)
    text = "".join(line for _, line in _read_lines(source))
    paragraphs = [p.strip() for p in text.split("\n\n") if min_chars <= len(p.strip()) <= max_chars]
    if not paragraphs:
        raise DataError(f"{source}: no paragraph of {min_chars}-{max_chars} characters")
    return paragraphs


def load_code_chat(path: str | Path, *, source_contains: str = "") -> list[tuple[str, str]]:
    """``(request, answer)`` pairs from a chat JSONL file (``{"messages": [user, assistant, ...]}``).

    Only rows whose ``source`` contains ``source_contains`` are kept (all rows when empty).

    Raises:
        DataError: a line is not a chat record; the message names the file and line.
    """
    source = Path(path)
    pairs: list[tuple[str, str]] = []
    for lineno, line in _read_lines(source):
        if not line.strip():
            continue
        where = f"{source}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: invalid JSON ({exc.msg})") from exc
        messages = record.get("messages") if isinstance(record, dict) else None
        if (
            not isinstance(messages, list)
            or len(messages) < 2
            or not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages[:2])
        ):
            raise DataError(f"{where}: expected {{'messages': [user, assistant, ...]}} with string contents")
        if source_contains and source_contains not in str(record.get("source", "")):
            continue
        pairs.append((messages[0]["content"], messages[1]["content"]))
    return pairs


def load_chat_prompts(path: str | Path, n: int, *, seed: int = 20240917) -> list[str]:
    """``n`` distinct opening user turns, sampled with ``seed``, of a chat or preference JSONL file.

    A row's opening turn is the first message of ``prompt_messages`` or ``messages``.

    Raises:
        DataError: a line has neither list, or the file has fewer than ``n`` distinct turns.
    """
    source = Path(path)
    turns: set[str] = set()
    for lineno, line in _read_lines(source):
        if not line.strip():
            continue
        where = f"{source}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: invalid JSON ({exc.msg})") from exc
        messages = None
        if isinstance(record, dict):
            messages = record.get("prompt_messages") or record.get("messages")
        if not isinstance(messages, list) or not messages or not isinstance(messages[0], dict):
            raise DataError(
                f"{where}: expected 'prompt_messages' or 'messages': [{{'role', 'content'}}, ...]"
            )
        content = messages[0].get("content")
        if isinstance(content, str) and len(content.strip()) > 15:
            turns.add(content.strip())
    if len(turns) < n:
        raise DataError(f"{source}: only {len(turns)} distinct opening turns, {n} asked for")
    return random.Random(f"chat-prompts:{seed}").sample(sorted(turns), n)


# Chatty framing seen in real traffic, attached to every class alike so that it carries no signal.
_PREFIXES = (
    "",
    "hey, ",
    "hi! ",
    "quick question: ",
    "can you help me with this? ",
    "I need some help. ",
    "please help: ",
    "ok so ",
    "Hello, I have a question. ",
    "I was wondering: ",
    "Hi there,\n\n",
)
_SUFFIXES = (
    "",
    " thanks!",
    " any ideas?",
    " Please explain.",
    " Thank you in advance.",
    " I'm a bit stuck.",
    " please keep it short.",
    "\n\nThanks",
    " Can you help?",
)
_LATEX = re.compile(r"\$|\\[a-zA-Z]+")
_LATEX_SUBS = (
    (re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}"), r"(\1)/(\2)"),
    (re.compile(r"\\sqrt\s*\{([^{}]*)\}"), r"sqrt(\1)"),
    (re.compile(r"\\(?:cdot|times)"), "*"),
    (re.compile(r"\\(?:le|leq)\b"), "<="),
    (re.compile(r"\\(?:ge|geq)\b"), ">="),
    (re.compile(r"\\(?:left|right|displaystyle|,|!|;)"), ""),
    (re.compile(r"\\([a-zA-Z]+)"), r"\1"),
    (re.compile(r"[${}]"), ""),
)


def _plain_math(text: str) -> str:
    """``text`` with its LaTeX spelled the way people type maths in a chat box."""
    for pattern, repl in _LATEX_SUBS:
        text = pattern.sub(repl, text)
    return text


def _augment(
    records: Sequence[LabelledQuery],
    rng: random.Random,
    filler: Sequence[str],
    code_pairs: Sequence[tuple[str, str]],
    code_label: str,
) -> list[LabelledQuery]:
    by_label: dict[str, list[str]] = defaultdict(list)
    for query, label in records:
        by_label[label].append(query)
    out: list[LabelledQuery] = []
    for query, label in records:
        roll = rng.random()
        if roll < 0.25 and filler:
            context = rng.choice(filler)
            out.append((f"{context}\n\n{query}" if rng.random() < 0.5 else f"{query}\n\n{context}", label))
        elif roll < 0.5:
            out.append((f"{query}\n{rng.choice(by_label[label])}", label))
        roll = rng.random()
        if roll < 0.05:
            out.append((query.upper(), label))
        elif roll < 0.15:
            out.append((query.lower(), label))
        elif roll < 0.2:
            out.append((query.capitalize(), label))
        if rng.random() < 0.2:
            out.append((rng.choice(_PREFIXES) + query + rng.choice(_SUFFIXES), label))
        if _LATEX.search(query) and rng.random() < 0.6:
            out.append((_plain_math(query), label))
    seen = {_NORM.sub("", q.lower()) for q, _ in records}
    for request, answer in code_pairs:
        if _NORM.sub("", request.lower()) in seen:
            continue
        roll = rng.random()
        if roll < 0.4:
            out.append((request, code_label))
        elif roll < 0.8:
            out.append((f"{request}\n\n```\n{answer}\n```", code_label))
        else:
            out.append((f"{answer}\n\n{request}", code_label))
    return out


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
        examples += _augment(records, random.Random(seed), filler, code_pairs, code_label)
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
