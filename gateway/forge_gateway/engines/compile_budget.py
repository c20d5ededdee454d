"""The compute budget of every output-constraint compilation (JSON schema, regex, grammar, choices).

A constraint is request data that becomes native compile work (xgrammar builds a token-mask
automaton over the whole vocabulary), and its cost is far from linear in its size: a 5,000-string
enum compiles in 0.04 s, a 20,000-string one in 8 s, a 100,000-string one in minutes. So each
compile gets, in this order:

1. **Size limits, before any compile work** (:func:`check_constraint`, pure Python, iterative so a
   hostile depth cannot overflow the stack): bytes of the schema / pattern / grammar, enum and
   choice values, nesting depth and node count (:class:`CompileBudget`). Over a limit: a 400.
2. **A cache by hash** (:class:`BudgetedCompiler`): a constraint compiled before is not compiled again,
   and one refused before (too slow, does not compile) is refused at once.
3. **A time limit, off the event loop**: the compile runs in a separate compiler process (one per
   engine, started in the background when the engine starts, from a fork server that has xgrammar
   imported, so a restart after a kill takes milliseconds); past
   ``timeout_s`` the process is killed, so the core is free at once, and the request gets a 400.
   If the request ends first (client gone), its compile is abandoned the same way.

The compiler process is a ``multiprocessing`` fork-server child, so, as with vLLM, a script that
starts an engine needs the ``if __name__ == "__main__":`` guard (the child imports the main module).

Both engines use it: the transformers engine builds its matchers from the compiled grammar; the vLLM
engine runs it as a gate before handing the constraint to vLLM (whose own compile cannot be
interrupted), so vLLM only ever compiles what compiled within the budget here.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import multiprocessing
import threading
from collections.abc import Sequence
from typing import Any

from msgspec import Struct

from forge_gateway.engines.base import Constraint
from forge_sdk.errors import EngineUnavailableError, InvalidRequestError

__all__ = ["DEFAULT_BUDGET", "BudgetedCompiler", "CompileBudget", "check_constraint", "schema_depth"]


class CompileBudget(Struct, frozen=True, kw_only=True):
    """Limits of one constraint's compilation (the defaults are the product's; not configurable yet)."""

    max_bytes: int = 64 * 1024
    """Largest schema (its JSON), pattern or grammar, in UTF-8 bytes; choices count all their bytes."""
    max_enum: int = 4096
    """Most ``enum`` / ``const`` values in a schema, or choices, all together."""
    max_depth: int = 64
    """Deepest nesting of a schema's JSON (objects and arrays; ``properties`` then a property is 2)."""
    max_nodes: int = 20_000
    """Most JSON values (objects, arrays, scalars) in a schema."""
    timeout_s: float = 5.0
    """Longest one compile may run; then the compiler process is killed and the request gets a 400."""
    cache_entries: int = 256
    """Compiled grammars and refusals kept, most recently used first."""


DEFAULT_BUDGET = CompileBudget()


def _too_big(constraint: Constraint, what: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"the output constraint is too large to compile: {what}",
        param=constraint.param,
        code="constraint_too_large",
    )


def schema_depth(value: Any, *, max_depth: int, max_nodes: int) -> tuple[int, int, int]:
    """``(depth, nodes, enum values)`` of a decoded JSON value, stopping early past either cap.

    Iterative: a value nested deeper than Python's recursion limit is measured, not crashed on.
    """
    depth = nodes = enums = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, level = stack.pop()
        nodes += 1
        depth = max(depth, level)
        if depth > max_depth or nodes > max_nodes:
            break
        if isinstance(node, dict):
            enum = node.get("enum")
            if isinstance(enum, list):
                enums += len(enum)
            if "const" in node:
                enums += 1
            stack.extend((child, level + 1) for child in node.values())
        elif isinstance(node, list):
            stack.extend((child, level + 1) for child in node)
    return depth, nodes, enums


