"""Router examples from the registered experts' own training data (``--from-registry``).

An expert trained by ``forge-train`` records its dataset in the registry (``trained_on``) and in
``manifest.json`` beside its adapter or model (``dataset_path``). The opening user turn of each
row of that dataset is an example of the expert's ``specialization``: the router learns from the
data the experts learned from, so a new specialist (say ``legal``) becomes reachable by
``model="auto"`` without hand-labelled queries.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from forge_plugins.router.train.data import LabelledQuery, read_lines
from forge_sdk.errors import DataError

__all__ = ["expert_dataset", "prompt_of", "registry_examples"]


def prompt_of(row: Any) -> str | None:
    """The user's request in one training row (chat, prompt/response, Alpaca or query formats)."""
    if not isinstance(row, dict):
        return None
    for key in ("messages", "prompt_messages"):
        turns = row.get(key)
        if isinstance(turns, list):
            for turn in turns:
                if (
                    isinstance(turn, dict)
                    and turn.get("role") == "user"
                    and isinstance(turn.get("content"), str)
                ):
                    return str(turn["content"])
    for key in ("prompt", "query", "question", "instruction"):
        value = row.get(key)
        if isinstance(value, str) and value.strip():
            extra = row.get("input") if key == "instruction" else None
            return f"{value}\n\n{extra}" if isinstance(extra, str) and extra.strip() else value
    return None


def expert_dataset(expert: Any) -> Path | None:
    """The dataset an expert was trained on: its ``trained_on``, else its ``manifest.json``'s."""
    if expert.trained_on and Path(expert.trained_on).is_file():
        return Path(expert.trained_on)
    for folder in (expert.adapter_path, expert.model_path):
        manifest = Path(folder) / "manifest.json" if folder else None
        if manifest is not None and manifest.is_file():
            try:
                data = json.loads(manifest.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            path = data.get("dataset_path") if isinstance(data, dict) else None
            if isinstance(path, str) and Path(path).is_file():
                return Path(path)
    return None


def registry_examples(
    registry: str | Path, *, per_expert: int = 300, seed: int = 20240917
) -> tuple[list[LabelledQuery], dict[str, Any]]:
    """Up to ``per_expert`` ``(prompt, specialization)`` examples per registered expert with data.

    Returns:
        The examples, and a record of what was used per expert (``{name: {...}}``).

    Raises:
        DataError: the registry cannot be read, or no expert has readable training data.
    """
    from forge_sdk import ExpertRegistry
    from forge_sdk.errors import ConfigurationError

    path = Path(registry)
    if not path.is_file():
        raise DataError(f"{path}: registry file not found")
    try:
        experts = ExpertRegistry(path).list()
    except (ConfigurationError, ValueError, OSError) as exc:
        raise DataError(f"{path}: not a readable expert registry: {exc}") from exc
    out: list[LabelledQuery] = []
    used: dict[str, Any] = {}
    for expert in experts:
        dataset = expert_dataset(expert)
        if dataset is None:
            used[expert.name] = {"dataset": None}
            continue
        prompts: list[str] = []
        for _, line in read_lines(dataset):
            try:
                prompt = prompt_of(json.loads(line)) if line.strip() else None
            except ValueError:
                prompt = None
            if prompt and prompt.strip():
                prompts.append(prompt.strip())
        rng = random.Random(f"registry:{expert.name}:{seed}")
        picked = rng.sample(prompts, min(per_expert, len(prompts)))
        out += [(p, expert.specialization) for p in picked]
        used[expert.name] = {"dataset": dataset.name, "label": expert.specialization, "examples": len(picked)}
    if not out:
        raise DataError(
            f"{path}: no registered expert has readable training data (trained_on / manifest.json)"
        )
    return out, used
