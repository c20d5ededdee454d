"""``forge-gateway``: serve models, list plugins, build the tiny offline model.

Errors the user can fix print one line ``forge-gateway: error: ...`` and exit 2; never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import math
import signal
import socket
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from forge_gateway.cli_models import add_models_parser
from forge_gateway.security.cli_keys import add_keys_parser
from forge_sdk.errors import ConfigurationError, LargeForgeAIError

if TYPE_CHECKING:
    from forge_gateway.config import GatewayConfig

__all__ = ["main"]

_SERVE_EPILOG = """\
Configuration comes from a TOML/YAML file (--config), then FORGE_* environment variables
(FORGE_MODEL, FORGE_PORT, FORGE_ENGINE_KIND, FORGE_LIMITS_MAX_CONCURRENT, ...), then these flags.

examples:
  forge-gateway serve --model smollm2-135m-instruct        (a catalogue model, pulled on first use)
  forge-gateway serve --model ./SmolLM2-135M-Instruct.Q4_1.gguf
  forge-gateway serve --model ./tiny-model
  forge-gateway serve --model Qwen/Qwen2.5-0.5B-Instruct --engine vllm --registry experts.json
  forge-gateway serve --config gateway.toml --port 9000

`forge-gateway check` with the same engine flags tests that configuration against the model itself.
"""


def _engine_arguments(p: argparse.ArgumentParser) -> None:
    """The flags that decide the base model and its engine: shared by ``serve`` and ``check``, so
    ``check`` runs the configuration ``serve`` would run with the same flags."""
    p.add_argument("--config", metavar="FILE", help="TOML or YAML config file")
    p.add_argument(
        "--model",
        help="base model: a local folder, a .gguf file, a catalogue name or a hub id (required unless in config)",
    )
    p.add_argument(
        "--engine",
        dest="engine_kind",
        choices=["auto", "vllm", "transformers"],
        help="inference engine (default auto: vLLM if installed)",
    )
    p.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="weights and compute dtype (default auto: float32 on CPU, vLLM's choice on GPU)",
    )
    p.add_argument(
        "--max-model-len",
        type=int,
        help="context length in tokens (default: the model's own, at most 4096)",
    )
    p.add_argument("--quantization", help="checkpoint quantization passed to vLLM (awq, gptq, ...)")
    lora = p.add_mutually_exclusive_group()
    lora.add_argument(
        "--enable-lora",
        action="store_true",
        default=None,
        help="LoRA on from the start (default: on once an adapter expert is registered, at start or later)",
    )
    lora.add_argument("--no-lora", action="store_true", default=None, help="disable LoRA adapter experts")
    p.add_argument(
        "--enforce-eager",
        action="store_true",
        default=None,
        help="vLLM: no torch.compile / CUDA graphs (faster start, slower generation)",
    )
    p.add_argument("--registry", metavar="FILE", help="expert registry JSON (watched for changes)")


def _serve_parser(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model and its experts over the OpenAI API",
        description="Serve a base model, its LoRA/remote experts and the router over an "
        "OpenAI-compatible HTTP API.",
        epilog=_SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _engine_arguments(p)
    p.add_argument("--served-model-name", help="name clients use for the base model (default: folder name)")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--classifier", help="router classifier for model=auto (keyword, neural, hybrid)")
    p.add_argument("--max-concurrent", type=int, help="requests generating at once (default 100)")
    p.add_argument("--request-timeout", type=float, help="seconds per non-streaming request (default 60)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="log verbosity")
    p.add_argument(
        "--allow-open",
        action="store_true",
        default=None,
        help="serve without API keys even on a non-loopback address",
    )


_CHECK_EPILOG = """The reference is transformers' generate in float32 on the same checkpoint, greedy, on eight fixed
chat prompts (32 tokens each), on CPU (4 bytes per parameter of memory, released before the engine
starts). Exit status: 0 when the engine matches, 1 when it does not, 2 for bad flags.

examples:
  forge-gateway check --model smollm2-135m-instruct
  forge-gateway check --model ./my-model --dtype bfloat16 --enforce-eager
  forge-gateway check --config gateway.toml
