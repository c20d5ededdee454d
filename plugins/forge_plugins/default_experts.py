"""Registers the SDD's default experts (general, code, math, writing)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from forge_sdk import DEFAULT_EXPERTS, hookimpl


@hookimpl
def register_experts(register: Callable[[Any], None]) -> None:
    for expert in DEFAULT_EXPERTS:
        register(expert)
