"""Engines of standalone experts: one in-process engine per merged or quantized checkpoint.

A standalone expert (``ExpertModel.model_path``) cannot share the base model's engine, so it gets
its own engine of the same kind (vLLM or transformers). Engines start lazily on the expert's first
request by default: each one holds a full model and its KV cache, and starting every registered
checkpoint would delay the gateway's readiness and hold memory for experts nobody calls.
``engine.standalone_start = "startup"`` starts them all with the gateway instead (no first-request
delay). An engine stops when its expert is unregistered or changed, and on shutdown.

A checkpoint that fails to start is remembered for ``retry_after`` seconds, so requests meanwhile
fail fast (503, or the fallback expert of SDD §9.2) instead of each paying a failed load.

At most ``max_running`` engines run at once (``engine.max_standalone_engines``): starting one
more stops the least recently used idle one (it starts again on its next request); when every
running engine is busy, the new start is refused (503 / fallback) rather than exhausting memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import structlog

from forge_gateway.config import EngineConfig, GatewayConfig
from forge_gateway.engines.base import Engine
from forge_gateway.engines.vllm_parallel import vllm_parallel_options
from forge_gateway.model_source import checkpoint_quantization
from forge_sdk.errors import EngineUnavailableError, LargeForgeAIError, ModelError
from forge_sdk.experts import ExpertModel

__all__ = [
    "STANDALONE_KINDS",
    "EngineFactory",
    "EnginePool",
    "checkpoint_quantization",
    "engine_options",
    "engine_quantization",
    "lora_at_start",
    "standalone_factory",
]

log = structlog.get_logger("forge_gateway.engine_pool")

EngineFactory = Callable[[ExpertModel], Engine]
"""Builds the (unstarted) engine of a standalone expert."""

STANDALONE_KINDS = ("vllm", "transformers")
"""Base engine kinds whose gateway can start engines for standalone experts."""

State = Literal["idle", "starting", "running", "failed", "stopping"]

# Quantization methods that need a checkpoint quantized offline; the others (fp8, bitsandbytes)
# vLLM can apply on the fly to an unquantized checkpoint.
_OFFLINE_METHODS = ("awq", "gptq")


def engine_quantization(expert: ExpertModel) -> str | None:
    """The ``quantization`` option to start an expert's engine with.

    A checkpoint that declares its quantization is left to the engine to detect (``None``): the
    registry's ``quantization`` names the algorithm (``gptq``), while the checkpoint may store it
    in another format (``compressed-tensors``) that passing ``gptq`` would contradict.

    Raises:
        ModelError: the expert says ``awq``/``gptq`` but its checkpoint is not quantized.
    """
    declared = checkpoint_quantization(str(expert.model_path))
    if declared is not None:
        return None
    if expert.quantization in _OFFLINE_METHODS:
        raise ModelError(
            f"expert {expert.name!r} says quantization={expert.quantization!r} but {expert.model_path} "
            "holds no quantization_config; quantize it first (forge-train quantize)"
        )
    return expert.quantization


def lora_at_start(engine: EngineConfig, *, adapters: bool) -> bool:
    """Whether the base engine starts with LoRA on (``[engine] enable_lora``; ``auto`` below).

    ``auto``: on when adapter experts are registered at start, and always on the transformers
    engine and on vLLM off CPU; otherwise off until the first adapter (:class:`LoraSwitch`).
    """
    if engine.enable_lora != "auto":
        return engine.enable_lora
    if adapters:
        return True
    from forge_gateway.engines import vllm_available

    if engine.kind == "transformers" or (engine.kind == "auto" and not vllm_available()):
        return True  # LoRA costs the transformers engine nothing until an adapter loads
    if not vllm_available():
        return False  # kind "vllm" without vllm: create_engine says so in one line
    from vllm.platforms import current_platform

    return not current_platform.is_cpu()


def engine_options(
    config: GatewayConfig,
    *,
    adapters: bool = False,
    expert: ExpertModel | None = None,
    kind: str | None = None,
) -> dict[str, Any]:
    """Engine keyword arguments from the config's ``[engine]`` section: the one place they are made.

    Args:
        config: the gateway config.
        adapters: adapter experts are registered (``enable_lora = "auto"`` turns vLLM's LoRA on
            then; later ones swap in a LoRA engine at runtime, :mod:`forge_gateway.lora_switch`).
        expert: a standalone expert: its checkpoint, without LoRA, with the standalone share of
            GPU memory and its own quantization (None: the base model's engine).
        kind: the engine kind (default ``[engine] kind``; a standalone expert's is the base's).

    Raises:
        ModelError: a standalone expert's quantization that its engine cannot apply.
    """
    from forge_gateway.model_source import derive_max_model_len

    e = config.engine
    kind = kind or e.kind
    dtype = e.dtype
    if expert is None:
        path = config.model
        quantization = e.quantization
        gpu_memory_utilization = e.gpu_memory_utilization
        lora = lora_at_start(e, adapters=adapters)
    else:
        path = str(Path(str(expert.model_path)).expanduser())
        quantization = engine_quantization(expert)
        gpu_memory_utilization = e.standalone_gpu_memory_utilization
        lora = False
        if dtype in ("float32", "float") and checkpoint_quantization(path):
            # Weight-only int kernels (vLLM's W4A16 on CPU among them) compute in half precision
            # only: a float32 gateway (exact-match tests) would kill the engine at its first batch.
            dtype = "auto"
    options: dict[str, Any] = {"enable_lora": lora, "dtype": dtype}
    # A standalone checkpoint gets the base's setting, capped to what it allows.
    max_model_len = derive_max_model_len(path, e.max_model_len, strict=expert is None)
    if max_model_len is not None:  # None: neither config nor model says; the engine derives it
        options["max_model_len"] = max_model_len
    if kind in ("vllm", "auto"):
        options.update(
            quantization=quantization,
            gpu_memory_utilization=gpu_memory_utilization,
            **vllm_parallel_options(e),
        )
        if expert is None:
            options.update(max_loras=e.max_loras, max_lora_rank=e.max_lora_rank)
    elif expert is not None and quantization is not None:
        raise ModelError(
            f"expert {expert.name!r}: the {kind} engine cannot quantize on the fly "
            f"({quantization}); serve a quantized checkpoint or use the vLLM engine"
        )
    if kind == "transformers":
        options["max_batch_size"] = e.max_batch_size
    return options


def standalone_factory(config: GatewayConfig, kind: str) -> EngineFactory:
    """Engines for standalone experts: the base engine's kind and settings, without LoRA.

    Args:
        config: the gateway config (its ``[engine]`` section).
        kind: the base engine's kind, ``vllm`` or ``transformers``.
    """

    def build(expert: ExpertModel) -> Engine:
        from forge_gateway.engines import create_engine

        options = engine_options(config, expert=expert, kind=kind)
        return create_engine(kind, str(Path(str(expert.model_path)).expanduser()), **options)  # type: ignore[arg-type]

    return build


@dataclass(slots=True)
class _Slot:
    expert: ExpertModel
    engine: Engine | None = None
    state: State = "idle"
    error: str | None = None
    failed_at: float = 0.0
    started_at: float | None = None
    last_used: float = 0.0
    task: asyncio.Task[Engine] | None = field(default=None, repr=False)


class EnginePool:
    """The running engines of standalone experts, keyed by expert name.

    Args:
        factory: builds an unstarted engine for an expert.
        retry_after: seconds a failed start is remembered before the next request retries it.
        max_running: most engines running (or starting) at once; None: no cap.
    """

    def __init__(
        self, factory: EngineFactory, *, retry_after: float = 30.0, max_running: int | None = None
    ) -> None:
        self._factory = factory
        self.retry_after = retry_after
        self.max_running = max_running
        self._slots: dict[str, _Slot] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._stopping: list[_Slot] = []  # retired slots whose engines are still shutting down

    # --- catalog changes -------------------------------------------------------------------

    def sync(self, experts: dict[str, ExpertModel]) -> list[_Slot]:
        """Track the standalone experts of ``experts``; return the slots to retire.

        An expert that left or whose entry changed (new ``model_path``, new quantization...) loses
        its engine, so a re-registered name never serves the old weights.
        """
        wanted = {name: e for name, e in experts.items() if e.kind == "standalone"}
        retired = [slot for name, slot in self._slots.items() if wanted.get(name) != slot.expert]
        for slot in retired:
            del self._slots[slot.expert.name]
        for name, expert in wanted.items():
            if name not in self._slots:
                self._slots[name] = _Slot(expert)
        return retired

    def retire_soon(self, slots: list[_Slot]) -> None:
        """Stop the engines of ``slots`` in the background (from synchronous catalog callbacks)."""
        if not slots:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # outside the event loop (start-up): nothing can be running yet
            return
        for slot in slots:
            task = loop.create_task(self._retire(slot))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def _retire(self, slot: _Slot) -> None:
        self._stopping.append(slot)
        try:
            await self._stop_slot(slot)
        finally:
            self._stopping.remove(slot)

    async def _stop_slot(self, slot: _Slot) -> None:
        if slot.task is not None and not slot.task.done():
            # Stopping half-way through a load is unsafe: let it finish, then stop it.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(slot.task)
        engine = slot.engine
        slot.state = "stopping"
        if engine is not None:
            try:
                await engine.stop()
            except Exception as exc:  # best effort: the expert is gone either way
                log.warning("standalone_stop_failed", expert=slot.expert.name, error=str(exc))
            else:
                log.info("standalone_engine_stopped", expert=slot.expert.name)
        slot.engine, slot.state = None, "idle"

    # --- serving ---------------------------------------------------------------------------

    def running(self, name: str) -> Engine | None:
        """The started engine of expert ``name``, or None."""
        slot = self._slots.get(name)
        return slot.engine if slot is not None and slot.state == "running" else None

    async def get(self, expert: ExpertModel) -> Engine:
        """The started engine of a standalone expert, starting it first if needed.

        Concurrent first requests share one start; a client that goes away does not cancel it.

        Raises:
            EngineUnavailableError: the engine failed to start (now or within ``retry_after``).
        """
        slot = self._slots.get(expert.name)
        if slot is None or slot.expert != expert:  # the catalog changed under this request
            old = self._slots.pop(expert.name, None)
            self.retire_soon([old] if old else [])
            slot = self._slots[expert.name] = _Slot(expert)
        slot.last_used = time.monotonic()
        if slot.state == "running" and slot.engine is not None:
            if (await slot.engine.health()).get("ok"):
                return slot.engine
            # The engine died under us: drop it (a later request restarts it after retry_after)
            # and let this request fall back like any failed start.
            dead = _Slot(slot.expert, slot.engine, "running")
            slot.engine, slot.state, slot.error = None, "failed", "the engine stopped working"
            slot.failed_at = time.monotonic()
            log.error("standalone_engine_died", expert=expert.name)
            self.retire_soon([dead])
            raise EngineUnavailableError(f"standalone expert {expert.name!r} is unavailable: {slot.error}")
        if slot.state == "failed" and time.monotonic() - slot.failed_at < self.retry_after:
            raise EngineUnavailableError(f"standalone expert {expert.name!r} is unavailable: {slot.error}")
        if slot.task is None or slot.task.done():
            self._make_room(slot)
            slot.task = asyncio.get_running_loop().create_task(self._start(slot))
        try:
            return await asyncio.shield(slot.task)
        except LargeForgeAIError as exc:
            raise EngineUnavailableError(
                f"standalone expert {expert.name!r} is unavailable: {exc.message}"
            ) from exc

    def _make_room(self, slot: _Slot) -> None:
        """Stop the least recently used idle engine when ``slot`` would pass ``max_running``.

        Raises:
            EngineUnavailableError: every running engine is busy.
        """
        if self.max_running is None:
            return
        live = [s for s in self._slots.values() if s is not slot and s.state in ("running", "starting")]
        if len(live) < self.max_running:
            return
        idle = [s for s in live if s.state == "running" and s.engine is not None and _unused(s.engine)]
        if not idle:
            raise EngineUnavailableError(
                f"{len(live)} standalone engines are running and busy (engine.max_standalone_engines "
                f"= {self.max_running}); cannot start one for {slot.expert.name!r} now"
            )
        victim = min(idle, key=lambda s: s.last_used)
        log.info("standalone_engine_evicted", expert=victim.expert.name, for_expert=slot.expert.name)
        self._slots[victim.expert.name] = _Slot(victim.expert)  # idle: its next request restarts it
        self.retire_soon([victim])

    async def _start(self, slot: _Slot) -> Engine:
        name = slot.expert.name
        slot.state = "starting"
        began = time.monotonic()
        log.info("standalone_engine_starting", expert=name, model=slot.expert.model_path)
        engine: Engine | None = None
        try:
            path = Path(str(slot.expert.model_path)).expanduser()
            if not (path / "config.json").is_file():
                raise ModelError(
                    f"model_path {slot.expert.model_path} is not a model folder (no config.json)"
                )
            engine = self._factory(slot.expert)
            await engine.start()
        except Exception as exc:
            message = exc.message if isinstance(exc, LargeForgeAIError) else f"{type(exc).__name__}: {exc}"
            slot.state, slot.error, slot.failed_at = "failed", message, time.monotonic()
            log.error("standalone_engine_failed", expert=name, error=message)
            if engine is not None:
                with contextlib.suppress(Exception):
                    await engine.stop()
            if isinstance(exc, LargeForgeAIError):
                raise
            raise ModelError(message) from exc
        if self._slots.get(name) is not slot:  # unregistered while loading: do not leak it
            await engine.stop()
            raise EngineUnavailableError(f"expert {name!r} was removed while its engine started")
        slot.engine, slot.state, slot.error, slot.started_at = engine, "running", None, time.time()
        log.info("standalone_engine_started", expert=name, seconds=round(time.monotonic() - began, 2))
        return engine

    async def start_all(self) -> None:
        """Start every tracked engine now (``standalone_start = "startup"``); failures are logged."""
        for slot in list(self._slots.values()):
            with contextlib.suppress(EngineUnavailableError):
                await self.get(slot.expert)

    async def stop_all(self) -> None:
        """Stop every engine (gateway shutdown)."""
        slots, self._slots = list(self._slots.values()), {}
        await asyncio.gather(*(self._retire(slot) for slot in slots))
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    # --- reporting -------------------------------------------------------------------------

    def status(self, name: str) -> dict[str, Any]:
        """``{"state": idle|starting|running|failed, ...}`` of expert ``name``'s engine."""
        slot = self._slots.get(name)
        return {"state": "idle"} if slot is None else self._slot_status(slot)

    def _slot_status(self, slot: _Slot) -> dict[str, Any]:
        out: dict[str, Any] = {"state": slot.state}
        if slot.engine is not None:
            stats = slot.engine.stats()
            out.update(engine=slot.engine.name, running=stats.running, waiting=stats.waiting)
        if slot.error:
            out["error"] = slot.error
        return out

    async def health(self) -> dict[str, dict[str, Any]]:
        """Each standalone expert's engine: its state, and the engine's own health once running.

        Engines of experts that left stay listed as ``stopping`` until they are down.
        """
        out: dict[str, dict[str, Any]] = {}
        for slot in list(self._stopping):
            out[slot.expert.name] = {"state": "stopping", "ok": True}
        for name, slot in list(self._slots.items()):
            entry = self._slot_status(slot)
            if slot.engine is not None and slot.state == "running":
                entry.update(await slot.engine.health())
                entry["state"] = "running" if entry.get("ok") else "failed"
            else:
                entry["ok"] = slot.state != "failed"
            out[name] = entry
        return out


def _unused(engine: Engine) -> bool:
    stats = engine.stats()
    return not (stats.running or stats.waiting)