"""


def _check_parser(sub: Any) -> None:
    p = sub.add_parser(
        "check",
        help="check that the engine serve would run generates what the model itself does",
        description="Parity check: greedy generations of the engine configuration `serve` would "
        "use with these flags, against transformers in float32 on the same checkpoint.",
        epilog=_CHECK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _engine_arguments(p)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    def get(name: str) -> Any:  # serve-only flags are absent from check's namespace
        return getattr(args, name, None)

    return {
        "model": args.model,
        "served_model_name": get("served_model_name"),
        "host": get("host"),
        "port": get("port"),
        "registry": args.registry,
        "log_level": get("log_level"),
        "engine": {
            "kind": args.engine_kind,
            "dtype": args.dtype,
            "max_model_len": args.max_model_len,
            "quantization": args.quantization,
            "enable_lora": False if args.no_lora else args.enable_lora,
            "enforce_eager": args.enforce_eager,
        },
        "router": {"classifier": get("classifier")},
        "limits": {"max_concurrent": get("max_concurrent"), "request_timeout": get("request_timeout")},
        "auth": {"allow_open": get("allow_open")},
    }


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from forge_gateway.app import create_app
    from forge_gateway.config import load_config
    from forge_gateway.observability.logs import configure_logging

    config = load_config(args.config, overrides=_overrides(args))
    configure_logging(config.log_level, json=config.log_json)
    from forge_gateway.security import preflight

    preflight(config)  # no keys on a public host, unreachable Redis: one line, exit 2
    _check_engine_layout(config)
    # Bind before the engine loads: a busy port fails in a second, not after a minute of loading.
    sock = _bind(config.host, config.port)
    try:
        app = create_app(config)
        gateway = app.state.gateway
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=config.host,
                port=config.port,
                log_level=config.log_level,
                access_log=False,
                timeout_graceful_shutdown=math.ceil(config.limits.shutdown_grace),
                lifespan="on",
                log_config=None,
            )
        )
        port = sock.getsockname()[1]
        print(
            f"forge-gateway: starting {gateway.config.model_name} on http://{config.host}:{port}",
            file=sys.stderr,
        )
        # uvicorn re-raises a captured SIGTERM after its graceful shutdown; a no-op handler makes
        # that a clean exit 0 (drained, ledger flushed) instead of death by signal.
        signal.signal(signal.SIGTERM, lambda signum, frame: None)
        with _quiet_startup_traceback(gateway):
            try:
                server.run(sockets=[sock])
            except SystemExit:  # uvicorn's exit(3) after a failed lifespan start-up
                if gateway.startup_error is None:
                    raise
    finally:
        sock.close()
    if gateway.startup_error is not None:
        raise _startup_failure(gateway.startup_error)
    return 0


def _check_engine_layout(config: GatewayConfig) -> None:
    """Refuse a vLLM parallel layout this machine cannot run before loading anything (one line, exit 2)."""
    from forge_gateway.engines import vllm_available
    from forge_gateway.engines.vllm_parallel import check_parallelism, vllm_parallel_options

    e = config.engine
    options = vllm_parallel_options(e)
    if e.kind == "vllm" or (e.kind == "auto" and vllm_available()):
        check_parallelism(options)
    elif any(name.endswith("_parallel_size") for name in options):
        raise ConfigurationError(
            "engine.tensor/pipeline/data_parallel_size need the vLLM engine (engine.kind = 'vllm')"
        )


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigurationError(
                f"port {port} on {host} is already in use (another server?): pass --port N "
                "(port in config, FORGE_PORT), or stop the other process"
            ) from exc
        raise ConfigurationError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc} (--host / --port)"
        ) from exc
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


@contextlib.contextmanager
def _quiet_startup_traceback(gateway: Any) -> Iterator[None]:
    """Drop uvicorn's error records of a failed start-up; the CLI prints one line instead (the
    traceback is in the debug log)."""

    def keep(record: logging.LogRecord) -> bool:
        return gateway.startup_error is None or record.levelno < logging.ERROR

    log = logging.getLogger("uvicorn.error")
    log.addFilter(keep)
    try:
        yield
    finally:
        log.removeFilter(keep)


def _startup_failure(exc: BaseException) -> LargeForgeAIError:
    if isinstance(exc, LargeForgeAIError):
        return exc
    if isinstance(exc, MemoryError):
        return LargeForgeAIError(
            "out of memory while starting the engine: lower --max-model-len or use a smaller model"
        )
    return LargeForgeAIError(
        f"the gateway failed to start: {type(exc).__name__}: {exc} (--log-level debug shows the traceback)"
    )


def _check(args: argparse.Namespace) -> int:
    from forge_gateway.cli_check import run_check
    from forge_gateway.config import load_config

    return run_check(load_config(args.config, overrides=_overrides(args)))


def _keys(args: argparse.Namespace) -> int:
    from forge_gateway.security.cli_keys import run_keys

    return run_keys(args)


def _plugins(args: argparse.Namespace) -> int:
    from forge_sdk.plugins import get_plugin_manager, list_plugins

    print(json.dumps(list_plugins(get_plugin_manager()), indent=2))
    return 0


def _tiny_model(args: argparse.Namespace) -> int:
    from forge_gateway.tiny_model import build_tiny_model

    path = build_tiny_model(args.output, seed=args.seed)
    print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="forge-gateway", description="LargeForge gateway")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _serve_parser(sub)
    _check_parser(sub)
    add_keys_parser(sub)
    add_models_parser(sub)
    sub.add_parser("plugins", help="list installed forge plugins (JSON)")
    tiny = sub.add_parser("tiny-model", help="build a tiny random chat model for offline tests and demos")
    tiny.add_argument("output", help="folder to write")
    tiny.add_argument("--seed", type=int, default=0, help="weights seed")
    return parser


def _models(args: argparse.Namespace) -> int:
    from forge_gateway.cli_models import run_models

    return run_models(args)


_COMMANDS = {
    "serve": _serve,
    "check": _check,
    "keys": _keys,
    "models": _models,
    "plugins": _plugins,
    "tiny-model": _tiny_model,
}


def _one_line(message: str, limit: int = 600) -> str:
    # Library messages (vLLM's especially) span lines and screens; the CLI promise is one line.
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``forge-gateway``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except ConfigurationError as exc:
        print(f"forge-gateway: error: {_one_line(exc.message)}", file=sys.stderr)
        return 2
    except LargeForgeAIError as exc:
        print(f"forge-gateway: error: {_one_line(exc.message)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `forge-gateway plugins | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
