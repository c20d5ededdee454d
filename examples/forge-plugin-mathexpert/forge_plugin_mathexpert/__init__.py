"""Example third-party LargeForge plugin: a math expert and its seed data.

Everything here goes through the public SDK, exactly as any other plugin would.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from forge_sdk import ExpertModel, TrainingMethod, TrainingResult, hookimpl
from forge_sdk.errors import ConfigurationError

__all__ = ["MathSeed", "math_expert"]


def math_expert() -> ExpertModel:
    """The ``mathexpert`` expert, configured from ``FORGE_MATHEXPERT_*`` env vars."""
    return ExpertModel(
        name="mathexpert",
        description="Step-by-step mathematics: arithmetic, algebra, calculus, probability, word problems.",
        specialization="math",
        priority=10,
        keywords=[
            "integral",
            "derivative",
            "equation",
            "algebra",
            "calculus",
            "probability",
            "theorem",
            "polynomial",
            "matrix",
            "arithmetic",
            "fraction",
            "geometry",
            "prime",
            "factorial",
        ],
        adapter_path=os.environ.get("FORGE_MATHEXPERT_ADAPTER") or None,
        endpoint=os.environ.get("FORGE_MATHEXPERT_ENDPOINT") or None,
        trained_on="forge_plugin_mathexpert/seed.jsonl",
    )


class MathSeed(TrainingMethod):
    """``forge-train math-seed``: write the plugin's worked math problems as chat JSONL."""

    name = "math-seed"
    help = "write the mathexpert seed problems as chat JSONL (for sft or synth)"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--output", required=True, help="JSONL file to write")

    def run(self, args: argparse.Namespace) -> TrainingResult:
        rows = [
            json.loads(line)
            for line in resources.files(__package__).joinpath("seed.jsonl").read_text().splitlines()
            if line.strip()
        ]
        out = Path(args.output)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            with out.open("w") as fh:
                for row in rows:
                    messages = [
                        {"role": "user", "content": row["question"]},
                        {"role": "assistant", "content": row["answer"]},
                    ]
                    fh.write(json.dumps({"messages": messages}) + "\n")
        except OSError as exc:
            raise ConfigurationError(f"cannot write {out}: {exc.strerror}") from exc
        return TrainingResult(output_dir=str(out.parent), metrics={"rows": len(rows)})


@hookimpl
def register_experts(register: Callable[[Any], None]) -> None:
    register(math_expert())


@hookimpl
def register_training_methods(register: Callable[[Any], None]) -> None:
    register(MathSeed)
