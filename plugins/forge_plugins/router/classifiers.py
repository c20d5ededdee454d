"""The built-in query classifiers: ``keyword``, ``neural`` and ``hybrid`` (SDD §5.3, §8.2).

``neural`` is the trained router (:mod:`forge_plugins.router.combined`): the fine-tuned encoder
mixed with the tf-idf model, calibrated, abstaining to the default expert below a threshold tuned
on the proxy. ``hybrid`` adds the experts' keywords as a prior on the model's probabilities, which
can settle a close call but never overrides a confident model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from forge_plugins.router.combined import Router, load_router
from forge_sdk import Classification, Classifier, ExpertModel
from forge_sdk.errors import ConfigurationError
from forge_sdk.experts import rank_experts

__all__ = ["HybridClassifier", "KeywordClassifier", "NeuralClassifier", "load_router"]


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
        # A keyword several experts claim goes to the best ranked (forge_sdk.experts.best_expert's
        # order: a trained expert, then the highest priority, as an installed mathexpert takes
        # "integral" from the built-in math, then the most recently registered).
        for expert in rank_experts(self.experts.values()):
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
        """Pick the expert with most keyword hits (earliest hit breaks ties); a base-model alias
        gives way to a trained expert of its specialization (:meth:`Classifier.settle`)."""
        found = self.matches(query)
        if not found:
            return Classification(self.default_expert, self.NO_MATCH, "default:no-keyword")
        total = sum(len(hits) for hits in found.values())
        expert = max(found, key=lambda name: len(found[name]))  # dicts keep first-hit order on ties
        share = len(found[expert]) / total
        name, rank = self.settle(expert)
        if len(found) == 1:
            return Classification(name, self.UNAMBIGUOUS, f"keyword:{found[expert][0]}", rank)
        others = ",".join(sorted(found))
        return Classification(name, round(self.UNAMBIGUOUS * share, 4), f"keyword-ambiguous:{others}", rank)


def _probability(name: str, options: dict[str, Any], key: str, default: float) -> float:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ConfigurationError(f"{name} classifier: {key} must be a number in [0, 1], got {value!r}")
    return float(value)


class NeuralClassifier(Classifier):
    """The trained router: calibrated label probabilities, the default expert when unsure.

    Options:
        model_dir: folder written by ``forge-train router`` (default: the model shipped in this
            package, see its ``router.json`` for the command that built it).
        encoder: use the fine-tuned encoder: ``true``, ``false`` or ``"auto"`` (default: when the
            model has one and ``onnxruntime`` is installed; ~4 ms a query instead of ~0.2 ms).
        threshold: confidence below which the query goes to the default expert (default: the
            model's own, tuned on leave-one-source-out; 0 never abstains).
    """

    name = "neural"
    OPTIONS = frozenset({"model_dir", "encoder", "threshold"})

    def __init__(
        self, experts: Sequence[ExpertModel], *, default_expert: str = "general", **options: Any
    ) -> None:
        _check_options(self.name, options, set(self.OPTIONS))
        super().__init__(experts, default_expert=default_expert, **options)
        self.model: Router = load_router(options.get("model_dir"), options.get("encoder", "auto"))
        self.heavy = self.model.heavy  # the encoder takes milliseconds: run off the event loop
        self.threshold = _probability(self.name, options, "threshold", self.model.threshold)

    def predict(self, query: str) -> tuple[str, float]:
        """The predicted specialization label of ``query`` and its probability."""
        return self.model.predict(query)

    def decide(self, label: str, prob: float, how: str) -> Classification:
        """The expert for ``label``, or the default expert when ``prob`` is below the threshold."""
        if prob < self.threshold:
            return Classification(
                self.default_expert, round(prob, 4), f"abstain:{label}:{prob:.2f}<{self.threshold:.2f}"
            )
        name, rank = self.choose_for_label(label)
        return Classification(name, round(prob, 4), f"{how}:{label}:{prob:.2f}", rank)

    def classify_with_confidence(self, query: str) -> Classification:
        """Map the predicted label to an expert; confidence is the label's calibrated probability."""
        if not query.strip():
            return Classification(self.default_expert, 0.0, "default:empty")
        label, prob = self.predict(query)
        return self.decide(label, prob, "neural")


class HybridClassifier(NeuralClassifier):
    """The neural router with the experts' keywords as a prior (SDD §8.2, done so that it helps).

    When the keywords found point at one expert only, that expert's label gets its probability
    multiplied by ``keyword_prior`` and the probabilities are renormalised. A prior settles close
    calls; it cannot turn a confident model (0.9 against 0.05 needs a factor of 18). With
    ``keyword_prior`` 1 this is exactly the neural classifier.

    Options:
        keyword_prior: the factor (default 1.5; the best of 1, 1.5, 2, 3 on the proxy sets,
            see ``tests/performance/bench_router.py``).
        model_dir, encoder, threshold: as for the neural classifier.
    """

    name = "hybrid"
    OPTIONS = frozenset({*NeuralClassifier.OPTIONS, "keyword_prior"})
    DEFAULT_PRIOR = 1.5

    def __init__(
        self, experts: Sequence[ExpertModel], *, default_expert: str = "general", **options: Any
    ) -> None:
        self.keyword = KeywordClassifier(experts, default_expert=default_expert)
        super().__init__(experts, default_expert=default_expert, **options)
        prior = options.get("keyword_prior", self.DEFAULT_PRIOR)
        if isinstance(prior, bool) or not isinstance(prior, (int, float)) or not 1.0 <= prior <= 100.0:
            raise ConfigurationError(
                f"hybrid classifier: keyword_prior must be a number in [1, 100], got {prior!r}"
            )
        self.prior = float(prior)

    def update_experts(self, experts: Sequence[ExpertModel]) -> None:
        """Replace the experts here and in the keyword part."""
        super().update_experts(experts)
        if hasattr(self, "keyword"):
            self.keyword.update_experts(experts)

    def classify_with_confidence(self, query: str) -> Classification:
        """The neural decision, with a keyword prior when the keywords agree on one expert."""
        if not query.strip():
            return Classification(self.default_expert, 0.0, "default:empty")
        probs = self.model.probabilities(query)
        found = self.keyword.matches(query) if self.prior != 1.0 else {}
        how = "neural"
        if len(found) == 1:
            expert = next(iter(found))
            # The keywords point at the owner's specialization (which expert then serves it is
            # the ranking's call, in decide()).
            spec = self.experts[expert].specialization
            boosted = [i for i, label in enumerate(self.model.labels) if label == spec]
            if boosted:
                probs = probs.copy()
                probs[boosted] *= self.prior
                probs /= probs.sum()
                how = f"neural+keyword:{found[expert][0]}"
        best = int(probs.argmax())
        return self.decide(self.model.labels[best], float(probs[best]), how)