def check_constraint(constraint: Constraint, budget: CompileBudget = DEFAULT_BUDGET) -> None:
    """Refuse a constraint over the size limits, before anything compiles or recurses over it.

    Raises:
        InvalidRequestError: too many bytes, values, levels or nodes (a 400 naming the field).
    """
    kind, value = constraint.kind, constraint.value
    if kind == "json":
        depth, nodes, enums = schema_depth(value, max_depth=budget.max_depth, max_nodes=budget.max_nodes)
        if depth > budget.max_depth:
            raise _too_big(constraint, f"the schema nests deeper than {budget.max_depth} levels")
        if nodes > budget.max_nodes:
            raise _too_big(constraint, f"the schema has more than {budget.max_nodes} values")
        if enums > budget.max_enum:
            raise _too_big(constraint, f"{enums} enum/const values (at most {budget.max_enum})")
        size = len(json.dumps(value, ensure_ascii=False).encode())
    elif kind == "choice":
        if len(value) > budget.max_enum:
            raise _too_big(constraint, f"{len(value)} choices (at most {budget.max_enum})")
        size = sum(len(str(choice).encode()) for choice in value)
    elif kind in ("regex", "grammar"):
        size = len(str(value).encode())
    else:
        return
    if size > budget.max_bytes:
        raise _too_big(constraint, f"{size} bytes (at most {budget.max_bytes})")


def _key(constraint: Constraint) -> str:
    text = json.dumps([constraint.kind, constraint.value, constraint.compact], sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()


def _compile(compiler: Any, kind: str, value: Any, compact: bool) -> Any:
    """One xgrammar compile (in the compiler process)."""
    ws = not compact
    seps = None if ws else (",", ":")
    if kind == "json":
        return compiler.compile_json_schema(json.dumps(value), any_whitespace=ws, separators=seps)
    if kind == "json_object":
        return compiler.compile_json_schema('{"type": "object"}', any_whitespace=ws, separators=seps)
    if kind == "regex":
        return compiler.compile_regex(value)
    if kind == "choice":
        return compiler.compile_grammar("root ::= " + " | ".join(json.dumps(choice) for choice in value))
    return compiler.compile_grammar(value)


def _serve(conn: Any, tokenizer_info: str) -> None:
    """The compiler process: compile what arrives, answer ``("ok", serialized)`` or ``("error", why)``."""
    import xgrammar as xgr

    info = xgr.TokenizerInfo.deserialize_json(tokenizer_info)
    # No cache here: the parent caches by hash, and this process may be killed at any time.
    compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
    while True:
        try:
            kind, value, compact = conn.recv()
        except (EOFError, OSError):
            return
        try:
            answer = ("ok", _compile(compiler, kind, value, compact).serialize_json())
        except Exception as exc:  # xgrammar's errors subclass RuntimeError / ValueError / TypeError
            answer = ("error", str(exc).strip() or type(exc).__name__)
        conn.send(answer)


class _Worker:
    """One compiler process and the pipe to it."""

    def __init__(self, tokenizer_info: str) -> None:
        ctx = multiprocessing.get_context("forkserver")
        # The fork server imports xgrammar (and torch) once; each compiler process, first or after
        # a kill, forks from it in milliseconds instead of paying the imports again.
        ctx.set_forkserver_preload(["xgrammar"])
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_serve, args=(child, tokenizer_info), daemon=True, name="forge-grammar"
        )
        self.process.start()
        child.close()
        self.killed = False
        self._lock = threading.Lock()

    def kill(self) -> bool:
        """Stop the process; True the first time (it was compiling or idle), False after."""
        with self._lock:
            if self.killed:
                return False
            self.killed = True
        with contextlib.suppress(Exception):
            self.process.kill()
            self.process.join(5)
        with contextlib.suppress(Exception):
            self.conn.close()
        return True


