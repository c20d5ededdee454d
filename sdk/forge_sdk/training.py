"""Interfaces for ``forge-train`` commands contributed by plugins: training methods and quantizers."""

from __future__ import annotations

import abc
import argparse
from pathlib import Path
from typing import Any, ClassVar

from msgspec import Struct, field

__all__ = ["Quantizer", "TrainingMethod", "TrainingResult"]


class TrainingResult(Struct):
    """What a training method or quantizer produced."""

    output_dir: str
    """Folder holding the result (adapter, model or quantized checkpoint)."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """Final metrics (loss, steps, ...)."""


class TrainingMethod(abc.ABC):
    """A ``forge-train <name>`` subcommand.

    Subclasses set ``name`` and ``help``, declare their flags in :meth:`add_arguments`, and do the
    work in :meth:`run`. Heavy imports (torch, trl) belong inside :meth:`run`, never at module top.
    """

    name: ClassVar[str]
    help: ClassVar[str] = ""

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add this method's flags to its subcommand parser."""
        return None

    @abc.abstractmethod
    def run(self, args: argparse.Namespace) -> TrainingResult:
        """Run the method with parsed arguments.

        Raises:
            forge_sdk.errors.LargeForgeAIError: on any expected failure (bad config, bad data).
        """


class Quantizer(abc.ABC):
    """A ``forge-train quantize --method <name>`` backend."""

    name: ClassVar[str]
    help: ClassVar[str] = ""

    @abc.abstractmethod
    def quantize(
        self,
        model: str | Path,
        output: str | Path,
        *,
        bits: int = 4,
        group_size: int = 128,
        calibration: list[str] | None = None,
    ) -> str:
        """Quantize ``model`` into ``output`` and return the output folder.

        Raises:
            forge_sdk.errors.ModelError: unsupported architecture.
            forge_sdk.errors.ConfigurationError: a needed optional dependency is missing
                (the message says how to install it).
        """
