"""The neural router's model: tf-idf features into a multinomial logistic regression.

Inference is plain numpy over weights stored in ``router.npz`` (no pickle: the vocabulary is a
unicode array, the rest float32) plus ``router.json`` metadata, so loading is safe and needs
neither sklearn nor a model hub. Training (sklearn, imported lazily) lives in
:mod:`forge_plugins.router.train.training`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forge_plugins.router.features import extract
from forge_sdk.errors import ModelError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["DEFAULT_MODEL_DIR", "FORMAT", "RouterModel"]

DEFAULT_MODEL_DIR = Path(__file__).parent / "shipped"
"""The model that ships inside the package (trained on ``router_train.jsonl``)."""
FORMAT = "forge-router-linear/1"
"""Format tag written to ``router.json``; loading refuses anything else."""


class RouterModel:
    """A trained query classifier over specialization labels.

    Args:
        labels: class labels, in weight-column order.
        vocab: feature name to column index.
        idf: inverse document frequency per feature.
        coef: weights, shape ``(n_features, n_labels)``.
        intercept: bias per label.
        meta: free-form training metadata kept in ``router.json``.
    """

    def __init__(
        self,
        labels: Sequence[str],
        vocab: dict[str, int],
        idf: np.ndarray,
        coef: np.ndarray,
        intercept: np.ndarray,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.labels = list(labels)
        self.vocab = vocab
        self.idf = idf
        self.coef = coef
        self.intercept = intercept
        self.meta = dict(meta or {})

    def vectorize(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Sparse tf-idf vector of ``text``: column indices and L2-normalised values."""
        import numpy as np

        idx: list[int] = []
        counts: list[int] = []
        vocab = self.vocab
        for key, count in extract(text).items():
            j = vocab.get(key)
            if j is not None:
                idx.append(j)
                counts.append(count)
        cols = np.asarray(idx, dtype=np.int64)
        vals = (1.0 + np.log(np.asarray(counts, dtype=np.float64))) * self.idf[cols]
        norm = float(np.sqrt(vals @ vals)) or 1.0
        return cols, vals / norm

    def predict_proba(self, text: str) -> dict[str, float]:
        """Probability of each label for ``text``."""
        import numpy as np

        cols, vals = self.vectorize(text)
        logits = self.intercept.astype(np.float64)
        if len(cols):
            logits = logits + vals @ self.coef[cols]
        logits -= logits.max()
        probs = np.exp(logits)
        probs /= probs.sum()
        return {label: float(p) for label, p in zip(self.labels, probs, strict=True)}

    def predict(self, text: str) -> tuple[str, float]:
        """The most likely label of ``text`` and its probability."""
        probs = self.predict_proba(text)
        label = max(probs, key=probs.__getitem__)
        return label, probs[label]

    def save(self, directory: str | Path) -> Path:
        """Write ``router.npz`` and ``router.json`` into ``directory`` (created if needed)."""
        import numpy as np

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        names = sorted(self.vocab, key=self.vocab.__getitem__)
        np.savez_compressed(
            out / "router.npz",
            vocab=np.array(names, dtype=str),
            idf=self.idf.astype(np.float32),
            coef=self.coef.astype(np.float32),
            intercept=self.intercept.astype(np.float32),
        )
        meta = {"format": FORMAT, "labels": self.labels, **self.meta}
        (out / "router.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return out

    @classmethod
    def load(cls, directory: str | Path) -> RouterModel:
        """Load a model written by :meth:`save`.

        Raises:
            ModelError: the folder is missing, incomplete, corrupt or of another format.
        """
        import numpy as np

        folder = Path(directory)
        try:
            meta = json.loads((folder / "router.json").read_text())
            with np.load(folder / "router.npz", allow_pickle=False) as data:
                names = data["vocab"].tolist()
                idf, coef, intercept = data["idf"], data["coef"], data["intercept"]
        except FileNotFoundError as exc:
            raise ModelError(
                f"router model not found in {folder}: missing {Path(exc.filename).name}"
            ) from exc
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"router model in {folder} is unreadable: {exc}") from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ModelError(f"router model in {folder} is not of format {FORMAT!r}")
        labels = meta.get("labels")
        if (
            not isinstance(labels, list)
            or coef.shape != (len(names), len(labels))
            or idf.shape != (len(names),)
            or intercept.shape != (len(labels),)
        ):
            raise ModelError(f"router model in {folder} has inconsistent shapes")
        extra = {k: v for k, v in meta.items() if k not in ("format", "labels")}
        return cls(labels, {name: i for i, name in enumerate(names)}, idf, coef, intercept, extra)
