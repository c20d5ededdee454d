"""Data sources of the router: labelled queries, pasted-context filler, code chat pairs, chat turns.

Every reader names the file and line of a bad record (``DataError``) and never trusts the input.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path

from forge_sdk.errors import DataError

__all__ = [
    "LabelledQuery",
    "read_json_lines",
    "read_lines",
    "load_chat_prompts",
    "load_code_chat",
    "load_filler",
    "load_labelled",
]

LabelledQuery = tuple[str, str]
"""A ``(query, label)`` pair."""


def read_lines(path: Path) -> Iterable[tuple[int, str]]:
    """``(line number, line)`` of a UTF-8 text file.

    Raises:
        DataError: the file is missing, unreadable or not UTF-8.
    """
    try:
        with path.open(encoding="utf-8") as fh:
            yield from enumerate(fh, start=1)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: file not found") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror}") from exc


def read_json_lines(path: Path) -> Iterable[tuple[str, object]]:
    """``("file:line", parsed value)`` of each non-blank line of a JSON-lines file.

    Raises:
        DataError: the file cannot be read (see ``read_lines``) or a line is not valid JSON; the
            message names the file and line.
    """
    for lineno, line in read_lines(path):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: invalid JSON ({exc.msg})") from exc


def load_labelled(path: str | Path) -> list[LabelledQuery]:
    """Read ``{"query", "label"}`` JSON lines (other keys are ignored).

    Raises:
        DataError: the file is missing or empty, or a line is not such an object; the message
            names the file and line.
    """
    source = Path(path)
    out: list[LabelledQuery] = []
    for where, record in read_json_lines(source):
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object with 'query' and 'label'")
        query, label = record.get("query"), record.get("label")
        if not isinstance(query, str) or not query.strip():
            raise DataError(f"{where}: 'query' must be a non-empty string")
        if not isinstance(label, str) or not label.strip():
            raise DataError(f"{where}: 'label' must be a non-empty string")
        out.append((query, label.strip()))
    if not out:
        raise DataError(f"{source}: no records")
    return out


def load_filler(path: str | Path, *, min_chars: int = 200, max_chars: int = 1500) -> list[str]:
    """Paragraphs (blank-line separated) of a plain-text file, for pasted-context augmentation.

    Raises:
        DataError: the file is unreadable or has no paragraph of a usable size.
    """
    source = Path(path)
    text = "".join(line for _, line in read_lines(source))
    paragraphs = [p.strip() for p in text.split("\n\n") if min_chars <= len(p.strip()) <= max_chars]
    if not paragraphs:
        raise DataError(f"{source}: no paragraph of {min_chars}-{max_chars} characters")
    return paragraphs


def load_code_chat(path: str | Path, *, source_contains: str = "") -> list[tuple[str, str]]:
    """``(request, answer)`` pairs from a chat JSONL file (``{"messages": [user, assistant, ...]}``).

    Only rows whose ``source`` contains ``source_contains`` are kept (all rows when empty).

    Raises:
        DataError: a line is not a chat record; the message names the file and line.
    """
    source = Path(path)
    pairs: list[tuple[str, str]] = []
    for where, record in read_json_lines(source):
        messages = record.get("messages") if isinstance(record, dict) else None
        if (
            not isinstance(messages, list)
            or len(messages) < 2
            or not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages[:2])
        ):
            raise DataError(f"{where}: expected {{'messages': [user, assistant, ...]}} with string contents")
        if source_contains and source_contains not in str(record.get("source", "")):
            continue
        pairs.append((messages[0]["content"], messages[1]["content"]))
    return pairs


def load_chat_prompts(path: str | Path, n: int, *, seed: int = 20240917) -> list[str]:
    """``n`` distinct opening user turns, sampled with ``seed``, of a chat or preference JSONL file.

    A row's opening turn is the first message of ``prompt_messages`` or ``messages``.

    Raises:
        DataError: a line has neither list, or the file has fewer than ``n`` distinct turns.
    """
    source = Path(path)
    turns: set[str] = set()
    for where, record in read_json_lines(source):
        messages = None
        if isinstance(record, dict):
            messages = record.get("prompt_messages") or record.get("messages")
        if not isinstance(messages, list) or not messages or not isinstance(messages[0], dict):
            raise DataError(
                f"{where}: expected 'prompt_messages' or 'messages': [{{'role', 'content'}}, ...]"
            )
        content = messages[0].get("content")
        if isinstance(content, str) and len(content.strip()) > 15:
            turns.add(content.strip())
    if len(turns) < n:
        raise DataError(f"{source}: only {len(turns)} distinct opening turns, {n} asked for")
    return random.Random(f"chat-prompts:{seed}").sample(sorted(turns), n)
