"""Expert models and the on-disk expert registry (SDD §5.5, §6.1.2).

The registry file is JSON ``{"experts": [...]}``. Writes are atomic (temp file in the same
folder, fsync, ``os.replace``, fsync of the folder, the file's mode kept) so a crash never leaves a
half-written registry; each change re-reads the file under a cross-process lock (``flock`` on
``<file>.lock``), so two ``forge-train --register`` runs and the admin API at once lose nothing.
A running gateway watches the file's mtime and picks changes up without a restart.

An expert is served one of three ways, decided by its fields:

* ``adapter_path`` set: a LoRA adapter on the gateway's base model (in-process engine).
* ``endpoint`` set: a remote OpenAI-compatible upstream (``endpoints``: more replicas of it).
* ``model_path`` set: a standalone (merged / quantized) model on its own engine.
* none of them: the base model itself under another name (e.g. ``general``): an *alias*.

When several experts share a specialization, :func:`best_expert` decides which one serves it
(the one place this is decided; classifiers and the registry call it), and names the rule that
decided, from :data:`RANK_RULES`:

1. ``trained>alias``: an expert with weights of its own (adapter, standalone model, remote
   endpoint) outranks an alias of the base model;
2. ``priority``: then the higher ``priority``;
3. ``recent``: then the most recently registered (``registered_at``; none counts as oldest);
4. ``named``: then the expert named like the specialization (built-in ``math`` for ``math``);
5. ``first``: all else equal, the first in registration order.

``only`` says there was a single candidate.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct, field

from forge_sdk.errors import ConfigurationError

__all__ = [
    "DEFAULT_EXPERTS",
    "RANK_RULES",
    "ExpertModel",
    "ExpertRegistry",
    "best_expert",
    "check_keywords",
    "create_default_registry",
    "rank_experts",
    "stamped",
]

# \A...\Z, not ^...$: "$" also matches before a trailing newline, which would let "x\n" through
# into response headers (x-forge-expert).
_NAME = Annotated[str, Meta(pattern=r"\A[A-Za-z0-9][A-Za-z0-9._\-]{0,63}\Z")]
# A keyword is matched against queries and shows up in the route reason header: printable text
# only (no C0/C1 control characters, no line breaks), not blank, of a sane length.
_KEYWORD_BAD = re.compile(r"[\x00-\x1f\x7f-\x9f]")
MAX_KEYWORD_CHARS = 64
"""Longest keyword."""
MAX_KEYWORDS = 512
"""Most keywords one expert may list."""


def check_keywords(keywords: list[str]) -> None:
    """Refuse routing keywords that could not safely be matched or shown in a header.

    Raises:
        ValueError: more than 512, or one blank, longer than 64 characters, or with a control character.
    """
    if len(keywords) > MAX_KEYWORDS:
        raise ValueError(f"at most {MAX_KEYWORDS} keywords, got {len(keywords)}")
    for keyword in keywords:
        if not isinstance(keyword, str) or not keyword.strip() or len(keyword) > MAX_KEYWORD_CHARS:
            raise ValueError(f"keyword {keyword!r} must be 1 to {MAX_KEYWORD_CHARS} characters, not blank")
        if _KEYWORD_BAD.search(keyword):
            raise ValueError(f"keyword {keyword!r} holds a control character")


class ExpertModel(Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """One specialist the gateway can serve (SDD §5.5 ``ExpertModel``)."""

    name: _NAME
    """Unique name; what clients put in ``model``."""
    base_model: str = ""
    """Base model id or path the expert was trained from."""
    adapter_path: str | None = None
    """LoRA adapter folder (PEFT format) served on the base model."""
    model_path: str | None = None
    """Standalone model folder (merged or quantized) served on its own engine."""
    endpoint: str | None = None
    """Base URL of a remote OpenAI-compatible server (e.g. ``http://host:8000/v1``)."""
    endpoints: list[str] = field(default_factory=list)
    """More base URLs serving the same model as ``endpoint`` (replicas). The gateway balances
    requests over all of them (power of two choices on outstanding requests), cools each down on
    its own, and fails over to another replica before falling back to the default expert."""
    upstream_model: str | None = None
    """Model name to send upstream (defaults to ``name``)."""
    api_key_env: str | None = None
    """Env var holding the upstream's API key (never the key itself)."""
    timeout: Annotated[float, Meta(gt=0)] = 60.0
    """Per-request timeout for a remote upstream, seconds."""
    max_retries: Annotated[int, Meta(ge=0, le=10)] = 3
    """Retries for a remote upstream on connect errors / timeouts (SDD §9.3)."""
    description: str = ""
    """What the expert is good at."""
    specialization: str = "general"
    """Domain label (``code``, ``math``, ...) that classifiers predict."""
    keywords: list[str] = field(default_factory=list)
    """Whole words that point a query at this expert (keyword classifier): at most 512, each 1 to 64
    characters of printable text (any script; no control characters or line breaks)."""
    trained_on: str | None = None
    """Dataset the expert was trained on."""
    training_steps: int | None = None
    """Optimizer steps of its training run."""
    quantization: Literal["awq", "gptq", "fp8", "bitsandbytes"] | None = None
    """Quantization of ``model_path`` (passed to the engine)."""
    port: int | None = None
    """Legacy SDD field: port of a per-expert server; prefer ``endpoint``."""
    priority: int = 0
    """Among experts of one specialization and of the same tier (weights of their own, or
    aliases of the base model), the highest priority wins; see :func:`best_expert`."""
    registered_at: float | None = None
    """Unix time the expert was (last) registered, stamped by :meth:`ExpertRegistry.register`
    when absent. Breaks priority ties: the most recently registered wins. None (plugins' experts,
    registry files written before this field) counts as oldest."""

    def __post_init__(self) -> None:
        if self.endpoints and not self.endpoint:
            raise ValueError("endpoints lists extra replicas: give the first one as endpoint")
        # Here, not in a Meta: __post_init__ also runs for experts built in code (plugins,
        # forge-train --register), which msgspec constraints would not check.
        check_keywords(self.keywords)

    @property
    def replicas(self) -> list[str]:
        """Every endpoint of a remote expert, ``endpoint`` first, without repeats."""
        return list(dict.fromkeys([self.endpoint, *self.endpoints])) if self.endpoint else []

    @property
    def kind(self) -> Literal["adapter", "remote", "standalone", "base"]:
        """How the expert is served."""
        if self.endpoint:
            return "remote"
        if self.adapter_path:
            return "adapter"
        if self.model_path:
            return "standalone"
        return "base"

    @property
    def has_own_weights(self) -> bool:
        """True for an adapter, standalone model or remote endpoint; False for a base-model alias."""
        return self.kind != "base"

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (what the registry file stores)."""
        return msgspec.to_builtins(self)  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExpertModel:
        """Validate a dict into an expert.

        Raises:
            ConfigurationError: a field is missing, unknown or of the wrong type.
        """
        try:
            return msgspec.convert(data, cls)
        except msgspec.ValidationError as exc:
            raise ConfigurationError(f"invalid expert {data.get('name', '?')!r}: {exc}") from exc


RANK_RULES: dict[str, str] = {
    "only": "the only expert of the specialization",
    "trained>alias": "an expert with weights of its own outranked aliases of the base model",
    "priority": "the highest priority among the best candidates",
    "recent": "the most recently registered among equal priorities",
    "named": "the expert named like the specialization",
    "first": "all else equal, the first registered",
}
"""The rules :func:`best_expert` reports (in the order they apply, after ``only``), with what each means."""


def _rank_key(expert: ExpertModel, label: str) -> tuple[bool, int, float, bool]:
    return (expert.has_own_weights, expert.priority, expert.registered_at or 0.0, expert.name == label)


def rank_experts(experts: Iterable[ExpertModel], label: str = "") -> list[ExpertModel]:
    """``experts`` best first by the ranking rules (ties keep the given order)."""
    return sorted(experts, key=lambda e: _rank_key(e, label), reverse=True)


def best_expert(experts: Iterable[ExpertModel], specialization: str) -> tuple[ExpertModel, str] | None:
    """The expert that serves ``specialization`` among ``experts``, and the rule that decided.

    Candidates are the experts whose specialization equals ``specialization`` (case-insensitive);
    the rule is the first of :data:`RANK_RULES` on which the winner beats the runner-up.

    Returns:
        ``(expert, rule)``, or None when no expert has that specialization.
    """
    label = specialization.casefold()
    candidates = [e for e in experts if e.specialization.casefold() == label]
    if not candidates:
        return None
    # sorted() is stable and reverse=True keeps equal keys in their order: the first registered wins.
    ranked = rank_experts(candidates, label)
    if len(ranked) == 1:
        return ranked[0], "only"
    best, runner = _rank_key(ranked[0], label), _rank_key(ranked[1], label)
    rules = ("trained>alias", "priority", "recent", "named")
    rule = next((name for name, a, b in zip(rules, best, runner, strict=True) if a != b), "first")
    return ranked[0], rule


def stamped(expert: ExpertModel, after: Iterable[ExpertModel] = ()) -> ExpertModel:
    """``expert`` with ``registered_at`` set to now when it has none.

    Args:
        after: experts already registered; the stamp is later than all of theirs (by 1 ms at
            least), so two registrations in the same millisecond still rank in their order.
    """
    if expert.registered_at is not None:
        return expert
    latest = max((e.registered_at or 0.0 for e in after), default=0.0)
    return msgspec.structs.replace(expert, registered_at=round(max(time.time(), latest + 0.001), 3))


class _RegistryFile(Struct, forbid_unknown_fields=True):
    experts: list[ExpertModel] = field(default_factory=list)


DEFAULT_EXPERTS: list[ExpertModel] = [
    ExpertModel(
        name="general",
        specialization="general",
        description="General assistant for everyday questions.",
        keywords=[],
    ),
    ExpertModel(
        name="code",
        specialization="code",
        description="Programming: writing, explaining and fixing code.",
        keywords=[
            "python",
            "javascript",
            "code",
            "function",
            "bug",
            "compile",
            "sql",
            "regex",
            "api",
            "class",
            "script",
            "programming",
            "debug",
            "java",
            "rust",
            "typescript",
        ],
    ),
    ExpertModel(
        name="math",
        specialization="math",
        description="Mathematics: arithmetic, algebra, calculus, word problems and proofs.",
        keywords=[
            "math",
            "equation",
            "solve",
            "integral",
            "derivative",
            "calculate",
            "algebra",
            "probability",
            "theorem",
            "prove",
            "sum",
            "percent",
            "geometry",
        ],
    ),
    ExpertModel(
        name="writing",
        specialization="writing",
        description="Creative and professional writing: stories, essays, letters, poems.",
        keywords=[
            "story",
            "poem",
            "essay",
            "write",
            "letter",
            "blog",
            "novel",
            "character",
            "narrative",
            "screenplay",
            "article",
        ],
    ),
]


class ExpertRegistry:
    """A named set of experts, optionally backed by a JSON file (SDD §5.5 ``ExpertRegistry``).

    Thread-safe; every mutation of a file-backed registry is saved atomically.
    """

    def __init__(self, config_path: str | Path | None = None) -> None:
        self.experts: dict[str, ExpertModel] = {}
        self.config_path = Path(config_path) if config_path else None
        self._lock = threading.RLock()
        if self.config_path and self.config_path.exists():
            self.load()

    def register(self, expert: ExpertModel, *, save: bool = True) -> None:
        """Add or replace an expert (saved when the registry has a file).

        With a file, the change is applied to the file's current content under its lock, so
        changes other processes made meanwhile are kept. An expert without ``registered_at``
        gets the current time (re-registering a name makes it the most recent).
        """
        with self._lock, self._file_change(save):
            self.experts[expert.name] = stamped(expert, self.experts.values())

    def unregister(self, name: str, *, save: bool = True) -> None:
        """Remove an expert.

        Raises:
            KeyError: no expert of that name.
        """
        with self._lock, self._file_change(save):
            if name not in self.experts:
                raise KeyError(name)
            del self.experts[name]

    @contextlib.contextmanager
    def _file_change(self, save: bool) -> Iterator[None]:
        """Lock the file across processes, re-read it, let the caller change it, write it."""
        if not (save and self.config_path):
            yield
            return
        path = self.config_path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if path.exists():
                self.load()
            yield
            self.save()
        finally:
            os.close(fd)  # closing releases the lock

    def get(self, name: str) -> ExpertModel | None:
        """The expert called ``name``, or None."""
        return self.experts.get(name)

    def list(self) -> list[ExpertModel]:
        """All experts, in registration order."""
        return list(self.experts.values())

    def find_by_keyword(self, keyword: str) -> builtins.list[ExpertModel]:
        """Experts whose keywords contain ``keyword`` as a whole word (case-insensitive)."""
        pattern = re.compile(rf"\b{re.escape(keyword.lower())}\b")
        return [e for e in self.experts.values() if any(pattern.search(k.lower()) for k in e.keywords)]

    def find_by_specialization(self, spec: str) -> builtins.list[ExpertModel]:
        """Experts whose specialization equals ``spec`` (case-insensitive), best first (the order
        of :func:`best_expert`: the first one is the expert that serves ``spec``)."""
        label = spec.casefold()
        return rank_experts((e for e in self.experts.values() if e.specialization.casefold() == label), label)

    def save(self, path: str | Path | None = None) -> None:
        """Write the registry atomically to ``path`` (default: its own file).

        Raises:
            ConfigurationError: no path given and the registry has no file.
        """
        target = Path(path) if path else self.config_path
        if target is None:
            raise ConfigurationError("registry has no file; pass a path to save()")
        with self._lock:
            data = msgspec.json.format(msgspec.json.encode(_RegistryFile(self.list())), indent=2)
        _atomic_write(target, data + b"\n")

    def load(self, path: str | Path | None = None) -> None:
        """Replace the experts with those in ``path`` (default: its own file).

        Raises:
            ConfigurationError: the file is missing, not JSON, or holds an invalid expert.
        """
        source = Path(path) if path else self.config_path
        if source is None:
            raise ConfigurationError("registry has no file; pass a path to load()")
        try:
            raw = source.read_bytes()
        except OSError as exc:
            raise ConfigurationError(f"cannot read expert registry {source}: {exc}") from exc
        try:
            parsed = msgspec.json.decode(raw, type=_RegistryFile)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise ConfigurationError(f"invalid expert registry {source}: {exc}") from exc
        names = [e.name for e in parsed.experts]
        if len(names) != len(set(names)):
            raise ConfigurationError(f"invalid expert registry {source}: duplicate expert names")
        with self._lock:
            self.experts = {e.name: e for e in parsed.experts}

    def mtime(self) -> float | None:
        """Modification time of the backing file, or None."""
        try:
            return self.config_path.stat().st_mtime if self.config_path else None
        except OSError:
            return None


def _atomic_write(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = target.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o644  # a new registry: readable by the gateway's user and group (no secrets in it)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)  # mkstemp makes 0600: keep the file's own mode
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # The rename itself is only durable once the folder's entry is on disk.
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def create_default_registry(path: str | Path | None = None) -> ExpertRegistry:
    """A registry holding general/code/math/writing (saved to ``path`` if given and new)."""
    registry = ExpertRegistry(path)
    if not registry.experts:
        for expert in DEFAULT_EXPERTS:
            registry.register(expert, save=False)
        if registry.config_path:
            registry.save()
    return registry
