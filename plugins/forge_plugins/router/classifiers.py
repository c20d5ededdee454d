"""The built-in query classifiers: ``keyword``, ``neural`` and ``hybrid`` (SDD §5.3, §8.2)."""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from forge_plugins.router.embed import (
    HEAD_FILE,
    EmbeddingHead,
    EnsembleRouter,
    embeddings_available,
    get_encoder,
)
from forge_plugins.router.model import DEFAULT_MODEL_DIR, RouterModel
from forge_sdk import Classification, Classifier, ExpertModel
from forge_sdk.errors import ConfigurationError

__all__ = ["HybridClassifier", "KeywordClassifier", "NeuralClassifier", "load_router", "load_router_model"]

_MODELS: dict[tuple[str, float], RouterModel] = {}
_MODELS_LOCK = threading.Lock()


def load_router_model(model_dir: str | Path | None = None) -> RouterModel:
    """The router model in ``model_dir`` (default: the shipped one), loaded once per process.

    Cached by path and modification time, so a retrained model in the same folder is picked up.

    Raises:
        forge_sdk.errors.ModelError: no readable model there.
    """
    folder = Path(model_dir).expanduser().resolve() if model_dir else DEFAULT_MODEL_DIR
    meta = folder / "router.json"
    key = (str(folder), meta.stat().st_mtime if meta.exists() else -1.0)
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = RouterModel.load(folder)
            _MODELS[key] = model
        return model


def load_router(
    model_dir: str | Path | None = None, embeddings: bool | str = "auto"
) -> RouterModel | EnsembleRouter:
    """The router of ``model_dir``: the tf-idf model, or it and the embedding head together.

    Args:
        model_dir: model folder (default: the shipped one).
        embeddings: ``True`` to require the embedding head, ``False`` for tf-idf only, ``"auto"`` to
            use it when the folder has one and the ``embed`` extra is installed.

    Raises:
        ConfigurationError: a bad ``embeddings`` value, or ``True`` without the extra installed.
        forge_sdk.errors.ModelError: no readable model (or, with ``True``, no embedding head).
    """
    if embeddings not in (True, False, "auto"):
        raise ConfigurationError(f'embeddings must be true, false or "auto", got {embeddings!r}')
    model = load_router_model(model_dir)
    folder = Path(model_dir).expanduser().resolve() if model_dir else DEFAULT_MODEL_DIR
    if embeddings == "auto":
        embeddings = (folder / HEAD_FILE).exists() and embeddings_available()
    if not embeddings:
        return model
    key = (
        str(folder / HEAD_FILE),
        (folder / HEAD_FILE).stat().st_mtime if (folder / HEAD_FILE).exists() else -1.0,
    )
    with _MODELS_LOCK:
        head = _HEADS.get(key)
        if head is None:
            head = EmbeddingHead.load(folder)
            _HEADS[key] = head
    return EnsembleRouter(model, head, get_encoder())


_HEADS: dict[tuple[str, float], EmbeddingHead] = {}