class _Refused:
    """A cached refusal: the constraint did not compile within the budget (the message says why)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class BudgetedCompiler:
    """Compiles constraints for one tokenizer within a :class:`CompileBudget`.

    Args:
        tokenizer: the Hugging Face tokenizer.
        vocab_size: the model's logits width (may exceed the tokenizer's vocabulary).
        stop_ids: end-of-sequence ids.
        budget: the limits.
    """

    def __init__(
        self, tokenizer: Any, vocab_size: int, stop_ids: Sequence[int], budget: CompileBudget = DEFAULT_BUDGET
    ) -> None:
        import xgrammar as xgr

        self.info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=sorted(stop_ids) or None
        )
        self._info_json = self.info.serialize_json()
        self.budget = budget
        self._cache: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._lock: asyncio.Lock | None = None
        self._worker: _Worker | None = None
        self._worker_lock = threading.Lock()
        self._closed = False
        self.compiles = 0
        """Compiles run in the compiler process (cache hits and size refusals not counted)."""
        self.kills = 0
        """Compiler processes killed (over the time limit, or their request ended)."""

    def _remember(self, key: str, value: Any) -> None:
        self._cache[key] = value
        self._cache.move_to_end(key)
        while len(self._cache) > self.budget.cache_entries:
            self._cache.popitem(last=False)

    def _cached(self, key: str, constraint: Constraint) -> Any:
        hit = self._cache.get(key)
        if hit is None:
            return None
        self._cache.move_to_end(key)
        if isinstance(hit, _Refused):
            raise InvalidRequestError(str(hit), param=constraint.param, code="constraint_not_compiled")
        return hit

    async def compile(self, constraint: Constraint) -> Any:
        """The compiled grammar (``xgrammar.CompiledGrammar``) of ``constraint``.

        Raises:
            InvalidRequestError: over a size limit, over the time limit, or it does not compile.
        """
        check_constraint(constraint, self.budget)
        key = _key(constraint)
        hit = self._cached(key, constraint)
        if hit is not None:
            return hit
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # one compiler process: one compile at a time per engine
            hit = self._cached(key, constraint)
            if hit is not None:
                return hit
            worker = await asyncio.to_thread(self._ready)  # start-up is not the request's budget
            try:
                status, payload = await asyncio.to_thread(self._run, worker, constraint)
            except asyncio.CancelledError:
                # The request ended while its compile ran: abandon it (the thread's wait ends with
                # the pipe) so the core goes back to the requests still being served.
                self._kill(worker)
                raise
            if status == "ok":
                self._remember(key, payload)
                return payload
            reason = (
                f"compiling the output constraint took longer than {self.budget.timeout_s:g} s"
                if status == "timeout"
                else f"cannot compile the output constraint: {payload}"
            )
            self._remember(key, _Refused(reason))
            raise InvalidRequestError(reason, param=constraint.param, code="constraint_not_compiled")

    def warm(self) -> None:
        """Start the compiler process now (blocking; engines call it from a background thread)."""
        self._ready()

    def _ready(self) -> _Worker:
        with self._worker_lock:
            if self._closed:
                raise EngineUnavailableError("the engine stopped")
            worker = self._worker
            if worker is None or not worker.process.is_alive():
                if worker is not None:
                    worker.kill()
                worker = self._worker = _Worker(self._info_json)
            return worker

    def _run(self, worker: _Worker, constraint: Constraint) -> tuple[str, Any]:
        import xgrammar as xgr

        self.compiles += 1
        value = list(constraint.value) if constraint.kind == "choice" else constraint.value
        try:
            worker.conn.send((constraint.kind, value, constraint.compact))
            if not worker.conn.poll(self.budget.timeout_s):
                self._kill(worker)
                return "timeout", None
            status, payload = worker.conn.recv()
        except (EOFError, OSError):  # killed under us (its request ended), or the compiler crashed
            self._kill(worker)
            return "error", "the grammar compiler stopped"
        if status != "ok":
            return status, payload
        return "ok", xgr.CompiledGrammar.deserialize_json(payload, self.info)

    def _kill(self, worker: _Worker) -> None:
        with self._worker_lock:
            if self._worker is worker:
                self._worker = None
        if worker.kill():
            self.kills += 1

    def close(self) -> None:
        """Stop the compiler process (the engine stopped)."""
        with self._worker_lock:
            self._closed = True
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.kill()
