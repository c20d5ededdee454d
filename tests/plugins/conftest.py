"""Shared fixtures for the router plugin tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data"
SHARED_DATA = Path(
    os.environ.get("FORGE_SHARED_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data"
)
ROUTER_TRAIN = SHARED_DATA / "router_train.jsonl"


@pytest.fixture(scope="session")
def stress_set() -> list[tuple[str, str]]:
    """The hand-written, differently styled queries with their labels."""
    rows = [
        json.loads(line) for line in (DATA / "router_stress.jsonl").read_text().splitlines() if line.strip()
    ]
    return [(r["query"], r["label"]) for r in rows]


@pytest.fixture(scope="session")
def train_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small, class-balanced sample of the real router training data (160 rows)."""
    if not ROUTER_TRAIN.exists():
        pytest.skip(f"{ROUTER_TRAIN} not available")
    per_label: dict[str, list[str]] = {}
    for line in ROUTER_TRAIN.read_text().splitlines():
        row = json.loads(line)
        bucket = per_label.setdefault(row["label"], [])
        if len(bucket) < 40:
            bucket.append(json.dumps({"query": row["query"], "label": row["label"]}))
    out = tmp_path_factory.mktemp("router-data") / "sample.jsonl"
    out.write_text("\n".join(line for lines in per_label.values() for line in lines) + "\n")
    return out