def _check_options(name: str, options: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigurationError(
            f"{name} classifier: unknown option(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed)) or 'none'}"
        )


def _keyword_pattern(keyword: str) -> str:
    # \b is only a whole-word test next to a word character; a keyword that starts or ends with a
    # symbol ("c++", ".net") needs a lookaround there instead (lookarounds everywhere cost ~7x).
    body = r"\s+".join(re.escape(part) for part in keyword.split())
    start = r"\b" if re.match(r"\w", keyword) else r"(?<!\w)"
    end = r"\b" if re.search(r"\w$", keyword) else r"(?!\w)"
    return start + body + end


class KeywordClassifier(Classifier):
    """Whole-word, case-insensitive matching of the experts' ``keywords``.

    One precompiled alternation covers every keyword of every expert; a named group per keyword
    says whose it is. Confidence is high when the matches point at one expert, and shrinks with
    the share of matches that went to other experts; no match gives the default expert at 0.1.
    """

    name = "keyword"
    UNAMBIGUOUS = 0.9
    """Confidence when every match points at one expert."""
    NO_MATCH = 0.1
    """Confidence of the default expert when nothing matches."""

    def __init__(
        self, experts: Sequence[ExpertModel], *, default_expert: str = "general", **options: Any
    ) -> None:
        _check_options(self.name, options, set())
        self._pattern: re.Pattern[str] | None = None
        self._owners: dict[str, str] = {}
        super().__init__(experts, default_expert=default_expert, **options)

    def update_experts(self, experts: Sequence[ExpertModel]) -> None:
        """Replace the experts and recompile the keyword pattern."""
        super().update_experts(experts)
        owners: dict[str, str] = {}
        # A keyword several experts claim goes to the highest priority (an installed mathexpert
        # takes "integral" from the built-in math), then to the one registered first.
        ranked = sorted(self.experts.values(), key=lambda e: -getattr(e, "priority", 0))
        for expert in ranked:
            for keyword in expert.keywords:
                folded = " ".join(keyword.casefold().split())
                if folded:
                    owners.setdefault(folded, expert.name)
        # Longer keywords first, so "machine learning" wins over "machine" at the same spot. One
        # alternation without groups is ~10x faster than a named group per keyword.
        ordered = sorted(owners, key=len, reverse=True)
        self._owners = owners
        self._pattern = (
            re.compile("|".join(_keyword_pattern(k) for k in ordered), re.IGNORECASE) if ordered else None
        )

    def matches(self, query: str) -> dict[str, list[str]]:
        """Expert name to the keywords of it found in ``query``, in order of first appearance."""
        found: dict[str, list[str]] = {}
        if self._pattern is None:
            return found
        for hit in self._pattern.findall(query):
            # casefold, not lower: IGNORECASE matches a long s (U+017F) for "s" and the Kelvin
            # sign for "k", which lower() leaves as they are. A hit whose folding still differs is skipped.
            keyword = " ".join(hit.casefold().split())
            owner = self._owners.get(keyword)
            if owner is not None:
                found.setdefault(owner, []).append(keyword)
        return found

    def classify_with_confidence(self, query: str) -> Classification:
        """Pick the expert with most keyword hits (earliest hit breaks ties)."""
        found = self.matches(query)
        if not found:
            return Classification(self.default_expert, self.NO_MATCH, "default:no-keyword")
        total = sum(len(hits) for hits in found.values())
        expert = max(found, key=lambda name: len(found[name]))  # dicts keep first-hit order on ties
        share = len(found[expert]) / total
        if len(found) == 1:
            return Classification(expert, self.UNAMBIGUOUS, f"keyword:{found[expert][0]}")
        others = ",".join(sorted(found))
        return Classification(expert, round(self.UNAMBIGUOUS * share, 4), f"keyword-ambiguous:{others}")


class NeuralClassifier(Classifier):
    """A trained tf-idf + logistic-regression router, run in numpy (tens of microseconds).

    Options:
        model_dir: folder written by ``forge-train router`` (default: the model shipped in
            this package, trained on ``router_train.jsonl``).
        embeddings: combine the tf-idf model with the MiniLM embedding head: ``true``, ``false``
            or ``"auto"`` (default: used when the model has a head and the ``embed`` extra is
            installed; better on unseen styles, ~9 ms a query instead of ~0.1 ms).
    """

    name = "neural"

    def __init__(
        self, experts: Sequence[ExpertModel], *, default_expert: str = "general", **options: Any
    ) -> None:
        _check_options(self.name, options, {"model_dir", "embeddings"})
        super().__init__(experts, default_expert=default_expert, **options)
        self.model = load_router(options.get("model_dir"), options.get("embeddings", "auto"))
        self.heavy = isinstance(self.model, EnsembleRouter)  # the MiniLM encoder takes ~10 ms

    def predict(self, query: str) -> tuple[str, float]:
        """The predicted specialization label of ``query`` and its probability."""
        return self.model.predict(query)

    def classify_with_confidence(self, query: str) -> Classification:
        """Map the predicted label to an expert; confidence is the label's probability."""
        if not query.strip():
            return Classification(self.default_expert, 0.0, "default:empty")
        label, prob = self.predict(query)
        return Classification(self.expert_for_label(label), round(prob, 4), f"neural:{label}:{prob:.2f}")


class HybridClassifier(Classifier):
    """SDD §8.2 done with care: keywords when unambiguous, the neural model when sure, else default.

    Keyword lists are precise but blind to context ("write a function" is code), so the neural
    model may overrule an unambiguous keyword match, but only when it is very sure.

    Options:
        threshold: neural confidence needed to decide when no keyword decides (default 0.4, the
            best on both leave-one-source-out and the stress set; below it the default expert serves).
        override: the neural model overrules an unambiguous keyword only when its confidence
            is above this (default 0.8; 1.0 means never).
        model_dir, embeddings: as for the neural classifier.
    """

    name = "hybrid"

    def __init__(
        self, experts: Sequence[ExpertModel], *, default_expert: str = "general", **options: Any
    ) -> None:
        _check_options(self.name, options, {"threshold", "override", "model_dir", "embeddings"})
        self.keyword = KeywordClassifier(experts, default_expert=default_expert)
        super().__init__(experts, default_expert=default_expert, **options)
        self.neural = NeuralClassifier(
            experts,
            default_expert=default_expert,
            **{k: v for k, v in options.items() if k in ("model_dir", "embeddings")},
        )
        self.heavy = self.neural.heavy
        self.threshold = self._probability(options, "threshold", 0.4)
        self.override = self._probability(options, "override", 0.8)

    @staticmethod
    def _probability(options: dict[str, Any], key: str, default: float) -> float:
        value = options.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ConfigurationError(f"hybrid classifier: {key} must be a number in [0, 1], got {value!r}")
        return float(value)

    def update_experts(self, experts: Sequence[ExpertModel]) -> None:
        """Replace the experts here and in the keyword and neural parts."""
        super().update_experts(experts)
        self.keyword.update_experts(experts)
        if hasattr(self, "neural"):
            self.neural.update_experts(experts)

    def classify_with_confidence(self, query: str) -> Classification:
        """Decide by keyword, neural model or default; ``reason`` names the path taken."""
        found = self.keyword.matches(query)
        label, prob = self.neural.predict(query) if query.strip() else (self.default_expert, 0.0)
        neural_expert = self.neural.expert_for_label(label)
        if len(found) == 1:
            expert, hits = next(iter(found.items()))
            if neural_expert == expert:
                return Classification(
                    expert,
                    round(max(prob, KeywordClassifier.UNAMBIGUOUS), 4),
                    f"keyword+neural:{hits[0]}:{prob:.2f}",
                )
            if prob <= self.override:
                return Classification(expert, KeywordClassifier.UNAMBIGUOUS, f"keyword:{hits[0]}")
            return Classification(neural_expert, round(prob, 4), f"neural-override:{label}:{prob:.2f}")
        if prob >= self.threshold:
            return Classification(neural_expert, round(prob, 4), f"neural:{label}:{prob:.2f}")
        return Classification(
            self.default_expert, round(prob, 4), f"default:neural-unsure:{label}:{prob:.2f}"
        )
