"""Trainer callbacks: stop cleanly on SIGINT/SIGTERM, and log metrics to ``metrics.jsonl``."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

__all__ = ["MetricsLogger", "StopOnSignal"]


class StopOnSignal(TrainerCallback):
    """Turn SIGINT/SIGTERM into "save a checkpoint at the end of this step, then stop".

    The handler only sets a flag, so the optimizer step in flight finishes and the checkpoint is
    consistent. A second signal restores the default handlers' behaviour and interrupts at once.
    """

    def __init__(self) -> None:
        self.received: str | None = None

    @contextlib.contextmanager
    def handling_signals(self) -> Iterator[None]:
        """Install the handlers for the duration of the block (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum: int, frame: Any) -> None:
            if self.received is not None:
                raise KeyboardInterrupt
            self.received = signal.Signals(signum).name

        for sig in previous:
            signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """Ask the trainer to checkpoint and stop once a signal has arrived."""
        if self.received is not None:
            control.should_save = True
            control.should_training_stop = True
        return control


class MetricsLogger(TrainerCallback):
    """Append one JSON line per logging step (``step``, ``epoch``, ``time`` and the logged values).

    On resume, lines past the checkpoint's step are dropped so the file matches the run.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Trim lines logged after the step training (re)starts from."""
        if not state.is_world_process_zero:
            return
        kept: list[str] = []
        if state.global_step > 0 and self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line).get("step", 0) <= state.global_step:
                        kept.append(line)
                except json.JSONDecodeError:
                    continue
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        """Write the logged values."""
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch, "time": round(time.time(), 3), **logs}
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, default=float) + "\n")
