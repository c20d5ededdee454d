"""Training-data loaders (SDD §5.1 / §6.1): read, validate and normalise SFT, DPO and pretraining data.

Sources: ``.jsonl``, ``.json`` (a list of objects), ``.csv``, ``.parquet``, a folder written by
``datasets.Dataset.save_to_disk``, or a Hugging Face hub dataset id; plain ``.txt`` for pretraining.
Every record is checked before training starts, and a bad one raises
:class:`forge_sdk.errors.DataError` naming the file, the line (or record number) and the field,
so a typo on line 9,000 fails in a second rather than an hour into a run.

Normalised shapes (what TRL's trainers take):

- SFT: ``{"messages": [{"role", "content"}, ...]}`` from ``messages``, ``prompt``/``response``
  (+ optional ``system``) or Alpaca ``instruction``/``input``/``output`` records.
- DPO/ORPO: ``{"prompt", "chosen", "rejected"}``, as strings, or conversational (``prompt`` a message
  list, ``chosen``/``rejected`` one assistant message each) when records carry ``prompt_messages``.
- Pretraining: ``{"text"}``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from forge_sdk.errors import DataError

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = [
    "load_dpo_dataset",
    "load_jsonl",
    "load_pretrain_dataset",
    "load_sft_dataset",
    "prepare_chat_format",
    "save_jsonl",
]

_ROLES = {"system", "user", "assistant", "tool"}
_FILE_SUFFIXES = {".jsonl", ".json", ".csv", ".parquet", ".txt"}


class _Where:
    """Names a record in error messages: ``file: line 12`` for jsonl, ``file: record 12`` otherwise."""

    def __init__(self, source: str, index: int, unit: str) -> None:
        self.source, self.index, self.unit = source, index, unit

    def error(self, field: str | None, problem: str) -> DataError:
        at = f" field {field!r}:" if field else ""
        return DataError(f"{self.source}: {self.unit} {self.index}:{at} {problem}", param=field)


# ---------------------------------------------------------------------------------------------
# Raw readers


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


def _iter_jsonl(path: Path) -> Iterator[tuple[_Where, dict[str, Any]]]:
    try:
        fh = path.open(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = _Where(str(path), number, "line")
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise where.error(None, f"invalid JSON ({exc.msg} at column {exc.colno})") from exc
            if not isinstance(record, dict):
                raise where.error(None, f"expected a JSON object, got {type(record).__name__}")
            yield where, record


def _iter_records(path: str | Path) -> Iterator[tuple[_Where, dict[str, Any]]]:
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


def _iter_json(path: Path) -> Iterator[tuple[_Where, dict[str, Any]]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: line {exc.lineno}: invalid JSON ({exc.msg})") from exc
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    for number, record in enumerate(data, start=1):
        where = _Where(str(path), number, "record")
        if not isinstance(record, dict):
            raise where.error(None, f"expected a JSON object, got {type(record).__name__}")
        yield where, record


def _iter_csv(path: Path) -> Iterator[tuple[_Where, dict[str, Any]]]:
    try:
        fh = path.open(encoding="utf-8", newline="")
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with fh:
        reader = csv.DictReader(fh)
        try:
            for number, row in enumerate(reader, start=1):
                where = _Where(str(path), number, "record")
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


def _iter_parquet(path: Path) -> Iterator[tuple[_Where, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several unrelated types for a corrupt file
        raise DataError(f"{path}: not a readable parquet file ({exc})") from exc
    for number, row in enumerate(rows, start=1):
        yield _Where(str(path), number, "record"), row


def _iter_saved_dataset(path: Path) -> Iterator[tuple[_Where, dict[str, Any]]]:
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
        yield _Where(str(path), number, "record"), dict(row)


def _iter_hub_dataset(name: str) -> Iterator[tuple[_Where, dict[str, Any]]]:
    from datasets import load_dataset

    try:
        ds = load_dataset(name, split="train")
    except Exception as exc:  # offline, unknown id, gated...: all the same to the user
        raise DataError(
            f"cannot load dataset {name!r}: not a local file or folder, and not a hub dataset ({exc})"
        ) from exc
    for number, row in enumerate(ds, start=1):
        yield _Where(name, number, "record"), dict(row)


def _records(
    path: str | Path, fields: Mapping[str, str] | None, limit: int | None
) -> Iterator[tuple[_Where, dict[str, Any]]]:
    rename = {src: dst for dst, src in (fields or {}).items()}
    for count, (where, record) in enumerate(_iter_records(path)):
        if limit is not None and count >= limit:
            return
        if rename:
            record = {rename.get(k, k): v for k, v in record.items()}
        yield where, record


def _to_dataset(rows: list[dict[str, Any]], path: str | Path) -> Dataset:
    from datasets import Dataset

    if not rows:
        raise DataError(f"{path}: no records")
    return Dataset.from_list(rows)


# ---------------------------------------------------------------------------------------------
# Field checks


def _text(where: _Where, record: Mapping[str, Any], field: str, *, required: bool = True) -> str | None:
    value = record.get(field)
    if value is None:
        if required:
            raise where.error(field, "missing")
        return None
    if not isinstance(value, str):
        raise where.error(field, f"expected a string, got {type(value).__name__}")
    if required and not value.strip():
        raise where.error(field, "is empty")
    return value


def _messages(where: _Where, value: Any, field: str, *, need_assistant: bool) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise where.error(field, "expected a non-empty list of {role, content} messages")
    out: list[dict[str, str]] = []
    for i, msg in enumerate(value):
        at = f"{field}[{i}]"
        if not isinstance(msg, Mapping):
            raise where.error(at, f"expected an object with 'role' and 'content', got {type(msg).__name__}")
        role, content = msg.get("role"), msg.get("content")
        if role not in _ROLES:
            raise where.error(f"{at}.role", f"expected one of {sorted(_ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise where.error(f"{at}.content", f"expected a string, got {type(content).__name__}")
        out.append({"role": role, "content": content})
    if need_assistant and not any(m["role"] == "assistant" for m in out):
        raise where.error(field, "has no assistant message to learn from")
    return out


# ---------------------------------------------------------------------------------------------
# Loaders

SFTFormat = Literal["auto", "messages", "prompt_response", "alpaca"]


def _sft_record(where: _Where, record: dict[str, Any], fmt: SFTFormat) -> dict[str, Any]:
    if fmt == "auto":
        if "messages" in record:
            fmt = "messages"
        elif "prompt" in record:
            fmt = "prompt_response"
        elif "instruction" in record:
            fmt = "alpaca"
        else:
            raise where.error(
                None, "no SFT fields: expected 'messages', 'prompt' + 'response', or 'instruction' + 'output'"
            )
    if fmt == "messages":
        return {"messages": _messages(where, record.get("messages"), "messages", need_assistant=True)}
    if fmt == "prompt_response":
        prompt = _text(where, record, "prompt")
        answer_field = "completion" if "completion" in record and "response" not in record else "response"
        answer = _text(where, record, answer_field)
        system = _text(where, record, "system", required=False)
    else:
        instruction = _text(where, record, "instruction")
        extra = _text(where, record, "input", required=False)
        prompt = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
        answer = _text(where, record, "output")
        system = None
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return {"messages": messages}


def load_sft_dataset(
    path: str | Path,
    format: SFTFormat = "auto",
    fields: Mapping[str, str] | None = None,
    *,
    limit: int | None = None,
) -> Dataset:
    """Load supervised fine-tuning data as a ``messages`` dataset.

    Args:
        path: file, saved-dataset folder or hub id.
        format: ``messages``, ``prompt_response`` (``prompt``, ``response`` or ``completion``,
            optional ``system``), ``alpaca`` (``instruction``, ``input``, ``output``), or ``auto``
            (decided per record).
        fields: our field name -> the column name in the data, e.g. ``{"prompt": "question"}``.
        limit: read at most this many records.

    Returns:
        A ``datasets.Dataset`` with one ``messages`` column.

    Raises:
        DataError: unreadable source or a malformed record (file, line and field named).
    """
    rows = [_sft_record(where, rec, format) for where, rec in _records(path, fields, limit)]
    return _to_dataset(rows, path)


def _dpo_record(where: _Where, record: dict[str, Any], conversational: bool) -> dict[str, Any]:
    pair: dict[str, Any] = {}
    for side in ("chosen", "rejected"):
        value = record.get(side)
        if isinstance(value, list):
            msgs = _messages(where, value, side, need_assistant=True)
            value = next(m["content"] for m in reversed(msgs) if m["role"] == "assistant")
        else:
            value = _text(where, record, side)
        pair[side] = [{"role": "assistant", "content": value}] if conversational else value
    if conversational:
        if record.get("prompt_messages") is not None:
            prompt: Any = _messages(where, record["prompt_messages"], "prompt_messages", need_assistant=False)
        else:
            prompt = [{"role": "user", "content": _text(where, record, "prompt")}]
    else:
        prompt = _text(where, record, "prompt")
    return {"prompt": prompt, **pair}


def load_dpo_dataset(
    path: str | Path,
    format: Literal["auto", "standard", "conversational"] = "auto",
    fields: Mapping[str, str] | None = None,
    *,
    limit: int | None = None,
) -> Dataset:
    """Load preference pairs (``prompt``, ``chosen``, ``rejected``) for DPO or ORPO.

    Args:
        path: file, saved-dataset folder or hub id.
        format: ``standard`` (plain strings), ``conversational`` (the prompt as a message list from
            ``prompt_messages``, or the ``prompt`` string as one user turn; the chat template is
            applied by the trainer), or ``auto``: conversational when the first record has
            ``prompt_messages`` or message-list answers.
        fields: our field name -> the column name in the data.
        limit: read at most this many records.

    Returns:
        A ``datasets.Dataset`` with ``prompt``, ``chosen`` and ``rejected`` columns.

    Raises:
        DataError: unreadable source or a malformed record (file, line and field named).
    """
    rows: list[dict[str, Any]] = []
    conversational: bool | None = None if format == "auto" else format == "conversational"
    for where, record in _records(path, fields, limit):
        if conversational is None:
            conversational = record.get("prompt_messages") is not None or isinstance(
                record.get("chosen"), list
            )
        rows.append(_dpo_record(where, record, conversational))
    return _to_dataset(rows, path)


def _chunk_text(text: str, chunk_chars: int) -> list[str]:
    # Paragraph-aligned chunks keep sentences whole; the trainer packs or truncates them by tokens.
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for para in (p.strip() for p in text.split("\n\n")):
        if not para:
            continue
        if current and size + len(para) > chunk_chars:
            chunks.append("\n\n".join(current))
            current, size = [], 0
        current.append(para)
        size += len(para) + 2
    if current:
        chunks.append("\n\n".join(current))
    return chunks


def load_pretrain_dataset(
    path: str | Path,
    format: Literal["auto", "text", "records"] = "auto",
    field: str = "text",
    *,
    limit: int | None = None,
    chunk_chars: int = 2000,
) -> Dataset:
    """Load raw text for continued pre-training as a ``text`` dataset.

    Args:
        path: a plain ``.txt`` file (split into paragraph-aligned chunks of about ``chunk_chars``
            characters), or records with a text column in any supported source.
        format: ``text`` (treat the file as plain text), ``records``, or ``auto`` (by extension).
        field: the text column of record data.
        limit: keep at most this many records (chunks for plain text).
        chunk_chars: target chunk size for plain text.

    Returns:
        A ``datasets.Dataset`` with one ``text`` column.

    Raises:
        DataError: unreadable or empty source, or a record without usable text.
    """
    source = Path(path)
    if format == "text" or (format == "auto" and source.suffix.lower() in {".txt", ".md"}):
        try:
            text = source.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{source}: not UTF-8 text (byte {exc.start})") from exc
        except OSError as exc:
            raise DataError(f"cannot read {source}: {exc.strerror or exc}") from exc
        chunks = _chunk_text(text, chunk_chars)[:limit]
        if not chunks:
            raise DataError(f"{source}: no text")
        return _to_dataset([{"text": c} for c in chunks], path)
    rows = [{"text": _text(where, rec, field)} for where, rec in _records(path, None, limit)]
    return _to_dataset(rows, path)


def prepare_chat_format(dataset: Dataset, tokenizer: Any, max_len: int | None = None) -> Dataset:
    """Render a ``messages`` dataset to ``text`` with the tokenizer's chat template.

    Args:
        dataset: output of :func:`load_sft_dataset`.
        tokenizer: a tokenizer with a chat template.
        max_len: drop rows longer than this many tokens (None: keep all).

    Returns:
        The dataset with a ``text`` column (and ``messages`` removed).

    Raises:
        DataError: the dataset has no ``messages`` column or the tokenizer has no chat template.
    """
    if "messages" not in dataset.column_names:
        raise DataError(f"prepare_chat_format needs a 'messages' column, got {dataset.column_names}")
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("the tokenizer has no chat template; cannot render messages")
    rendered = dataset.map(
        lambda row: {"text": tokenizer.apply_chat_template(row["messages"], tokenize=False)},
        remove_columns=["messages"],
    )
    if max_len is not None:
        rendered = rendered.filter(lambda row: len(tokenizer(row["text"])["input_ids"]) <= max_len)
    return rendered
