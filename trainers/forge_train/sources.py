"""Where training records come from: jsonl, json, csv, parquet, a saved ``datasets`` folder or the hub.

Each reader yields ``(where, record)`` pairs; ``where`` names the file and line (jsonl) or record
number, so a validation error can point at the exact record.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forge_sdk.errors import DataError

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = ["Where", "iter_records", "load_jsonl", "records", "save_jsonl", "to_dataset"]

_FILE_SUFFIXES = {".jsonl", ".json", ".csv", ".parquet", ".txt"}


class Where:
    """Names a record in error messages: ``file: line 12`` for jsonl, ``file: record 12`` otherwise."""

    def __init__(self, source: str, index: int, unit: str) -> None:
        self.source, self.index, self.unit = source, index, unit

    def error(self, field: str | None, problem: str) -> DataError:
        at = f" field {field!r}:" if field else ""
        return DataError(f"{self.source}: {self.unit} {self.index}:{at} {problem}", param=field)


def save_jsonl(data: Iterable[Mapping[str, Any]], path: str | Path) -> None:
    """Write records as JSON lines (UTF-8, one object per line), creating parent folders."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", encoding="utf-8") as fh:
        for record in data:
            fh.write(json.dumps(dict(record), ensure_ascii=False) + "\n")


def load_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file (blank lines skipped).

    Raises:
        DataError: the file is missing, a line is not JSON, or a line is not an object.
    """
    return [record for _, record in _iter_jsonl(Path(path))]


def _iter_jsonl(path: Path) -> Iterator[tuple[Where, dict[str, Any]]]:
    try:
        fh = path.open(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = Where(str(path), number, "line")
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise where.error(None, f"invalid JSON ({exc.msg} at column {exc.colno})") from exc
            if not isinstance(record, dict):
                raise where.error(None, f"expected a JSON object, got {type(record).__name__}")
            yield where, record


def iter_records(path: str | Path) -> Iterator[tuple[Where, dict[str, Any]]]:
    """Records of any supported source, each with where it came from."""
    source = Path(path)
    suffix = source.suffix.lower()
    if source.is_dir():
        yield from _iter_saved_dataset(source)
        return
    if not source.exists():
        if suffix in _FILE_SUFFIXES or str(path).startswith((".", "/", "~")):
            raise DataError(f"dataset file not found: {path}")
        yield from _iter_hub_dataset(str(path))
        return
    if suffix == ".jsonl":
        yield from _iter_jsonl(source)
    elif suffix == ".json":
        yield from _iter_json(source)
    elif suffix == ".csv":
        yield from _iter_csv(source)
    elif suffix == ".parquet":
        yield from _iter_parquet(source)
    else:
        raise DataError(
            f"{source}: unsupported data file type {suffix or '(none)'!r}; use .jsonl, .json, .csv or .parquet"
        )


def _iter_json(path: Path) -> Iterator[tuple[Where, dict[str, Any]]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: line {exc.lineno}: invalid JSON ({exc.msg})") from exc
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    for number, record in enumerate(data, start=1):
        where = Where(str(path), number, "record")
        if not isinstance(record, dict):
            raise where.error(None, f"expected a JSON object, got {type(record).__name__}")
        yield where, record


def _iter_csv(path: Path) -> Iterator[tuple[Where, dict[str, Any]]]:
    try:
        fh = path.open(encoding="utf-8", newline="")
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with fh:
        reader = csv.DictReader(fh)
        try:
            for number, row in enumerate(reader, start=1):
                where = Where(str(path), number, "record")
                if None in row:
                    raise where.error(
                        None, f"has more values than the {len(reader.fieldnames or [])} header columns"
                    )
                yield where, {k: _maybe_json(v) for k, v in row.items()}
        except csv.Error as exc:
            raise DataError(f"{path}: line {reader.line_num}: invalid CSV ({exc})") from exc


def _maybe_json(value: Any) -> Any:
    # CSV cells are strings; message lists are stored JSON-encoded.
    if isinstance(value, str) and value.lstrip().startswith("[{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _iter_parquet(path: Path) -> Iterator[tuple[Where, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several unrelated types for a corrupt file
        raise DataError(f"{path}: not a readable parquet file ({exc})") from exc
    for number, row in enumerate(rows, start=1):
        yield Where(str(path), number, "record"), row


def _iter_saved_dataset(path: Path) -> Iterator[tuple[Where, dict[str, Any]]]:
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except Exception as exc:  # datasets raises FileNotFoundError or its own errors
        raise DataError(f"{path}: not a dataset folder saved with save_to_disk ({exc})") from exc
    if isinstance(ds, DatasetDict):
        if "train" not in ds:
            raise DataError(f"{path}: dataset has no 'train' split (splits: {', '.join(ds)})")
        ds = ds["train"]
    for number, row in enumerate(ds, start=1):
        yield Where(str(path), number, "record"), dict(row)


def _iter_hub_dataset(name: str) -> Iterator[tuple[Where, dict[str, Any]]]:
    from datasets import load_dataset

    try:
        ds = load_dataset(name, split="train")
    except Exception as exc:  # offline, unknown id, gated...: all the same to the user
        raise DataError(
            f"cannot load dataset {name!r}: not a local file or folder, and not a hub dataset ({exc})"
        ) from exc
    for number, row in enumerate(ds, start=1):
        yield Where(name, number, "record"), dict(row)


def records(
    path: str | Path, fields: Mapping[str, str] | None, limit: int | None
) -> Iterator[tuple[Where, dict[str, Any]]]:
    """Records of ``path`` with columns renamed by ``fields`` (ours -> theirs), at most ``limit``."""
    rename = {src: dst for dst, src in (fields or {}).items()}
    for count, (where, record) in enumerate(iter_records(path)):
        if limit is not None and count >= limit:
            return
        if rename:
            record = {rename.get(k, k): v for k, v in record.items()}
        yield where, record


def to_dataset(rows: list[dict[str, Any]], path: str | Path) -> Dataset:
    """A ``datasets.Dataset`` of ``rows`` (raises DataError when there are none)."""
    from datasets import Dataset

    if not rows:
        raise DataError(f"{path}: no records")
    return Dataset.from_list(rows)
