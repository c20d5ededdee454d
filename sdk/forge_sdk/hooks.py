"""Pluggy hook specifications. Hooks register; the registered objects do the work.

Every hook is synchronous and runs once at start-up with a ``register`` callback. Async work
belongs on the registered objects (classifiers, engines), never in the hook itself.

A plugin module::

    from forge_sdk import hookimpl, ExpertModel

    @hookimpl
    def register_experts(register):
        register(ExpertModel(name="mathexpert", specialization="math", keywords=["integral"]))

and in its ``pyproject.toml``::

    [project.entry-points.forge]
    mathexpert = "forge_plugin_mathexpert"
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

__all__ = ["PROJECT_NAME", "hookimpl", "hookspec"]

PROJECT_NAME = "forge"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_classifiers(register: Callable[[Any], None]) -> None:
    """Register query classifiers: call ``register(ClassifierSubclass)`` for each.

    The class must subclass :class:`forge_sdk.Classifier` and set a unique ``name``.
    """


@hookspec
def register_experts(register: Callable[[Any], None]) -> None:
    """Register experts: call ``register(ExpertModel(...))`` for each."""


@hookspec
def register_training_methods(register: Callable[[Any], None]) -> None:
    """Register training methods: call ``register(TrainingMethodSubclass)`` for each.

    The class must subclass :class:`forge_sdk.TrainingMethod` and set a unique ``name``;
    it becomes ``forge-train <name>``.
    """


@hookspec
def register_quantizers(register: Callable[[Any], None]) -> None:
    """Register quantizers: call ``register(QuantizerSubclass)`` for each.

    The class must subclass :class:`forge_sdk.Quantizer` and set a unique ``name``; it becomes
    ``forge-train quantize --method <name>``.
    """


@hookspec
def register_tool_parsers(register: Callable[[Any], None]) -> None:
    """Register tool-call parsers: call ``register(ToolParserSubclass)`` for each.

    The class must subclass :class:`forge_sdk.ToolParser` and set a unique ``name``; the gateway
    uses it to read tool calls out of model text when ``tool_choice`` is ``auto``
    (``[api] tool_parser = "<name>"``, or picked from the chat template).
    """
