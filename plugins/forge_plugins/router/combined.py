"""The router a classifier runs: tf-idf model, fine-tuned encoder, their calibrated mix, an LRU cache.

``router.json`` carries the mix: the tf-idf model's weight in a geometric mean of the two models'
probabilities, a temperature that calibrates the result (fitted on leave-one-source-out
predictions, so ``confidence`` is close to the share of such predictions that are right), and the
abstain threshold tuned on the same predictions. A folder without an encoder, or a machine
without ``onnxruntime``, gets the tf-idf model alone.

Repeated queries (retries, the same prompt from many users) are answered from an LRU cache keyed
by the text the models read (:func:`forge_plugins.router.features.clip`), as SDD §11.2 suggests.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forge_plugins.router.encoder import ENCODER_FILE, EncoderClassifier, encoder_runtime_available
from forge_plugins.router.features import clip
from forge_plugins.router.model import DEFAULT_MODEL_DIR, RouterModel
from forge_sdk.errors import ConfigurationError, ModelError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["CACHE_SIZE", "Router", "combine", "load_router"]

CACHE_SIZE = 4096
"""Distinct query texts whose probabilities are kept (a few MB at most: keys are clipped text)."""


def combine(
    log_tfidf: np.ndarray, logits: np.ndarray | None, weight: float, temperature: float
) -> np.ndarray:
    """Calibrated probabilities from tf-idf log-probabilities and encoder logits (rows or one vector).

    ``weight`` is the tf-idf model's share of the geometric mean; ``temperature`` divides the mixed
    log-probabilities before the softmax. Without logits the tf-idf model stands alone.
    """
    import numpy as np

    mixed = np.asarray(log_tfidf, dtype=np.float64)
    if logits is not None:
        z = np.asarray(logits, dtype=np.float64)
        z = z - z.max(axis=-1, keepdims=True)
        log_e = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
        mixed = weight * mixed + (1.0 - weight) * log_e
    mixed = mixed / temperature
    mixed = mixed - mixed.max(axis=-1, keepdims=True)
    probs = np.exp(mixed)
    return probs / probs.sum(axis=-1, keepdims=True)


class Router:
    """Label probabilities of a query from the tf-idf model and (when present) the encoder.

    Args:
        tfidf: the tf-idf model (its ``meta`` holds the mix: ``combine``).
        encoder: the fine-tuned encoder, or ``None`` for tf-idf alone.
    """

    def __init__(self, tfidf: RouterModel, encoder: EncoderClassifier | None) -> None:
        if encoder is not None and encoder.labels != tfidf.labels:
            raise ModelError(f"encoder labels {encoder.labels} differ from the tf-idf model's {tfidf.labels}")
        self.tfidf = tfidf
        self.encoder = encoder
        self.labels = tfidf.labels
        self.meta: dict[str, Any] = tfidf.meta
        mix = tfidf.meta.get("combine") or {}
        key = "encoder" if encoder is not None else "tfidf"
        self.weight = float(mix.get("tfidf_weight", 0.5))
        self.temperature = float((mix.get("temperature") or {}).get(key, 1.0))
        self.threshold = float((mix.get("abstain") or {}).get(key, 0.0))
        """Confidence below which the query goes to the default expert (tuned on the proxy)."""
        self.heavy = encoder is not None
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def clear_cache(self) -> None:
        """Forget the cached answers."""
        with self._lock:
            self._cache.clear()

    def probabilities(self, text: str) -> np.ndarray:
        """Calibrated probability of each label (in ``labels`` order) for ``text``."""
        import numpy as np

        key = clip(text)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        tfidf = self.tfidf.predict_proba(key)
        log_t = np.log(np.array([tfidf[label] for label in self.labels]) + 1e-12)
        logits = self.encoder.logits(key) if self.encoder is not None else None
        probs = combine(log_t, logits, self.weight, self.temperature)
        with self._lock:
            self._cache[key] = probs
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return probs

    def predict_proba(self, text: str) -> dict[str, float]:
        """Probability of each label for ``text``."""
        return {label: float(p) for label, p in zip(self.labels, self.probabilities(text), strict=True)}

    def predict(self, text: str) -> tuple[str, float]:
        """The most likely label of ``text`` and its probability."""
        probs = self.probabilities(text)
        best = int(probs.argmax())
        return self.labels[best], float(probs[best])


_ROUTERS: dict[tuple[str, float, bool], Router] = {}
_ROUTERS_LOCK = threading.Lock()


def load_router(model_dir: str | Path | None = None, encoder: bool | str = "auto") -> Router:
    """The router of ``model_dir`` (default: the shipped one), loaded once per process.

    Cached by folder, ``router.json``'s modification time and encoder use, so a model retrained in
    the same folder is picked up.

    Args:
        model_dir: model folder.
        encoder: ``True`` to require the fine-tuned encoder, ``False`` for tf-idf alone, ``"auto"``
            to use it when the folder has one and ``onnxruntime``/``tokenizers`` are installed.

    Raises:
        ConfigurationError: a bad ``encoder`` value, or ``True`` without the runtime installed.
        forge_sdk.errors.ModelError: no readable model (or, with ``True``, no encoder).
    """
    if encoder not in (True, False, "auto"):
        raise ConfigurationError(f'encoder must be true, false or "auto", got {encoder!r}')
    folder = Path(model_dir).expanduser().resolve() if model_dir else DEFAULT_MODEL_DIR
    if encoder is True and not encoder_runtime_available():
        raise ConfigurationError(
            "the router encoder needs onnxruntime and tokenizers: pip install 'forge-plugins[embed]'"
        )
    if encoder == "auto":
        encoder = (folder / ENCODER_FILE).exists() and encoder_runtime_available()
    if encoder and not (folder / ENCODER_FILE).exists():
        raise ModelError(
            f"router model in {folder} has no encoder ({ENCODER_FILE}): train it with forge-train router"
        )
    meta = folder / "router.json"
    key = (str(folder), meta.stat().st_mtime if meta.exists() else -1.0, bool(encoder))
    with _ROUTERS_LOCK:
        router = _ROUTERS.get(key)
        if router is None:
            tfidf = RouterModel.load(folder)
            enc = None
            if encoder:
                info = tfidf.meta.get("encoder") or {}
                enc = EncoderClassifier(folder, tfidf.labels, int(info.get("max_len", 64)))
            router = Router(tfidf, enc)
            _ROUTERS[key] = router
        return router
