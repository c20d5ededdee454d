"""Plugin module registering the built-in classifiers, router training commands and tool-call parsers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from forge_plugins.router.classifiers import HybridClassifier, KeywordClassifier, NeuralClassifier
from forge_plugins.router.train.methods import RouterEvalMethod, RouterTrainMethod
from forge_plugins.tool_parsers import HermesToolParser, Llama3JsonToolParser
from forge_sdk import hookimpl


@hookimpl
def register_classifiers(register: Callable[[Any], None]) -> None:
    """Register ``keyword``, ``neural`` and ``hybrid``."""
    for cls in (KeywordClassifier, NeuralClassifier, HybridClassifier):
        register(cls)


@hookimpl
def register_training_methods(register: Callable[[Any], None]) -> None:
    """Register ``router`` and ``router-eval``."""
    register(RouterTrainMethod)
    register(RouterEvalMethod)


@hookimpl
def register_tool_parsers(register: Callable[[Any], None]) -> None:
    """Register ``hermes`` and ``llama3_json``."""
    register(HermesToolParser)
    register(Llama3JsonToolParser)
