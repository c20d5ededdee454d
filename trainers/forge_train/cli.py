"""The ``forge-train`` command: one subcommand per training method any installed plugin registers.

Exit codes: 0 done; 1 training/model failure; 2 bad config, flags or data; 130 interrupted (a
resumable checkpoint was saved first). Errors print one line, never a traceback
(``FORGE_TRAIN_DEBUG=1`` shows it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from typing import Any

from forge_sdk import TrainingMethod, get_plugin_manager
from forge_sdk.errors import ConfigurationError, DataError, LargeForgeAIError
from forge_sdk.plugins import collect, list_plugins

__all__ = ["build_parser", "main"]

PROG = "forge-train"


def _methods(pm: Any) -> dict[str, type[TrainingMethod]]:
    try:
        found = collect(pm, "register_training_methods", key=lambda c: c.name)
    except AttributeError as exc:
        raise ConfigurationError(f"a plugin registered a training method without a name: {exc}") from exc
    for name, cls in found.items():
        if not (isinstance(cls, type) and issubclass(cls, TrainingMethod)):
            raise ConfigurationError(f"training method {name!r} is not a forge_sdk.TrainingMethod subclass")
    return dict(sorted(found.items()))


def build_parser(pm: Any | None = None) -> tuple[argparse.ArgumentParser, dict[str, type[TrainingMethod]]]:
    """The argument parser and the methods it knows, from the plugins of ``pm`` (default: installed).

    Raises:
        ConfigurationError: a plugin failed to load or registered something invalid.
    """
    pm = pm or get_plugin_manager()
    methods = _methods(pm)
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train LargeForge experts. Every method is a plugin; `forge-train plugins` lists them.",
    )
    sub = parser.add_subparsers(dest="command", metavar="<method>", required=True)
    plugins = sub.add_parser("plugins", help="list installed forge plugins and training methods")
    plugins.add_argument("--json", action="store_true", help="print JSON")
    for name, cls in methods.items():
        method_parser = sub.add_parser(name, help=cls.help or name, description=cls.help or None)
        cls.add_arguments(method_parser)
    parser.set_defaults(_pm=pm)
    return parser, methods


def _print_plugins(pm: Any, methods: dict[str, type[TrainingMethod]], as_json: bool) -> None:
    infos = list_plugins(pm)
    if as_json:
        print(json.dumps({"plugins": infos, "methods": {n: c.help for n, c in methods.items()}}, indent=2))
        return
    print("plugins:")
    for info in infos:
        where = f"{info['package']} {info['version']}" if info.get("package") else "(not from a package)"
        print(f"  {info['name']:<16} {where:<28} {', '.join(info['hooks'])}")
    print("training methods:")
    for name, cls in methods.items():
        print(f"  {name:<16} {cls.help}")


def _fail(message: str, code: int) -> int:
    text = " ".join(str(message).split())
    print(f"{PROG}: error: {text}", file=sys.stderr)
    if os.environ.get("FORGE_TRAIN_DEBUG"):
        traceback.print_exc()
    return code


def _setup_logging() -> None:
    # Our own handler only: configuring the root logger would echo every library's records twice.
    log = logging.getLogger("forge_train")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    """Run ``forge-train``; returns the exit code (also used as the console script)."""
    _setup_logging()
    try:
        parser, methods = build_parser()
    except LargeForgeAIError as exc:
        return _fail(exc.message, 2)
    args = parser.parse_args(argv)
    if args.command == "plugins":
        _print_plugins(args._pm, methods, args.json)
        return 0
    try:
        result = methods[args.command]().run(args)
    except KeyboardInterrupt as exc:
        message = getattr(exc, "message", "") or "interrupted"
        print(f"{PROG}: {message}", file=sys.stderr)
        return 130
    except (ConfigurationError, DataError) as exc:
        return _fail(exc.message, 2)
    except LargeForgeAIError as exc:
        return _fail(exc.message, 1)
    except Exception as exc:  # a library bug or an unforeseen failure: still one line, not a traceback
        return _fail(f"{type(exc).__name__}: {exc} (set FORGE_TRAIN_DEBUG=1 for the traceback)", 1)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # data-parallel run: rank 0 wrote the outputs and reports them, once
    summary = ", ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in result.metrics.items()
    )
    where = f"; output in {result.output_dir}" if result.output_dir else ""
    print(f"{PROG}: {args.command} done: {summary}{where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
