"""The fine-tuned encoder of the router at run time: int8 ONNX MiniLM + classification head.

``forge-train router`` fine-tunes all-MiniLM-L6-v2 end to end with a linear head
(:mod:`forge_plugins.router.train.finetune`), exports it to ONNX and quantises its weights to int8. At
run time only ``onnxruntime``, ``tokenizers`` (the Rust tokenizer) and numpy are needed: no torch,
no transformers, no model hub. One session runs on one thread (the gateway runs classification in
a worker thread, and many requests in parallel should not fight over cores).

Long inputs keep a head and a tail window of tokens, because the question is usually at one end of
pasted context.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from forge_plugins.router.features import clip
from forge_sdk.errors import ModelError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["ENCODER_FILE", "TOKENIZER_FILE", "EncoderClassifier", "encoder_runtime_available", "token_window"]

ENCODER_FILE = "encoder.onnx"
"""File name of the quantised, fine-tuned encoder inside a router model folder."""
TOKENIZER_FILE = "tokenizer.json"
"""File name of the encoder's tokenizer inside a router model folder."""


def encoder_runtime_available() -> bool:
    """Whether ``onnxruntime`` and ``tokenizers`` are installed (extra ``embed``)."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "tokenizers"))


def token_window(ids: list[int], max_len: int) -> list[int]:
    """``ids`` (``[CLS] ... [SEP]``) cut to ``max_len``: three quarters head, one quarter tail."""
    if len(ids) <= max_len:
        return ids
    tail = max_len // 4
    return ids[: max_len - tail] + ids[len(ids) - tail :]


class EncoderClassifier:
    """Logits of the fine-tuned encoder for one text.

    Args:
        directory: model folder holding :data:`ENCODER_FILE` and :data:`TOKENIZER_FILE`.
        labels: class labels, in logit order.
        max_len: tokens read per text (the training length).

    Raises:
        ModelError: the files are missing or unreadable.
    """

    def __init__(self, directory: str | Path, labels: list[str], max_len: int) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        folder = Path(directory)
        try:
            self._tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self._session = ort.InferenceSession(
                str(folder / ENCODER_FILE), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime and tokenizers raise their own, undocumented types
            raise ModelError(f"router encoder in {folder} is missing or unreadable: {exc}") from exc
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self.labels = list(labels)
        self.max_len = max_len
        self._lock = threading.Lock()  # one session, one thread: calls queue instead of oversubscribing

    def logits(self, text: str) -> np.ndarray:
        """Raw (untempered) logits of ``text``, shape ``(n_labels,)``."""
        import numpy as np

        ids = token_window(self._tokenizer.encode(clip(text)).ids, self.max_len)
        feed = {
            "input_ids": np.asarray([ids], dtype=np.int64),
            "attention_mask": np.ones((1, len(ids)), dtype=np.int64),
        }
        with self._lock:
            (out,) = self._session.run(None, feed)
        return np.asarray(out[0], dtype=np.float64)
