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

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from forge_sdk.errors import DataError
from forge_train.sources import Where, load_jsonl, records, save_jsonl, to_dataset

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


# ---------------------------------------------------------------------------------------------
# Field checks


def _text(where: Where, record: Mapping[str, Any], field: str, *, required: bool = True) -> str | None:
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


def _messages(where: Where, value: Any, field: str, *, need_assistant: bool) -> list[dict[str, str]]:
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


def _sft_record(where: Where, record: dict[str, Any], fmt: SFTFormat) -> dict[str, Any]:
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
    rows = [_sft_record(where, rec, format) for where, rec in records(path, fields, limit)]
    return to_dataset(rows, path)


def _dpo_record(where: Where, record: dict[str, Any], conversational: bool) -> dict[str, Any]:
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
    for where, record in records(path, fields, limit):
        if conversational is None:
            conversational = record.get("prompt_messages") is not None or isinstance(
                record.get("chosen"), list
            )
        rows.append(_dpo_record(where, record, conversational))
    return to_dataset(rows, path)


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
        return to_dataset([{"text": c} for c in chunks], path)
    rows = [{"text": _text(where, rec, field)} for where, rec in records(path, None, limit)]
    return to_dataset(rows, path)


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
