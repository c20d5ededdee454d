"""A pure transformers engine with continuous batching, for machines without vLLM.

One background thread owns the model and runs a step loop (see ``_tf_batch``): at each step
boundary it applies commands (abort, adapter load/unload), admits waiting requests up to
``max_batch_size`` (prefilling them as one batch and merging their KV cache into the running
batch), then decodes one token for every active sequence in a single forward pass. The event loop
only enqueues work and awaits outputs, so it never blocks on the model.

LoRA: adapters load through PEFT, and a batch may mix adapters and the base model (PEFT's
per-row ``adapter_names``), so adapter requests do not serialize.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import structlog

from forge_gateway.engines._common import ChatTokenizer, HFTokenizerEngine, StopChecker, check_request
from forge_gateway.engines.base import EngineOutput, EngineRequest, EngineStats, LoraSpec
from forge_sdk.errors import (
    EngineUnavailableError,
    InferenceError,
    InvalidRequestError,
    LargeForgeAIError,
    ModelError,
    ModelNotFoundError,
)

__all__ = ["TransformersEngine"]

log = structlog.get_logger("forge_gateway")

_DTYPES = {
    "float32": "float32",
    "float16": "float16",
    "bfloat16": "bfloat16",
    "fp32": "float32",
    "bf16": "bfloat16",
}


class TransformersEngine(HFTokenizerEngine):
    """Continuous-batching generation on a Hugging Face causal LM.

    Args:
        model_path: local folder or hub id of the base model.
        max_model_len: context length; None means the model's ``max_position_embeddings``.
        max_batch_size: most sequences decoded together; more requests wait.
        device: "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:1", ...
        dtype: "auto" (float32 on CPU, the checkpoint's dtype on GPU) or a torch dtype name.
        enable_lora: serve LoRA adapters through PEFT.
    """

    name = "transformers"

    def __init__(
        self,
        model_path: str,
        *,
        max_model_len: int | None = None,
        max_batch_size: int = 16,
        device: str = "auto",
        dtype: str = "auto",
        enable_lora: bool = False,
    ) -> None:
        if max_batch_size < 1:
            raise InvalidRequestError("max_batch_size must be at least 1", param="max_batch_size")
        if dtype != "auto" and dtype not in _DTYPES:
            raise InvalidRequestError(
                f"unknown dtype {dtype!r}; use auto or one of {sorted(_DTYPES)}", param="dtype"
            )
        self.model_path = str(model_path)
        self._max_model_len_opt = max_model_len
        self._max_model_len = max_model_len or 0
        self.max_batch_size = max_batch_size
        self._device_opt = device
        self._dtype_opt = dtype
        self._enable_lora = enable_lora
        self._tokenizer: ChatTokenizer | None = None
        self._vocab_size: int | None = None
        self._eos: set[int] = set()
        self._batch: Any = None  # _tf_batch.BatchState, owned by the worker thread
        self._thread: threading.Thread | None = None
        self._cond = threading.Condition()
        self._waiting: collections.deque[Any] = collections.deque()  # Seq objects not yet admitted
        self._commands: collections.deque[Callable[[], None]] = collections.deque()
        self._stopping = False
        self._loras: dict[int, LoraSpec] = {}  # loaded in PEFT, keyed by lora_id
        self._grammars: Any = None  # _tf_grammar.Grammars, built on the first constrained request
        self._grammars_lock = threading.Lock()
        self.error: BaseException | None = None

    # -- life cycle -------------------------------------------------------------------------

    @property
    def max_batch_seen(self) -> int:
        """The most sequences one decode step has processed since start."""
        return self._batch.max_batch_seen if self._batch is not None else 0

    @property
    def steps(self) -> int:
        """Forward passes (prefill or decode) run since start."""
        return self._batch.steps if self._batch is not None else 0

    def settings(self) -> dict[str, Any]:
        """Engine, weights dtype (after start), eager (PyTorch without compilation), LoRA on or off."""
        out: dict[str, Any] = {"engine": self.name, "compiled": False, "lora": self._enable_lora}
        if self._batch is not None:
            out["dtype"] = str(next(self._batch.model.parameters()).dtype).removeprefix("torch.")
        return out

    async def start(self) -> None:
        """Load tokenizer and model off the event loop and start the worker thread.

        Raises:
            ModelError: the model or tokenizer cannot be loaded.
        """
        if self._thread is not None:
            return
        self._tokenizer = await asyncio.to_thread(ChatTokenizer.load, self.model_path)
        self._batch = await asyncio.to_thread(self._load)
        self._stopping = False
        self._thread = threading.Thread(
            target=self._run, name=f"forge-tf-engine-{self.model_path}", daemon=True
        )
        self._thread.start()
        log.info("engine_settings", **self.settings(), device=str(self._batch.device))
        # The constraint compiler's process imports xgrammar (and torch) once, a few seconds: start
        # it now, in the background, rather than on the first constrained request.
        threading.Thread(target=self._warm_grammars, name="forge-grammar-warm", daemon=True).start()

    def _warm_grammars(self) -> None:
        try:
            self._make_grammars().compiler.warm()
        except Exception as exc:  # the first constrained request tries again and reports it
            log.warning("grammar_compiler_warm_failed", error=str(exc) or type(exc).__name__)

    def _load(self) -> Any:
        import torch
        from transformers import AutoModelForCausalLM

        from forge_gateway.engines._tf_batch import BatchState

        device = self._device_opt
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dev = torch.device(device)
        if self._dtype_opt != "auto":
            dtype: Any = getattr(torch, _DTYPES[self._dtype_opt])
        else:
            # Half precision on CPU is slow and, for bf16, numerically far from other engines.
            dtype = torch.float32 if dev.type == "cpu" else "auto"
        try:
            model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=dtype).to(dev).eval()  # type: ignore[arg-type]
        except Exception as exc:  # transformers raises OSError, ValueError, ... for a bad model
            raise ModelError(f"cannot load model {self.model_path!r}: {exc}") from exc
        cfg = model.config.get_text_config()
        self._vocab_size = int(cfg.vocab_size)
        if not self._max_model_len_opt:
            self._max_model_len = int(getattr(cfg, "max_position_embeddings", 0) or 2048)
        assert self._tokenizer is not None
        self._eos = self._tokenizer.eos_ids(model.generation_config.eos_token_id)
        hf = self._tokenizer.hf
        pad = hf.pad_token_id if hf.pad_token_id is not None else (min(self._eos) if self._eos else 0)
        return BatchState(model, dev, int(pad))

    async def stop(self) -> None:
        """Abort every request and stop the worker thread."""
        thread = self._thread
        if thread is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        await asyncio.to_thread(thread.join)
        with self._grammars_lock:
            self._thread = None
            grammars, self._grammars = self._grammars, None
        if grammars is not None:
            grammars.compiler.close()
        self._batch = None
        self._loras.clear()

    async def health(self) -> dict[str, Any]:
        """``ok`` is False before start, after stop, or if the worker thread died."""
        stats = self.stats()
        ok = self._thread is not None and self._thread.is_alive()
        return {
            "ok": ok,
            "engine": self.name,
            "model": self.model_path,
            "running": stats.running,
            "waiting": stats.waiting,
            "max_batch_seen": self.max_batch_seen,
            "loras": sorted(spec.name for spec in self._loras.values()),
        }

    def stats(self) -> EngineStats:
        """Sequences in the running batch and requests waiting to join it."""
        running = len(self._batch.seqs) if self._batch is not None else 0
        return EngineStats(running=running, waiting=len(self._waiting))

    # -- text -------------------------------------------------------------------------------

    # -- talking to the worker --------------------------------------------------------------

    def _alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    async def _call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the worker thread at the next step boundary and await its result."""
        if not self._alive():
            raise EngineUnavailableError("the engine is not running")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()

        def settle(ok: bool, value: Any) -> None:
            if not fut.done():
                (fut.set_result if ok else fut.set_exception)(value)

        def command() -> None:
            try:
                result = fn()
            except BaseException as exc:
                loop.call_soon_threadsafe(settle, False, exc)
            else:
                loop.call_soon_threadsafe(settle, True, result)

        with self._cond:
            self._commands.append(command)
            self._cond.notify_all()
        return await fut

    def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        """Queue one request and stream its outputs; closing the iterator early aborts it.

        Raises:
            EngineUnavailableError: the engine is not running.
            ContextLengthExceededError: prompt plus ``max_tokens`` exceed ``max_model_len``.
            InvalidRequestError: bad prompt or sampling values, or LoRA without ``enable_lora``.
            InferenceError: the model failed while generating.
        """
        check_request(
            request, started=self._alive(), max_model_len=self._max_model_len, vocab_size=self._vocab_size
        )
        if request.lora is not None and not self._enable_lora:
            raise InvalidRequestError("this engine was started without LoRA support", param="model")
        return self._stream(request)

    async def _stream(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        from forge_gateway.engines._tf_batch import BASE_ADAPTER, Seq, make_generator

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[EngineOutput | BaseException] = asyncio.Queue()

        def post(item: EngineOutput | BaseException) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening any more
                loop.call_soon_threadsafe(queue.put_nowait, item)

        s = request.sampling
        matcher = None
        if s.constraint is not None:
            # Compiling a schema can take a while: within its budget, not on the event loop, not
            # on the worker (compile_budget).
            grammars = self._grammars or await asyncio.to_thread(self._make_grammars)
            matcher = await grammars.matcher(s.constraint)
        seq = Seq(
            request=request,
            post=post,
            stopper=StopChecker(
                self._require_tokenizer().hf,
                s.stop,
                skip_special_tokens=s.skip_special_tokens,
                include_stop=s.include_stop_str_in_output,
            ),
            adapter=BASE_ADAPTER if request.lora is None else _adapter_name(request.lora),
            generator=make_generator(s.seed) if s.temperature > 0 else None,
            matcher=matcher,
            eos=frozenset(() if s.ignore_eos else self._eos) | frozenset(s.stop_token_ids),
        )
        with self._cond:
            self._waiting.append(seq)
            self._cond.notify_all()
        finished = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finish_reason is not None
                yield item
                if finished:
                    return
        finally:
            if not finished and self._alive():
                # Client went away (aclose or cancellation): take the sequence out of the batch and
                # wait for the worker to confirm, so stats() is right as soon as we return.
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._call(lambda: self._remove(request.request_id, notify=False)))

    def _make_grammars(self) -> Any:
        from forge_gateway.engines._tf_grammar import Grammars

        with self._grammars_lock:  # two first constrained requests at once build one
            if self._thread is None:
                raise EngineUnavailableError("the engine is not running")
            if self._grammars is None:
                assert self._vocab_size is not None
                self._grammars = Grammars(self._require_tokenizer().hf, self._vocab_size, sorted(self._eos))
            return self._grammars

    async def abort(self, request_id: str) -> None:
        """Take a request out of the batch; its stream ends with ``finish_reason="abort"``."""
        if self._alive():
            await self._call(lambda: self._remove(request_id, notify=True))

    # -- adapters ---------------------------------------------------------------------------

    async def add_lora(self, lora: LoraSpec) -> None:
        """Load a PEFT adapter now (requests would otherwise load it on first use).

        Raises:
            InvalidRequestError: the engine was started without ``enable_lora``.
            ModelNotFoundError: the adapter folder does not exist.
            ModelError: PEFT could not load it.
        """
        if not self._enable_lora:
            raise InvalidRequestError("this engine was started without LoRA support", param="model")
        if not Path(lora.path).is_dir():
            raise ModelNotFoundError(f"LoRA adapter folder {lora.path!r} does not exist", param="model")
        await self._call(lambda: self._load_adapter(lora))

    async def remove_lora(self, lora: LoraSpec) -> None:
        """Unload an adapter; requests using it that are still running are aborted first."""
        if not self._enable_lora:
            raise InvalidRequestError("this engine was started without LoRA support", param="model")
        await self._call(lambda: self._unload_adapter(lora))

    # -- worker thread (everything below runs there) -----------------------------------------

    def _remove(self, request_id: str, *, notify: bool) -> None:
        batch = self._batch
        with self._cond:
            dropped = [seq for seq in self._waiting if seq.request.request_id == request_id]
            for seq in dropped:
                self._waiting.remove(seq)
        dropped += [s for s in batch.seqs if s.request.request_id == request_id and not s.finished]
        for seq in dropped:
            seq.finished = True
        batch.drop_finished()
        if notify:
            for seq in dropped:
                seq.post(self._final(seq, "", "abort"))

    def _final(
        self, seq: Any, text: str, reason: str | None, token_ids: list[int] | None = None
    ) -> EngineOutput:
        return EngineOutput(
            text=text,
            token_ids=token_ids or [],
            finish_reason=reason,  # type: ignore[arg-type]
            prompt_tokens=len(seq.request.prompt_token_ids),
            completion_tokens=len(seq.generated),
        )

    def _load_adapter(self, lora: LoraSpec) -> None:
        if lora.lora_id in self._loras:
            return
        from peft import PeftModel

        batch = self._batch
        name = _adapter_name(lora)
        try:
            if isinstance(batch.model, PeftModel):
                batch.model.load_adapter(lora.path, adapter_name=name)
            else:
                batch.model = PeftModel.from_pretrained(batch.model, lora.path, adapter_name=name)
            batch.model.eval()
        except Exception as exc:
            raise ModelError(f"cannot load LoRA adapter {lora.name!r} from {lora.path!r}: {exc}") from exc
        batch.use_adapters = True
        self._loras[lora.lora_id] = lora

    def _unload_adapter(self, lora: LoraSpec) -> None:
        if lora.lora_id not in self._loras:
            return
        name = _adapter_name(lora)
        batch = self._batch
        for seq in [*self._waiting, *batch.seqs]:
            if seq.adapter == name and not seq.finished:
                self._remove(seq.request.request_id, notify=True)
        del self._loras[lora.lora_id]
        if self._loras:
            batch.model.delete_adapter(name)
        else:
            # The last adapter: give the plain base model back rather than an adapter-less wrapper.
            batch.model = batch.model.unload()
            batch.use_adapters = False

    def _admit(self) -> list[Any]:
        new: list[Any] = []
        batch = self._batch
        while self._waiting and len(batch.seqs) + len(new) < self.max_batch_size:
            seq = self._waiting.popleft()
            lora = seq.request.lora
            if lora is not None and lora.lora_id not in self._loras:
                try:
                    self._load_adapter(lora)
                except Exception as exc:
                    seq.finished = True
                    seq.post(exc)
                    continue
            new.append(seq)
        return new

    def _run(self) -> None:
        import torch

        with torch.inference_mode():
            while True:
                with self._cond:
                    while not (self._stopping or self._commands or self._waiting or self._batch.seqs):
                        self._cond.wait()
                    if self._stopping:
                        break
                    commands = list(self._commands)
                    self._commands.clear()
                for command in commands:
                    command()
                with self._cond:
                    new = self._admit()
                try:
                    self._step(new)
                except Exception as exc:
                    self._fail_all(InferenceError(f"generation failed: {exc!r}"))
        self._fail_all(EngineUnavailableError("the engine stopped"))

    def _fail_all(self, exc: BaseException) -> None:
        with self._cond:
            seqs = [*self._waiting, *self._batch.seqs]
            self._waiting.clear()
        for seq in seqs:
            if not seq.finished:
                seq.finished = True
                seq.post(exc)
        self._batch.seqs, self._batch.cache, self._batch.mask = [], None, None

    def _step(self, new: list[Any]) -> None:
        """One prefill (of ``new``) or one decode step; a failure is its own sequence's alone.

        A request's sampling values, grammar or prompt may make its own row fail (an exception, or
        inf / NaN logits): that request gets the error, every other sequence of the batch carries on.
        Only a decode forward pass that fails as a whole fails the whole batch (``_run``).
        """
        batch = self._batch
        if new:
            try:
                logits = batch.prefill(new)
            except Exception as exc:  # the cache is untouched until the prefill succeeded
                if len(new) == 1:
                    self._fail(new[0], exc)
                    return
                for seq in new:  # which prompt broke it? each alone, so only that one fails
                    self._step([seq])
                return
            seqs = new
        elif batch.seqs:
            logits = batch.decode()
            seqs = batch.seqs
        else:
            return
        import torch

        # Log-probs report the model's own distribution: taken before any constraint or penalty.
        raw = {
            i: torch.log_softmax(logits[i].float(), dim=-1)
            for i, seq in enumerate(seqs)
            if seq.request.sampling.logprobs is not None
        }
        failed = self._mask(logits, seqs)
        outputs: list[EngineOutput | BaseException] = []
        for i, seq in enumerate(seqs):
            if i in failed:
                seq.finished = True
                outputs.append(_failure(failed[i]))
                continue
            try:
                outputs.append(self._sample(seq, logits[i], raw.get(i)))
            except Exception as exc:
                seq.finished = True
                outputs.append(_failure(exc))
        # Leave the batch before the final output is posted, so a caller that sees it also sees stats() drop.
        batch.drop_finished()
        for seq, output in zip(seqs, outputs, strict=True):
            seq.post(output)

    def _fail(self, seq: Any, exc: BaseException) -> None:
        seq.finished = True
        seq.post(_failure(exc))

    def _mask(self, logits: Any, seqs: list[Any]) -> dict[int, BaseException]:
        """Apply every constrained row's grammar; rows whose matcher fails are returned, not raised."""
        matchers = [seq.matcher for seq in seqs]
        if all(m is None for m in matchers):
            return {}
        try:
            self._grammars.mask(logits, matchers)
            return {}
        except Exception:  # find the row at fault: one at a time
            failed: dict[int, BaseException] = {}
            for i, m in enumerate(matchers):
                if m is not None:
                    try:
                        self._grammars.mask(logits[i : i + 1], [m])
                    except Exception as exc:
                        failed[i] = exc
            return failed

    def _sample(self, seq: Any, row: Any, raw: Any) -> EngineOutput:
        from forge_gateway.engines._tf_batch import position_logprobs, sample_next

        token = sample_next(row, seq)
        output = self._advance(seq, token)
        if raw is not None:
            output.logprobs = [position_logprobs(raw, token, seq.request.sampling.logprobs)]
        if seq.prompt_logprobs is not None:
            output.prompt_logprobs, seq.prompt_logprobs = seq.prompt_logprobs, None
        return output

    def _advance(self, seq: Any, token: int) -> EngineOutput:
        s = seq.request.sampling
        seq.generated.append(token)
        seq.pending = token
        reason = None
        refused = seq.matcher is not None and not seq.matcher.accept_token(token)
        if refused or token in seq.eos:
            # A refused token can only be the forced end above; the output so far is what the grammar allowed.
            text = seq.stopper.push([], final=True)
            reason = "stop"
        else:
            text = seq.stopper.push([token])
            if seq.stopper.stopped:
                reason = "stop"
            elif seq.matcher is not None and seq.matcher.is_terminated():
                text += seq.stopper.push([], final=True)
                reason = "stop"
            elif len(seq.generated) >= s.max_tokens:
                text += seq.stopper.push([], final=True)
                reason = "length"
        if reason is not None:
            seq.finished = True
        return self._final(seq, text, reason, [token])


def _failure(exc: BaseException) -> BaseException:
    """What one failed sequence's caller gets: request errors as they are, anything else as an InferenceError."""
    if isinstance(exc, LargeForgeAIError):
        return exc
    return InferenceError(f"generation failed: {exc!r}")


def _adapter_name(lora: LoraSpec) -> str:
    # PEFT adapter names become module attribute keys, so keep them free of dots and spaces.
    return f"lora_{lora.lora_id}"
