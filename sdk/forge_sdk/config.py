"""Layered configuration, one set of rules for every LargeForge command: a file, then
environment variables, then flags (last wins), converted into a msgspec Struct.

``forge-gateway`` (``FORGE_<FIELD>``, ``FORGE_<SECTION>_<FIELD>``) and ``forge-train``
(``FORGE_TRAIN_<FIELD>``) both load through :func:`load_layered`, so a file, a variable or a
flag means the same thing to both, and a mistake reads the same: one line naming the field.

Rules:

- files: ``.toml``, ``.yaml`` / ``.yml`` (YAML needs PyYAML, which both CLIs install); the top
  must be a mapping;
- environment values are strings, converted to the field's type (``"64"``, ``"1e-4"``,
  ``"true"``); a value that starts with ``[`` or ``{`` is read as JSON (lists, tables);
- flags whose value is None are not given (they never override a file or a variable);
- nested tables merge key by key; anything else is replaced.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from forge_sdk.errors import ConfigurationError

__all__ = ["drop_none", "env_layer", "load_layered", "merge", "read_config_file", "readable"]

T = TypeVar("T")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML (``.toml``) or YAML (``.yaml`` / ``.yml``) config file into a dict.

    Raises:
        ConfigurationError: the file is missing, unreadable, not valid TOML/YAML, has another
            extension, or does not hold a mapping.
    """
    source = Path(path)
    suffix = source.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml"):
        raise ConfigurationError(
            f"config file {source}: unknown extension {suffix!r} (it must end in .toml, .yaml or .yml)"
        )
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        raise ConfigurationError(f"cannot read config file {source}: {why}") from exc
    data: Any
    if suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"config file {source} is not valid TOML: {_first_line(exc)}") from exc
    else:
        try:
            import yaml
        except ModuleNotFoundError as exc:
            raise ConfigurationError(f"config file {source}: YAML needs PyYAML (pip install pyyaml)") from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigurationError(f"config file {source} is not valid YAML: {_first_line(exc)}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigurationError(
            f"config file {source} must hold a mapping of settings, not {type(data).__name__}"
        )
    return data


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _env_value(raw: str) -> Any:
    if raw[:1] in ("[", "{"):
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw


def env_layer(
    environ: Mapping[str, str], prefix: str, fields: Collection[str], sections: Collection[str] = ()
) -> dict[str, Any]:
    """Settings from ``<prefix><FIELD>`` and ``<prefix><SECTION>_<FIELD>`` variables.

    Args:
        environ: the environment to read.
        prefix: e.g. ``FORGE_`` or ``FORGE_TRAIN_``.
        fields: top-level field names read from ``<prefix><FIELD>``.
        sections: names of nested tables read from ``<prefix><SECTION>_<FIELD>``.
    """
    out: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :].lower()
        section = next((s for s in sections if name.startswith(s + "_")), None)
        if section:
            out.setdefault(section, {})[name[len(section) + 1 :]] = _env_value(raw)
        elif name in fields and name not in sections:
            out[name] = _env_value(raw)
    return out


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: nested dicts merge key by key, anything else is replaced."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def drop_none(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` without the None values (flags not given), nested dicts included."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            nested = drop_none(value)
            if nested:
                out[key] = nested
        elif value is not None:
            out[key] = value
    return out


def readable(exc: msgspec.ValidationError) -> str:
    """msgspec's "Expected `int`, got `str` - at `$.lora.r`" with the field first."""
    text = str(exc)
    match = re.match(r"^(?P<msg>.*) - at `\$\.?(?P<path>[^`]*)`$", text)
    if match:
        return f"field {match['path']!r}: {match['msg']}"
    missing = re.match(r"^Object missing required field `(?P<f>[^`]+)`", text)
    if missing:
        return f"field {missing['f']!r} is required"
    unknown = re.match(r"^Object contains unknown field `(?P<f>[^`]+)`", text)
    if unknown:
        return f"unknown field {unknown['f']!r}"
    return text


def load_layered(
    cls: type[T],
    *,
    file: str | Path | None = None,
    env: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
) -> T:
    """Build ``cls`` from a file, then ``env`` (see :func:`env_layer`), then ``overrides`` (flags).

    Raises:
        ConfigurationError: one line naming the file (if any) and the bad field.
    """
    data: dict[str, Any] = read_config_file(file) if file else {}
    data = merge(data, env or {})
    data = merge(data, drop_none(overrides or {}))
    try:
        # strict=False: environment strings like "64", "1e-4" or "true" become numbers and booleans.
        return msgspec.convert(data, cls, strict=False)
    except msgspec.ValidationError as exc:
        where = f" in {file}" if file else ""
        raise ConfigurationError(f"invalid {cls.__name__}{where}: {readable(exc)}") from exc
