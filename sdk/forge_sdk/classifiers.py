"""The classifier interface (SDD §5.3): map a query to the expert that should answer it."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, ClassVar

from msgspec import Struct

from forge_sdk.experts import ExpertModel, best_expert

__all__ = ["Classification", "Classifier"]


class Classification(Struct):
    """A routing decision."""

    expert: str
    """Name of the chosen expert."""
    confidence: float
    """How sure the classifier is, in [0, 1]."""
    reason: str = ""
    """Short human-readable why (e.g. ``keyword:integral``, ``neural:0.93``, ``default``)."""
    rank: str = ""
    """Which ranking rule picked ``expert`` among the experts sharing its specialization (a key
    of :data:`forge_sdk.experts.RANK_RULES`, e.g. ``trained>alias``); empty when no ranking was
    involved (the default expert, an expert chosen by name)."""


class Classifier(abc.ABC):
    """Base of every classifier; plugins subclass it and register the class.

    Subclasses set ``name`` and implement :meth:`classify_with_confidence`. The gateway builds
    one with the current experts and the ``[router]`` options from its config, and calls
    :meth:`update_experts` when the registry changes. Classification runs off the event loop,
    so it may be CPU-bound but should be fast (well under a millisecond for rules).

    Args:
        experts: the experts that can be chosen.
        default_expert: the expert to use when nothing matches.
        **options: classifier-specific options from the config file.
    """

    name: ClassVar[str]
    heavy: bool = False
    """True when one classification takes milliseconds (e.g. a neural encoder): the gateway then
    runs it in a worker thread instead of on the event loop."""

    def __init__(
        self, experts: Sequence[ExpertModel], *, default_expert: str = "general", **options: Any
    ) -> None:
        self.default_expert = default_expert
        self.options = options
        self.experts: dict[str, ExpertModel] = {}
        self.update_experts(experts)

    def update_experts(self, experts: Sequence[ExpertModel]) -> None:
        """Replace the set of experts that may be chosen."""
        self.experts = {e.name: e for e in experts}

    @abc.abstractmethod
    def classify_with_confidence(self, query: str) -> Classification:
        """Choose an expert for ``query`` and say how sure the choice is."""

    def classify(self, query: str) -> str:
        """The name of the expert for ``query`` (SDD interface)."""
        return self.classify_with_confidence(query).expert

    def get_endpoint(self, name: str) -> str:
        """Where expert ``name`` is served: its remote endpoint, or ``local`` (SDD interface)."""
        expert = self.experts.get(name)
        if expert is None:
            return ""
        return expert.endpoint or "local"

    def expert_for_label(self, label: str) -> str:
        """The name of the expert that should serve a predicted specialization ``label``
        (see :meth:`choose_for_label`)."""
        return self.choose_for_label(label)[0]

    def choose_for_label(self, label: str) -> tuple[str, str]:
        """Map a predicted specialization label to ``(expert name, rank rule)``.

        Among experts whose ``specialization`` is ``label``, :func:`forge_sdk.experts.best_expert`
        decides (a trained expert outranks an alias of the base model; then priority, then the
        most recently registered). An expert merely named ``label`` comes next; the default
        expert last (both with an empty rule).
        """
        picked = best_expert(self.experts.values(), label)
        if picked is not None:
            return picked[0].name, picked[1]
        if label in self.experts:
            return label, ""
        return self.default_expert, ""

    def settle(self, name: str) -> tuple[str, str]:
        """``(expert, rank rule)`` for a classifier that chose the expert ``name`` directly (e.g.
        by its keywords): an alias of the base model gives way to the best expert of its
        specialization when that one has weights of its own; otherwise ``name`` stands."""
        chosen = self.experts.get(name)
        if chosen is None or chosen.has_own_weights:
            return name, ""
        picked = best_expert(self.experts.values(), chosen.specialization)
        if picked is not None and picked[0].has_own_weights:
            return picked[0].name, picked[1]
        return name, ""
