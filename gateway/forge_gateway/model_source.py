"""The base model before any engine starts: where it is, what it is called, how long its context is.

Checks here are cheap file reads, so a wrong ``--model`` or ``--max-model-len`` fails in a second
with one line naming the flag, instead of a library traceback after a minute of engine start-up.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

from forge_gateway.config import GatewayConfig
from forge_sdk.errors import ConfigurationError
from forge_sdk.models import CATALOGUE, find_gguf, resolve_model

__all__ = [
    "checkpoint_quantization",
    "DEFAULT_MAX_MODEL_LEN",
    "check_model_folder",
    "context_limit",
    "derive_max_model_len",
    "resolve_base_model",
]

DEFAULT_MAX_MODEL_LEN = 4096
"""Context length when the config sets none and the model allows more: the KV cache of every
sequence is sized for it, and most serving needs no more."""

# Config keys holding the longest sequence a model was trained for, by model family.
_CONFIG_KEYS = ("max_position_embeddings", "max_seq_len", "max_sequence_length", "n_positions", "seq_length")
# Tokenizers without a limit store a huge sentinel (int(1e30)); anything above this is "unset".
_NO_LIMIT = 10_000_000


def _is_local(model: str) -> bool:
    return model.startswith((".", "/", "~")) or Path(model).expanduser().exists()


def check_model_folder(model: str) -> None:
    """Fail early when ``model`` names a local path that cannot be a model.

    Raises:
        ConfigurationError: the path does not exist, or is a folder without ``config.json``.
    """
    if not _is_local(model):
        return  # a hub id: the engine fetches (or fails to fetch) it
    path = Path(model).expanduser()
    if not path.exists():
        raise ConfigurationError(f"model not found: {model} does not exist (--model / model in config)")
    if path.is_dir() and not (path / "config.json").is_file():
        raise ConfigurationError(
            f"{model} is not a model folder (no config.json, no .gguf file): pass a Hugging Face "
            "checkpoint folder, a .gguf file or a catalogue name (forge-gateway models list) as --model"
        )
    if path.is_file():
        raise ConfigurationError(f"{model} is a file, not a model folder or .gguf file (--model)")
    _check_weights(path)


def _check_weights(folder: Path) -> None:
    # A truncated or garbage safetensors file makes the engine fail deep inside (even with a
    # MemoryError from a nonsense header length); its header is cheap to read here.
    try:
        from safetensors import safe_open
    except ImportError:
        return
    for shard in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(shard), framework="numpy"):
                pass
        except Exception as exc:  # SafetensorError, OSError
            raise ConfigurationError(
                f"{shard} is not a readable safetensors file ({exc}): re-copy or re-convert the model (--model)"
            ) from exc


def resolve_base_model(config: GatewayConfig) -> GatewayConfig:
    """``config`` with ``model`` turned into a loadable folder or hub id (see
    :func:`forge_sdk.models.resolve_model`), checked, and named after what the user wrote.

    Raises:
        ConfigurationError: a missing or unusable model path.
        ModelError: a catalogue download or GGUF conversion failed.
    """
    given = config.model
    resolved = resolve_model(given)
    if resolved == given:
        check_model_folder(given)
        return config
    name = config.served_model_name
    if name is None:
        # The cache folder is named by a hash; clients should see the name the user gave.
        gguf_file = find_gguf(given) if Path(given).expanduser().exists() else None
        name = given if given in CATALOGUE else (gguf_file.stem if gguf_file else Path(given).name)
    return msgspec.structs.replace(config, model=resolved, served_model_name=name)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def context_limit(model: str) -> tuple[int, str] | None:
    """The longest context ``model`` allows and where that number comes from, if known.

    Reads ``config.json`` (the text config of multimodal models too) and ``tokenizer_config.json``'s
    ``model_max_length`` of a local folder, and takes the smallest. For a hub id the config is
    fetched through transformers when it is installed and reachable; otherwise None.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        config = _read_json(path / "config.json")
        tokenizer = _read_json(path / "tokenizer_config.json")
    else:
        try:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(model).to_dict()
        except Exception:  # offline, no transformers, private repo: the engine decides
            return None
        tokenizer = {}
    config = config.get("text_config") or config
    found: list[tuple[int, str]] = []
    for key in _CONFIG_KEYS:
        value = config.get(key)
        if isinstance(value, int) and 0 < value < _NO_LIMIT:
            found.append((value, f"{key} in config.json"))
            break
    value = tokenizer.get("model_max_length")
    if isinstance(value, (int, float)) and 0 < value < _NO_LIMIT:
        found.append((int(value), "model_max_length in tokenizer_config.json"))
    return min(found) if found else None


def derive_max_model_len(model: str, configured: int | None, *, strict: bool = True) -> int | None:
    """The context length to serve ``model`` with.

    The configured value if given, else :data:`DEFAULT_MAX_MODEL_LEN`; never more than the model
    allows. None when neither the config nor the model says (the engine derives it).

    Args:
        model: a local folder or hub id.
        configured: ``engine.max_model_len`` (``--max-model-len``), or None.
        strict: a configured value longer than the model allows is an error (the base model);
            otherwise it is capped (standalone experts sharing the base's setting).

    Raises:
        ConfigurationError: ``strict`` and the configured length exceeds the model's.
    """
    limit = context_limit(model)
    if limit is None:
        return configured
    allowed, source = limit
    if configured is None:
        return min(DEFAULT_MAX_MODEL_LEN, allowed)
    if configured > allowed and strict:
        raise ConfigurationError(
            f"--max-model-len {configured} is longer than {model} allows ({allowed}, from {source}): "
            f"pass --max-model-len {allowed} or less (engine.max_model_len in config)"
        )
    return min(configured, allowed)


def checkpoint_quantization(model_path: str) -> str | None:
    """The ``quant_method`` a checkpoint's ``config.json`` declares, or None.

    llm-compressor writes ``compressed-tensors`` whatever the algorithm (GPTQ or AWQ), AutoAWQ
    writes ``awq``; vLLM reads it and picks its kernels itself.
    """
    try:
        cfg = json.loads((Path(model_path).expanduser() / "config.json").read_text())
    except (OSError, ValueError):
        return None
    quant = cfg.get("quantization_config") if isinstance(cfg, dict) else None
    method = quant.get("quant_method") if isinstance(quant, dict) else None
    return str(method) if method else None
