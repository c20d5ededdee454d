"""Fixtures for forge-train tests: small slices of the real data in ../shared/data.

The tiny model (``tiny_model_dir``) and ``shared_data`` come from tests/conftest.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def sft_file(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight short real chat rows (short enough that a 128-token window keeps the assistant turn)."""
    rows = _rows(shared_data / "sft_alpaca_2k.jsonl")
    short = [r for r in rows if sum(len(m["content"]) for m in r["messages"]) < 220][:8]
    assert len(short) == 8
    return _write(tmp_path_factory.mktemp("data") / "sft8.jsonl", short)


@pytest.fixture(scope="session")
def dpo_file(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight short real single-turn preference pairs (records keep their ``prompt_messages``)."""
    rows = _rows(shared_data / "dpo_hh_1k.jsonl")
    short = [
        r
        for r in rows
        if len(r["prompt_messages"]) == 1
        and len(r["prompt"]) < 120
        and max(len(r["chosen"]), len(r["rejected"])) < 160
        and r["chosen"] != r["rejected"]
    ][:8]
    assert len(short) == 8
    return _write(tmp_path_factory.mktemp("data") / "dpo8.jsonl", short)


@pytest.fixture(scope="session")
def pretrain_file(shared_data: Path) -> Path:
    """The real 5 MB Gutenberg corpus (tests cut it with ``max_samples``)."""
    return shared_data / "pretrain_gutenberg_5mb.txt"
